"""Checkpoints are validated whole before anything is loaded (paramwise.state.saved).

Every malformed case starts from a real state dict (torch's own optimizers, built, stepped,
saved) mutated by hand; each must raise a ParamwiseError naming the key path, the parameter and
a fix, and leave the optimizer exactly as a deep copy taken before the call. Where a check
claims torch would fail, torch's own load-and-step is run on the same state as the reference.
"""

from __future__ import annotations

import copy
import io
import re
import warnings

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, load_state_dict, state_dict
from paramwise.state.checkpoint import LoadReport


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def batches(n: int, seed: int = 1, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, d, generator=g), torch.randn(4, 3, generator=g)) for _ in range(n)]


def train(model, opt, data) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def adamw(model, rules=None, **kw):
    rules = [paramwise.no_decay()] if rules is None else rules
    return paramwise.optimizer(model, "adamw", rules, lr=1e-2, weight_decay=0.1, **kw)


@pytest.fixture(scope="module")
def saved():
    """(name-keyed, native) state dicts of an AdamW trained 2 steps."""
    model = net()
    opt = adamw(model)
    train(model, opt, batches(2))
    return roundtrip(state_dict(opt)), roundtrip(opt.state_dict())


def target():
    """An optimizer with state of its own (other data), to load into."""
    model = net(seed=5)
    opt = adamw(model)
    train(model, opt, batches(1, seed=9))
    return model, opt


def snapshot(opt):
    return ([id(g) for g in opt.param_groups],
            [{k: list(v) if k == "params" else copy.deepcopy(v) for k, v in g.items()}
             for g in opt.param_groups],
            {p: copy.deepcopy(dict(s)) for p, s in opt.state.items()})


def assert_unchanged(opt, snap) -> None:
    ids, groups, state = snap
    assert [id(g) for g in opt.param_groups] == ids
    for g, want in zip(opt.param_groups, groups):
        assert g.keys() == want.keys()
        for k, v in want.items():
            assert all(a is b for a, b in zip(g[k], v)) if k == "params" else g[k] == v, k
    assert set(opt.state) == set(state)
    for p, s in state.items():
        assert opt.state[p].keys() == s.keys()
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(opt.state[p][k]), torch.as_tensor(v)), k


def refused(opt, ckpt, pattern: str, **kw) -> None:
    snap = snapshot(opt)
    with pytest.raises(ParamwiseError, match=pattern):
        load_state_dict(opt, ckpt, **kw)
    assert_unchanged(opt, snap)


# ------------------------------------------------------------------------------ structure
def _set(path, value):
    def mutate(sd):
        d = sd
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        return sd
    return mutate


def _del(path):
    def mutate(sd):
        d = sd
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
        return sd
    return mutate


def _append_to_group(gi, name):
    def mutate(sd):
        sd["param_groups"][gi]["params"].append(name)
        return sd
    return mutate


