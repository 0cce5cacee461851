"""Property tests over random module trees and rule lists, against a naive per-parameter loop.

The reference evaluates each selector with a plain Python predicate on (name, param, owner)
and applies matching rules one by one; paramwise's bitmask/merge machinery must agree with it.
"""

import fnmatch
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import paramwise

LEAVES = {
    "linear": lambda: nn.Linear(3, 3),
    "linear_nobias": lambda: nn.Linear(3, 3, bias=False),
    "ln": lambda: nn.LayerNorm(3),
    "conv": lambda: nn.Conv1d(3, 3, 1),
    "emb": lambda: nn.Embedding(4, 3),
    "act": lambda: nn.ReLU(),
}


def build(spec):
    if isinstance(spec, str):
        return LEAVES[spec]()
    kind, kids = spec
    mods = [build(k) for k in kids]
    return nn.Sequential(*mods) if kind == "seq" else nn.ModuleList(mods)


trees = st.recursive(
    st.sampled_from(sorted(LEAVES)),
    lambda inner: st.tuples(st.sampled_from(["seq", "list"]), st.lists(inner, min_size=1, max_size=4)),
    max_leaves=12,
)

# (selector text, reference predicate on (name, param, owner))
SELECTORS = [
    ("bias", lambda n, p, m: n.rsplit(".", 1)[-1] == "bias"),
    ("norm", lambda n, p, m: isinstance(m, nn.LayerNorm)),
    ("embedding", lambda n, p, m: isinstance(m, nn.Embedding)),
    ("weight", lambda n, p, m: p.dim() >= 2 and not isinstance(m, nn.Embedding)),
    ("ndim<2", lambda n, p, m: p.dim() < 2),
    ("type:Linear", lambda n, p, m: isinstance(m, nn.Linear)),
    ("*.0.*", lambda n, p, m: fnmatch.fnmatchcase(n, "*.0.*")),
    ("0.*", lambda n, p, m: n.startswith("0.")),
    ("module:1", lambda n, p, m: n.startswith("1.")),
    ("bias | norm", lambda n, p, m: n.endswith("bias") or isinstance(m, nn.LayerNorm)),
    ("weight & !type:Conv1d", lambda n, p, m: p.dim() >= 2 and isinstance(m, (nn.Linear,))),
    ("all", lambda n, p, m: True),
]

OPTIONS = st.dictionaries(
    st.sampled_from(["lr", "weight_decay", "momentum", "lr_mult"]),
    st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    min_size=1, max_size=3,
)
rules_st = st.lists(st.tuples(st.integers(0, len(SELECTORS) - 1), OPTIONS), max_size=6)


def reference(model, rules, defaults):
    owners = {}
    for mname, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), (f"{mname}.{attr}" if mname else attr, mod))
    out = {}
    for name, p in model.named_parameters():
        _, mod = owners[id(p)]
        opts, mult = dict(defaults), 1.0
        for si, o in rules:
            if SELECTORS[si][1](name, p, mod):
                for k, v in o.items():
                    if k == "lr_mult":
                        mult *= v
                    else:
                        opts[k] = v
        opts["lr"] = opts["lr"] * mult
        out[name] = opts
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, rules=rules_st)
def test_groups_match_a_naive_per_parameter_loop(tree, rules):
    torch.manual_seed(0)
    model = nn.Sequential(build(tree), nn.Linear(3, 3))  # always something to train
    defaults = {"lr": 0.01}
    rule_objs = [paramwise.Rule(SELECTORS[si][0], **o) for si, o in rules]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = paramwise.param_groups(model, rule_objs, optimizer="sgd", strict=False, **defaults)
        again = paramwise.param_groups(model, rule_objs, optimizer="sgd", strict=False, **defaults)

    # exactly once: every parameter in one group, none twice
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(ids) == len(set(ids))
    # deterministic
    assert [g["param_names"] for g in groups] == [g["param_names"] for g in again]
    # cascade order: options equal the naive loop's
    want = reference(model, rules, defaults)
    got = {n: {k: v for k, v in g.items() if k not in ("params", "param_names")}
           for g in groups for n in g["param_names"]}
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].keys() == want[n].keys(), n
        for k in want[n]:
            assert abs(got[n][k] - want[n][k]) <= 1e-12 * max(1.0, abs(want[n][k])), (n, k)
    # fewest groups: no two groups share the same options
    keys = [tuple(sorted((k, v) for k, v in g.items() if k not in ("params", "param_names")))
            for g in groups]
    assert len(keys) == len(set(keys))
    # ordered by first appearance in named_parameters()
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    firsts = [order[g["param_names"][0]] for g in groups]
    assert firsts == sorted(firsts)
    for g in groups:
        assert [order[n] for n in g["param_names"]] == sorted(order[n] for n in g["param_names"])
