"""The groups paramwise builds equal those of a plain reference: one loop over
``named_parameters()``, each rule's selector written as a Python predicate, the options cascaded
and multiplied, groups merged by equal options in order of first appearance. No paramwise code
runs in the reference, so a faster build (``benchmarks/bench_groups.py``) cannot drift from the
semantics unnoticed. Models: the benchmark's shape with its 20 rules, a tied language model (the
head is the embedding table), one with frozen parameters (left out, and kept with
``include_frozen=True``), and a Llama-shaped one under ``no_decay() + layer_decay()`` and
``hidden_matrices()``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import pathlib
import re

import pytest
import torch
from torch import nn

import paramwise
from paramwise import Rule

# ------------------------------------------------------------------------------ the reference


def _entries(model: nn.Module) -> list[dict]:
    """Every parameter name with what the reference knows of it (tied names share ``roles``)."""
    out, by_tensor = [], {}
    for name, p in model.named_parameters(remove_duplicate=False):
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        flags = set()
        if attr == "bias":
            flags.add("bias")
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
            flags.add("norm")
        if isinstance(mod, nn.Embedding):
            flags.add("embedding")
        if isinstance(mod, nn.Linear) and attr == "weight":
            flags.add("layer weight")
        shared = by_tensor.setdefault(id(p), set())
        shared |= flags  # roles belong to the tensor: the union over its names
        out.append({"name": name, "p": p, "mod": mod, "mod_name": mod_name, "attr": attr,
                    "flags": shared})
    for e in out:
        found = e["flags"] & {"bias", "norm", "embedding"}
        shape = e["p"].shape
        if not found:
            if sum(s > 1 for s in shape) <= 1 and not ("layer weight" in e["flags"]
                                                       and len(shape) >= 2):
                found = {"gain"}
            elif len(shape) >= 2:
                found = {"weight"}
        e["roles"] = found
    return out


def _frozen_key(opts: dict) -> tuple:
    return tuple(sorted((k, (type(v) is bool, v)) for k, v in opts.items()))


def reference(model: nn.Module, rules: list, defaults: dict, *,
              include_frozen: bool = False) -> list[dict]:
    """``rules``: (predicate(entry) -> bool, options) pairs, applied in order."""
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for e in _entries(model):
        p = e["p"]
        if id(p) in seen or not (include_frozen or p.requires_grad):
            continue  # a tied tensor once, under its first name
        seen.add(id(p))
        opts, mults = dict(defaults), {}
        for pred, options in rules:
            if not pred(e):
                continue
            for k, v in options.items():
                if k.endswith("_mult"):
                    mults[k] = mults.get(k, 1.0) * float(v)
                else:
                    opts[k] = v
        for k, m in mults.items():
            base = k[: -len("_mult")]
            opts[base] = float(opts[base]) * m
        g = groups.setdefault(_frozen_key(opts), {"params": [], "param_names": [], **opts})
        g["params"].append(p)
        g["param_names"].append(e["name"])
    return list(groups.values())


def same(built: list[dict], expected: list[dict], *, exact: bool = True) -> None:
    assert [g["param_names"] for g in built] == [g["param_names"] for g in expected]
    for b, x in zip(built, expected):
        assert [id(p) for p in b["params"]] == [id(p) for p in x["params"]]
        opts = {k: v for k, v in x.items() if k not in ("params", "param_names")}
        got = {k: v for k, v in b.items() if k not in ("params", "param_names")}
        if not exact:  # an optimizer fills in its own defaults
            got = {k: got[k] for k in opts}
        assert got == opts, b["param_names"][:3]
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in opts.items()}


def glob(pattern: str):
    return lambda e: fnmatch.fnmatchcase(e["name"], pattern)


def under(path: str):
    return lambda e: e["name"].startswith(path + ".")


def role(r: str):
    return lambda e: r in e["roles"]


# ------------------------------------------------------------------------------ the models


def _bench_groups():
    """benchmarks/bench_groups.py as a module (its Llama-shaped model is the one it times)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_groups.py"
    spec = importlib.util.spec_from_file_location("bench_groups", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench_groups()
Block, Llama = BENCH.Block, BENCH.Llama


def BenchModel(blocks: int = 100, d: int = 4) -> nn.Module:
    """benchmarks/bench_groups.py's model with ``blocks`` blocks (4 tensors each, + 3)."""
    return BENCH.Model(4 * blocks + 3, d)


# (paramwise rule, the same selector as a predicate); the benchmark's 20 rules.
BENCH_RULES = [
    (Rule("bias | norm | embedding", weight_decay=0.0),
     lambda e: bool(e["roles"] & {"bias", "norm", "embedding"})),
    (Rule("module:head", lr_mult=10.0), under("head")),
    (Rule("blocks.1*.fc.weight", momentum=0.8), glob("blocks.1*.fc.weight")),
    (Rule("type:Linear & weight", weight_decay=1e-4),
     lambda e: isinstance(e["mod"], nn.Linear) and "weight" in e["roles"]),
    (Rule("ndim<2 & !bias", lr_mult=0.5), lambda e: e["p"].dim() < 2 and "bias" not in e["roles"]),
    (Rule(r"re:blocks\.2\d*\.norm\..*", lr=0.02),
     lambda e: re.fullmatch(r"blocks\.2\d*\.norm\..*", e["name"]) is not None),
    (Rule("blocks.[0-4]*", dampening=0.1), glob("blocks.[0-4]*")),
    (Rule("type:LayerNorm", weight_decay_mult=0.0), lambda e: isinstance(e["mod"], nn.LayerNorm)),
    (Rule("embedding", lr_mult=0.1), role("embedding")),
    (Rule("*.fc.bias", weight_decay=0.0), glob("*.fc.bias")),
    (Rule("module:blocks.3", momentum=0.95), under("blocks.3")),
    (Rule("weight & !module:head", nesterov=False),
     lambda e: "weight" in e["roles"] and not e["name"].startswith("head.")),
    (Rule("head.*", dampening=0.0), glob("head.*")),
    (Rule("blocks.9*", lr_mult=0.9), glob("blocks.9*")),
    (Rule("ndim>=2", weight_decay_mult=1.0), lambda e: e["p"].dim() >= 2),
    (Rule("norm & bias", lr_mult=1.0), lambda e: {"norm", "bias"} <= e["roles"]),
    (Rule("type:torch.nn.Embedding", dampening=0.0), lambda e: isinstance(e["mod"], nn.Embedding)),
    (Rule("blocks.5*.norm.weight", momentum=0.85), glob("blocks.5*.norm.weight")),
    (Rule("!embedding", maximize=False), lambda e: "embedding" not in e["roles"]),
    (Rule("all", lr_mult=1.0), lambda e: True),
]
BENCH_DEFAULTS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


class TiedLM(nn.Module):
    """A language model whose head is its embedding table, with a layer scale (a gain)."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(3)])
        self.scale = nn.Parameter(torch.ones(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10, bias=False)
        self.head.weight = self.embed.weight


TIED_RULES = [
    (paramwise.no_decay(), lambda e: bool(e["roles"] & {"bias", "norm", "embedding", "gain"})),
    (Rule("module:blocks.1", lr_mult=0.5), under("blocks.1")),
    (Rule("ndim>=2", momentum=0.8), lambda e: e["p"].dim() >= 2),
    (Rule("embed.weight | head.weight", lr=0.3),
     lambda e: e["name"] in ("embed.weight", "head.weight")),
]


def llama_depth(e: dict, layers: int) -> int:
    """Depth by hand: the embedding 0, layer i at i + 1, the final norm and head at L + 1."""
    m = re.match(r"layers\.(\d+)\.", e["name"])
    if m:
        return int(m.group(1)) + 1
    return 0 if e["name"].startswith("embed_tokens.") else layers + 1


# ------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("blocks", [12, 60])
def test_bench_model_under_the_benchmarks_rules(blocks):
    model = BenchModel(blocks)
    built = paramwise.param_groups(model, [r for r, _ in BENCH_RULES], optimizer="sgd",
                                   **BENCH_DEFAULTS)
    expected = reference(model, [(pred, r.options) for r, pred in BENCH_RULES], BENCH_DEFAULTS)
    assert len(expected) > 5
    same(built, expected)
    opt = paramwise.optimizer(model, "sgd", [r for r, _ in BENCH_RULES], **BENCH_DEFAULTS)
    same(opt.param_groups, expected, exact=False)


def test_tied_model():
    model = TiedLM()
    assert model.head.weight is model.embed.weight
    built = paramwise.param_groups(model, [r for r, _ in TIED_RULES], lr=0.1, weight_decay=0.05)
    expected = reference(model, [(pred, r.options) for r, pred in TIED_RULES],
                         {"lr": 0.1, "weight_decay": 0.05})
    same(built, expected)
    names = [n for g in built for n in g["param_names"]]
    assert "embed.weight" in names and "head.weight" not in names  # one tensor, its first name
    by_name = {n: g for g in built for n in g["param_names"]}
    assert by_name["scale"]["weight_decay"] == 0.0  # a gain


@pytest.mark.parametrize("include_frozen", [False, True])
def test_frozen_parameters(include_frozen):
    model = BenchModel(12)
    for name, p in model.named_parameters():
        if name.startswith(("embed.", "blocks.0.", "blocks.7.fc.")):
            p.requires_grad_(False)
    rules = [r for r, _ in BENCH_RULES if r.label not in ("embedding", "type:torch.nn.Embedding")]
    preds = [(pred, r.options) for r, pred in BENCH_RULES if r in rules]
    built = paramwise.param_groups(model, rules, optimizer="sgd", include_frozen=include_frozen,
                                   **BENCH_DEFAULTS)
    expected = reference(model, preds, BENCH_DEFAULTS, include_frozen=include_frozen)
    same(built, expected)
    names = {n for g in built for n in g["param_names"]}
    assert ("blocks.0.fc.weight" in names) == include_frozen


def test_no_decay_and_layer_decay():
    layers = 5
    model = Llama(layers)
    rules = [paramwise.no_decay(), paramwise.layer_decay(0.8), Rule("lm_head.weight", lr_mult=2.0)]
    built = paramwise.param_groups(model, rules, lr=1.0, weight_decay=0.1)
    no_decay = (lambda e: bool(e["roles"] & {"bias", "norm", "embedding", "gain"}),
                {"weight_decay": 0.0})
    # Layer decay's lr_mult depends on the entry: one reference rule per depth.
    per_depth = [(lambda e, d=d: llama_depth(e, layers) == d, {"lr_mult": 0.8 ** (layers + 1 - d)})
                 for d in range(layers + 2)]
    head = (lambda e: e["name"] == "lm_head.weight", {"lr_mult": 2.0})
    expected = reference(model, [no_decay, *per_depth, head], {"lr": 1.0, "weight_decay": 0.1})
    assert len(expected) == 2 * layers + 3  # the embedding alone at depth 0
    same(built, expected)


def test_hidden_matrices_with_no_decay():
    model = Llama(3)
    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay(), paramwise.hidden_matrices()],
                              lr=0.01, weight_decay=0.1)
    adamw, muon = opt.optimizers
    assert (type(adamw), type(muon)) == (torch.optim.AdamW, torch.optim.Muon)
    hidden = lambda e: e["name"].startswith("layers.") and e["p"].dim() == 2  # noqa: E731
    no_decay = (lambda e: bool(e["roles"] & {"bias", "norm", "embedding", "gain"}),
                {"weight_decay": 0.0})
    everything = reference(model, [no_decay], {"lr": 0.01, "weight_decay": 0.1})
    rest = [{**g, "params": [p for p, n in zip(g["params"], g["param_names"])
                             if not hidden(_by_name(model, n))],
             "param_names": [n for n in g["param_names"] if not hidden(_by_name(model, n))]}
            for g in everything]
    same(adamw.param_groups, [g for g in rest if g["params"]], exact=False)
    expected_muon = reference(
        model, [(lambda e: True, {"adjust_lr_fn": "match_rms_adamw"})],
        {"lr": 0.01, "weight_decay": 0.1})
    expected_muon[0]["params"] = [p for p, n in zip(expected_muon[0]["params"],
                                                    expected_muon[0]["param_names"])
                                  if hidden(_by_name(model, n))]
    expected_muon[0]["param_names"] = [n for n in expected_muon[0]["param_names"]
                                       if hidden(_by_name(model, n))]
    same(muon.param_groups, expected_muon, exact=False)


def _by_name(model: nn.Module, name: str) -> dict:
    return next(e for e in _entries(model) if e["name"] == name)


def test_glob_masks_answer_as_fnmatch_does():
    """The prefix shortcut (``head.*``) and the regex path agree with fnmatch on edge names."""
    from paramwise.grouping._selterms import glob_mask

    names = ["head", "head.", "head.weight", "Head.weight", "heads.weight", "blocks.1.fc.weight",
             "blocks.10.fc.weight", "blocks.1", "a[b", "a[bc", "x\ny", "x*y", "", "h\u00e9ad.w"]
    for pattern in ["head.*", "head*", "*", "blocks.1*", "blocks.1.*", "a[b*", "x*", "x\ny*",
                    "blocks.*.fc.weight", "*.weight", "h\u00e9ad.*", "?ead.*", "[hH]ead.*"]:
        mask = glob_mask(pattern, names)
        got = [n for i, n in enumerate(names) if mask >> i & 1]
        assert got == [n for n in names if fnmatch.fnmatchcase(n, pattern)], pattern