FIX = r"; pass paramwise\.state_dict\(opt\) or optimizer\.state_dict\(\) as saved"
NAMED = [  # (id, mutation of the name-keyed dict, message)
    ("state-int", _set(["state"], 5),
     r"checkpoint\['state'\] is an int \(5\), expected a mapping \{parameter name: " + ".*" + FIX),
    ("groups-int", _set(["param_groups"], 5),
     r"checkpoint\['param_groups'\] is an int \(5\), expected a list of group dicts" + FIX),
    ("group-int", _set(["param_groups"], [5]),
     r"checkpoint\['param_groups'\]\[0\] is an int \(5\), expected a dict with 'params'" + ".*" + FIX),
    ("param-state-int", _set(["state", "0.weight"], 5),
     r"checkpoint\['state'\]\['0\.weight'\] \(parameter '0\.weight'\) is an int \(5\), expected "
     r"a dict \{state key: value\}.*" + FIX),
    ("param-state-key", _set(["state", "0.weight", 3], torch.zeros(1)),
     r"checkpoint\['state'\]\['0\.weight'\] \(parameter '0\.weight'\) has the key 3; state keys "
     r"are strings" + ".*" + FIX),
    ("no-params", _del(["param_groups", 1, "params"]),
     r"checkpoint\['param_groups'\]\[1\] has no 'params' \(keys: .*every saved group lists"),
    ("params-str", _set(["param_groups", 0, "params"], "0.weight"),
     r"checkpoint\['param_groups'\]\[0\]\['params'\] is a str \('0\.weight'\), expected a list"),
    ("params-float", _set(["param_groups", 0, "params", 1], 1.5),
     r"\['params'\] holds a float \(1\.5\) at position 1; 'params' lists either parameter names"),
    ("option-key", _set(["param_groups", 0, 7], 1),
     r"checkpoint\['param_groups'\]\[0\] has the option key 7; option names are strings"),
    ("state-key-float", _set(["state", 2.5], {}),
     r"checkpoint\['state'\]\[2\.5\]: the key 2\.5 is neither a name nor an id; state is keyed"),
    ("anchors-int", _set(["paramwise_anchors"], 5),
     r"checkpoint\['paramwise_anchors'\] is an int \(5\), expected a mapping .*anchors"),
    ("anchor-float", _set(["paramwise_anchors"], {"0.weight": 0.5}),
     r"checkpoint\['paramwise_anchors'\]\['0\.weight'\] \(the l2_to_init anchor of '0\.weight'\) "
     r"is a float \(0\.5\), expected a tensor"),
    ("two-groups", _append_to_group(1, "0.weight"),
     r"parameter '0\.weight' is listed in saved param groups 0 and 1; a parameter belongs to one "
     r"group; this checkpoint was edited or merged by hand: remove the parameter"),
    ("twice-in-group", _append_to_group(0, "0.weight"),
     r"parameter '0\.weight' is listed twice in saved param group 0"),
    ("top-level", lambda sd: [sd], r"expected an optimizer state dict with 'state' and "
     r"'param_groups', got list; pass paramwise\.state_dict\(opt\)"),
]


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in NAMED], ids=[c[0] for c in NAMED])
def test_malformed_name_keyed_checkpoints_are_refused_before_loading(saved, mutate, pattern):
    _, opt = target()
    refused(opt, mutate(copy.deepcopy(saved[0])), pattern)


def _mixed(sd):
    sd["param_groups"][0]["params"][0] = "0.weight"
    return sd


def _renamed_id(sd):  # id 0 named twice, differently
    sd["param_groups"][1]["params"].append(0)
    sd["param_groups"][1]["param_names"].append("other")
    return sd


def _id_and_name(sd):  # the same parameter's state under its id and its name
    sd["state"]["0.weight"] = sd["state"][0]
    return sd


NATIVE = [  # torch's own format (integer ids + param_names)
    ("mixed", _mixed, r"\['params'\] mixes names and integer ids"),
    ("names-short", lambda sd: _set(["param_groups", 0, "param_names"],
                                    sd["param_groups"][0]["param_names"][:-1])(sd),
     r"checkpoint\['param_groups'\]\[0\]\['param_names'\] is a list .*expected \d+ names, one "
     r"per entry of 'params'; save with paramwise\.state_dict"),
    ("names-int", _set(["param_groups", 0, "param_names", 0], 3),
     r"\['param_names'\] holds an int \(3\); names are strings"),
    ("no-names", _del(["param_groups", 0, "param_names"]),
     r"group 0 lists parameters by position without 'param_names'.*optimizer\.load_state_dict"),
    ("unknown-id", _set(["state", 99], {}),
     r"checkpoint\['state'\]\[99\]: the key 99 is an id that no saved param group lists"),
    ("id-renamed", _renamed_id,
     r"parameter id 0 is named '0\.weight' in one saved group and 'other' in group 1; ids are "
     r"unique"),
    ("id-and-name", _id_and_name,
     r"checkpoint\['state'\]\['0\.weight'\] and checkpoint\['state'\]\[0\] are both the state "
     r"of parameter '0\.weight'; keep one of the two entries"),
]


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in NATIVE], ids=[c[0] for c in NATIVE])
def test_malformed_native_checkpoints_are_refused_before_loading(saved, mutate, pattern):
    _, opt = target()
    refused(opt, mutate(copy.deepcopy(saved[1])), pattern)


def test_bad_arguments(saved):
    model, opt = target()
    sd = copy.deepcopy(saved[0])
    refused(opt, sd, r"keep_saved_options=5 is not True, False or option names; pass True "
            r"\(all saved options\)", keep_saved_options=5)
    refused(opt, sd, r"keep_saved_options=\[1\]", keep_saved_options=[1])
    refused(opt, sd, r"keep_saved_options names 'lrr', which no saved param group has \(did "
            r"you mean 'lr'\?\); pass option names as the checkpoint has them",
            keep_saved_options=("lrr",))
    refused(opt, sd, r"strict must be True or False, not 5 \(int\); pass strict=True", strict=5)
    refused(opt, sd, r"model= expects the nn\.Module .* got an int \(5\)", model=5)
    with pytest.raises(ParamwiseError, match=r"expected a torch\.optim\.Optimizer, got an int "
                       r"\(5\); pass the optimizer first"):
        load_state_dict(5, sd)
    with pytest.raises(ParamwiseError, match=r"expected a torch\.optim\.Optimizer, got a dict"):
        state_dict(sd)
    # A key no saved group has and that is no typo (no LR scheduler ran): a warning, then loads.
    with pytest.warns(UserWarning, match=r"no saved param group has 'initial_lr'; it keeps the "
                      r"current rules' value"):
        report = load_state_dict(opt, sd, keep_saved_options=("lr", "initial_lr"))
    assert report.exact


def test_duplicate_names_in_the_optimizer_name_both_groups():
    model, opt = target()
    opt.param_groups[1]["param_names"][0] = opt.param_groups[0]["param_names"][0]
    with pytest.raises(ParamwiseError, match=r"the name '0\.weight' appears twice in the "
                       r"optimizer's param_names \(param groups 0 and 1\); every parameter"):
        state_dict(opt)


# ------------------------------------------------------------ state against the parameters
def transplant_and_step(model, opt, named_state: dict) -> None:
    """The reference: put the state in by hand, as torch would hold it, and take a step."""
    params = dict(model.named_parameters())
    for n, st in named_state.items():
        opt.state[params[n]] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                for k, v in st.items()}
    train(model, opt, batches(1, seed=3))


def test_a_wrong_exp_avg_sq_shape_is_refused_where_torch_would_fail_mid_step(saved):
    sd = copy.deepcopy(saved[0])
    sd["state"]["2.weight"]["exp_avg_sq"] = sd["state"]["2.weight"]["exp_avg_sq"][:, :5]
    model, ref = target()
    with pytest.raises(RuntimeError):                          # torch: fails inside the step
        transplant_and_step(model, ref, sd["state"])
    _, opt = target()
    refused(opt, sd, r"checkpoint\['state'\]\['2\.weight'\]\['exp_avg_sq'\] has shape \(3, 5\), "
            r"but AdamW keeps 'exp_avg_sq' in shape \(3, 8\) for parameter '2\.weight', shape "
            r"\(3, 8\) \(the saved 'exp_avg' has the parameter's shape\); the next step would "
            r"fail inside torch; the checkpoint is corrupt or was edited: re-save it .*"
            r"del ckpt\['state'\]\['2\.weight'\]")


def test_inconsistent_state_is_refused_not_taken_for_a_resized_layer(saved):
    sd = copy.deepcopy(saved[0])
    sd["state"]["0.weight"]["exp_avg"] = torch.zeros(3, 3)
    sd["state"]["0.weight"]["exp_avg_sq"] = torch.zeros(5)
    _, opt = target()
    refused(opt, sd, r"\['exp_avg'\] has shape \(3, 3\), but AdamW keeps 'exp_avg' in shape "
            r"\(8, 6\) .*\('exp_avg' has shape \(3, 3\) and 'exp_avg_sq' has shape \(5,\)\)")


def test_scalars_and_tensor_types(saved):
    _, opt = target()
    sd = copy.deepcopy(saved[0])
    sd["state"]["1.bias"]["step"] = torch.zeros(3)
    refused(opt, sd, r"checkpoint\['state'\]\['1\.bias'\]\['step'\] \(parameter '1\.bias', shape "
            r"\(8,\)\) is a tensor of shape \(3,\), expected a number or a one-element tensor "
            r"\(AdamW keeps 'step' as a scalar\)")
    sd = copy.deepcopy(saved[0])
    sd["state"]["1.bias"]["exp_avg"] = 0.5
    refused(opt, sd, r"\['1\.bias'\]\['exp_avg'\] \(parameter '1\.bias', shape \(8,\)\) is a "
            r"float \(0\.5\), expected a tensor of shape \(8,\)")
    sd = copy.deepcopy(saved[0])
    sd["state"]["1.bias"]["step"] = 2                     # a number, as torch < 1.12 saved it
    load_state_dict(opt, sd)
    assert opt.state[opt.param_groups[1]["params"][0]]["step"].item() == 2.0


def test_amsgrad_switched_on_needs_its_buffer(saved):
    model, ref = net(seed=5), None
    ref = adamw(model, amsgrad=True)
    with pytest.raises(KeyError, match="max_exp_avg_sq"):      # torch: KeyError in the step
        transplant_and_step(model, ref, copy.deepcopy(saved[0])["state"])
    opt = adamw(net(seed=5), amsgrad=True)
    refused(opt, copy.deepcopy(saved[0]),
            r"checkpoint\['state'\]\['0\.weight'\] \(parameter '0\.weight', shape \(8, 6\)\) has no "
            r"'max_exp_avg_sq', which AdamW's next step reads \(amsgrad=True in its group\), so it "
            r"would fail inside torch; the checkpoint was saved with amsgrad off: load with "
            r"keep_saved_options=\('amsgrad',\)")
    load_state_dict(opt, copy.deepcopy(saved[0]), keep_saved_options=("amsgrad",))
    assert [g["amsgrad"] for g in opt.param_groups] == [False, False]


def test_resized_layer_starts_fresh_also_under_adafactor():
    """Factored state (row_var (R,1), col_var (1,C)) of a layer with more rows: the column
    factor still fits, the state is a resized layer's, not corrupt."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3))
    opt = torch.optim.Adafactor(model.named_parameters(), lr=1e-2)
    train(model, opt, batches(1))
    sd = roundtrip(state_dict(opt))
    model2 = nn.Sequential(nn.Linear(6, 9), nn.Linear(9, 3))
    opt2 = torch.optim.Adafactor(model2.named_parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match=r"3 parameters changed shape .*0\.weight, 0\.bias, "
                      r"1\.weight"):
        report = load_state_dict(opt2, sd)
    assert report.reshaped == ["0.weight", "0.bias", "1.weight"] and report.loaded == ["1.bias"]
    assert model2[0].weight not in opt2.state and model2[1].bias in opt2.state


def test_anchors_against_the_parameters():
    model = net()
    opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("weight & type:Linear",
                                                            l2_to_init=0.5)], lr=0.1, momentum=0.9)
    train(model, opt, batches(1))
    sd = roundtrip(state_dict(opt))
    sd["paramwise_anchors"]["0.weight"] = torch.zeros(3, 3)
    opt2 = paramwise.optimizer(net(seed=3), "sgd", [paramwise.Rule("weight & type:Linear",
                                                                   l2_to_init=0.5)], lr=0.1,
                               momentum=0.9)
    refused(opt2, sd, r"checkpoint\['paramwise_anchors'\]: the l2_to_init anchor of '0\.weight' "
            r"has shape \(3, 3\), but the parameter and its saved state have shape \(8, 6\)")
    del sd["state"]["0.weight"]                  # no state: the anchor alone says "resized"
    with pytest.warns(UserWarning, match=r"1 parameters changed shape .*: 0\.weight"):
        report = load_state_dict(opt2, sd)
    assert report.reshaped == ["0.weight"]


# ----------------------------------------------- every torch optimizer, against torch itself
def _model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "SparseAdam":
        return nn.Embedding(10, 3, sparse=True)
    bias = name != "Muon"                                        # Muon takes 2-D only
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.Linear(8, 3, bias=bias))


OPTIMIZERS = {
    "SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2), "Adamax": dict(lr=1e-2), "NAdam": dict(lr=1e-2),
    "RAdam": dict(lr=1e-2), "RMSprop": dict(lr=1e-2, momentum=0.9, centered=True),
    "Adagrad": dict(lr=1e-2), "Adadelta": dict(lr=1.0), "ASGD": dict(lr=1e-2),
    "Rprop": dict(lr=1e-2), "Adafactor": dict(lr=1e-2), "Muon": dict(lr=1e-2),
    "SparseAdam": dict(lr=1e-2), "LBFGS": dict(lr=0.5, max_iter=2),
}


def build(name: str, seed: int = 0):
    model = _model(name, seed)
    return model, getattr(torch.optim, name)(model.named_parameters(), **OPTIMIZERS[name])


def run(name: str, model, opt, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if name == "SparseAdam":
            idx = torch.randint(0, 10, (5,), generator=g)
            x, y = idx, torch.randn(5, 3, generator=g)
        else:
            x, y = torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_valid_roundtrip_resumes_bit_identically(name):
    model, opt = build(name)
    run(name, model, opt, 2, seed=1)
    saved_model, saved_opt = roundtrip(model.state_dict()), roundtrip(state_dict(opt))
    run(name, model, opt, 2, seed=2)                                # uninterrupted
    model2, opt2 = build(name, seed=7)
    model2.load_state_dict(saved_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = load_state_dict(opt2, saved_opt)
    assert report.exact and report.loaded
    run(name, model2, opt2, 2, seed=2)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), n


def _torch_fails(name: str, state: dict) -> bool:
    """Does torch's own optimizer, given this state by hand, fail to load or to step?"""
    model, opt = build(name, seed=0)
    params = dict(model.named_parameters())
    try:
        opt.load_state_dict({"state": {i: state[n] for i, n in enumerate(params) if n in state},
                             "param_groups": [{**opt.state_dict()["param_groups"][0]}]})
        run(name, model, opt, 1, seed=4)
    except (RuntimeError, KeyError, IndexError, TypeError, AttributeError, AssertionError):
        return True
    return False


KNOWN = [n for n in OPTIMIZERS if n != "LBFGS"]           # LBFGS: flat history, not per parameter


@pytest.mark.parametrize("name", KNOWN)
def test_every_param_shaped_buffer_is_checked(name):
    """For each buffer of the parameter's shape in torch's *real* state, one row fewer: refused
    when another buffer still has the parameter's shape; a single buffer cannot tell a
    corrupt state from a resized layer, so the parameter starts fresh (warned, reported)."""
    model, opt = build(name)
    run(name, model, opt, 2, seed=1)
    params = dict(model.named_parameters())
    sd = roundtrip(state_dict(opt))
    cases = 0
    for n, st in sd["state"].items():
        shaped = [k for k, v in st.items()
                  if isinstance(v, torch.Tensor) and v.dim() and v.shape == params[n].shape]
        for k in shaped:
            bad = copy.deepcopy(sd)
            bad["state"][n][k] = st[k][:-1]
            assert _torch_fails(name, bad["state"]), (n, k)          # the reference
            model2, opt2 = build(name, seed=3)
            if len(shaped) > 1:
                refused(opt2, bad, rf"\['{re.escape(n)}'\]\['{k}'\] has shape .* but {name} "
                        rf"keeps '{k}' in shape {re.escape(str(tuple(params[n].shape)))} for "
                        rf"parameter '{re.escape(n)}'")
            else:
                with pytest.warns(UserWarning, match=rf"changed shape since the checkpoint.*{n}"):
                    report = load_state_dict(opt2, bad)
                assert report.reshaped == [n]
                assert dict(model2.named_parameters())[n] not in opt2.state
            cases += 1
    assert cases


@pytest.mark.parametrize("name", KNOWN)
def test_missing_state_keys_are_refused_exactly_when_torch_fails(name):
    model, opt = build(name)
    run(name, model, opt, 2, seed=1)
    sd = roundtrip(state_dict(opt))
    for n, st in sd["state"].items():
        for k in st:
            bad = copy.deepcopy(sd)
            del bad["state"][n][k]
            model2, opt2 = build(name, seed=3)
            snap = snapshot(opt2)
            try:
                load_state_dict(opt2, bad)
            except ParamwiseError as e:
                assert re.search(rf"\['{re.escape(n)}'\] .* has no '{k}', which {name}'s next "
                                 "step reads", str(e)), str(e)
                assert _torch_fails(name, bad["state"]), (n, k, "refused, torch runs")
                assert_unchanged(opt2, snap)
            else:
                assert not _torch_fails(name, bad["state"]), (n, k, "loaded, torch fails")
                run(name, model2, opt2, 1, seed=4)


def test_hybrid_parts_are_checked_by_their_own_layout():
    hybrid = pytest.importorskip("paramwise.hybrid")
    torch.manual_seed(0)

    def make(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3))
        named = list(model.named_parameters())
        parts = [torch.optim.AdamW([(n, p) for n, p in named if p.dim() == 1], lr=1e-2),
                 torch.optim.Muon([(n, p) for n, p in named if p.dim() == 2], lr=1e-2)]
        return model, hybrid.Hybrid(parts)

    model, opt = make(0)
    train(model, opt, batches(2))
    sd = roundtrip(state_dict(opt))
    bad = copy.deepcopy(sd)
    bad["state"]["0.bias"]["exp_avg_sq"] = torch.zeros(3)
    _, opt2 = make(1)
    refused(opt2, bad, r"\['0\.bias'\]\['exp_avg_sq'\] has shape \(3,\), but AdamW keeps")
    bad = copy.deepcopy(sd)
    del bad["state"]["0.bias"]["step"]
    refused(opt2, bad, r"has no 'step', which AdamW's next step reads")
    saved_model = roundtrip(model.state_dict())
    train(model, opt, batches(2, seed=5))
    model3, opt3 = make(2)
    model3.load_state_dict(saved_model)
    assert load_state_dict(opt3, sd).exact
    train(model3, opt3, batches(2, seed=5))
    for (n, p), q in zip(model.named_parameters(), model3.parameters()):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------------- renames, the report
class Holder(nn.Module):
    """A user model whose submodule is called ``module`` (not a DDP wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = net()

    def forward(self, x):
        return self.module(x)


def test_a_renamed_parameter_warns_and_shows_in_the_report():
    holder = Holder()
    opt = adamw(holder)
    train(holder, opt, batches(1))
    sd = roundtrip(state_dict(opt))
    assert "module.0.weight" in sd["state"]                    # a canonical name, kept
    opt2 = adamw(net(seed=2))
    with pytest.warns(UserWarning, match=r"6 saved names load under another name \(wrapper "
                      r"segments dropped; see report\.renamed\): module\.0\.weight -> 0\.weight"):
        report = load_state_dict(opt2, sd)
    assert report.renamed["module.2.bias"] == "2.bias"
    assert re.search(r"6 renamed \(wrapper segments dropped\): module\.0\.weight -> 0\.weight, "
                     r".*\(\+2\)", str(report)), str(report)
    bad = copy.deepcopy(sd)
    bad["state"]["_orig_mod.0.weight"] = bad["state"]["module.0.weight"]
    bad["param_groups"][0]["params"].append("_orig_mod.0.weight")
    refused(adamw(net(seed=2)), bad, r"the saved names 'module\.0\.weight' and "
            r"'_orig_mod\.0\.weight' both load as parameter '0\.weight' once wrapper segments "
            r"are dropped; keep one of the two")


def test_report_text_shows_everything():
    r = LoadReport(loaded=["a", "b"], new=["c"], vanished=["d"], reshaped=["e"],
                   changed={"a": {"lr": (1, 2)}}, renamed={"module.b": "b"},
                   options="saved checkpoint", regrouped=True)
    assert str(r) == ("loaded state of 2 parameters (options from the saved checkpoint); 1 new "
                      "(fresh state): c; 1 vanished (state dropped): d; 1 reshaped (fresh state): "
                      "e; 1 renamed (wrapper segments dropped): module.b -> b; 1 with options "
                      "changed since the checkpoint: a (lr); param groups rebuilt to restore the "
                      "saved options")


def test_groups_are_put_back_when_torchs_own_load_raises(saved):
    model = net(seed=5)
    opt = adamw(model, [])                                       # one group: must regroup
    snap = snapshot(opt)

    def boom(optimizer, sd):
        raise RuntimeError("a load pre-hook failed")
    opt.register_load_state_dict_pre_hook(boom)
    with pytest.raises(RuntimeError, match="pre-hook failed"):
        load_state_dict(opt, copy.deepcopy(saved[0]), keep_saved_options=True)
    assert_unchanged(opt, snap)


# --------------------------------------------------------------------------------- DCP
def test_load_dcp_validates_before_loading(tmp_path, saved):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from paramwise.state.dcp import load_dcp

    bad = copy.deepcopy(saved[0])
    bad["state"]["2.weight"]["exp_avg_sq"] = torch.zeros(3, 5)
    dcp.save({"optim": bad}, checkpoint_id=str(tmp_path / "shape"))
    _, opt = target()
    snap = snapshot(opt)
    with pytest.raises(ParamwiseError, match=r"\['2\.weight'\]\['exp_avg_sq'\] has shape \(3, 5\)"):
        load_dcp(opt, str(tmp_path / "shape"))
    assert_unchanged(opt, snap)

    dcp.save({"optim": {"state": 5, "param_groups": [5]}}, checkpoint_id=str(tmp_path / "s"))
    with pytest.raises(ParamwiseError, match=r"checkpoint\['state'\] is an int \(5\)"):
        load_dcp(opt, str(tmp_path / "s"))
    one = copy.deepcopy(saved[0])
    one["state"]["0.weight"] = 5
    dcp.save({"optim": one}, checkpoint_id=str(tmp_path / "p"))
    with pytest.raises(ParamwiseError, match=r"\['state'\]\['0\.weight'\] \(parameter "
                       r"'0\.weight'\) is an int \(5\)"):
        load_dcp(opt, str(tmp_path / "p"))
    with pytest.raises(ParamwiseError, match=r"key=5 is not a string; pass key="):
        load_dcp(opt, str(tmp_path / "p"), key=5)
    assert_unchanged(opt, snap)
