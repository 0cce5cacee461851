"""Name-keyed optimizer checkpoints, checked against hand-transplanted state and plain runs."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
from torch import nn

import paramwise
from paramwise.state.checkpoint import LoadReport, load_state_dict, state_dict

RULES_A = [paramwise.no_decay()]
# Other rules: 2.weight leaves the decayed group, biases get their own lr, a norm lr_mult.
RULES_B = [paramwise.Rule("bias", lr=5e-3), paramwise.Rule("0.weight | 1.*", weight_decay=0.0),
           paramwise.Rule("norm", lr_mult=0.5)]


def net(extra: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 8)]
    if extra:
        layers.append(nn.Linear(8, 8))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers)


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def train(model: nn.Module, opt: torch.optim.Optimizer, data) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def adamw(model: nn.Module, rules) -> torch.optim.Optimizer:
    return paramwise.optimizer(model, "adamw", rules, lr=1e-2, weight_decay=0.1)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def trained(rules=RULES_A, steps: int = 3):
    model = net()
    opt = adamw(model, rules)
    train(model, opt, batches(steps))
    return model, opt


def clone_model(model: nn.Module, **kw) -> nn.Module:
    fresh = net(**kw, seed=123)
    fresh.load_state_dict(model.state_dict(), strict=False)
    return fresh


def by_name(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict]:
    return {n: opt.state[p] for n, p in model.named_parameters() if p in opt.state}


def transplant(src_model, src_opt, dst_model, dst_opt) -> None:
    """The reference: copy state by hand, name by name, from the module trees."""
    src = dict(src_model.named_parameters())
    for n, p in dst_model.named_parameters():
        if n in src and src[n] in src_opt.state:
            dst_opt.state[p] = {k: v.clone() for k, v in src_opt.state[src[n]].items()}


def assert_continues_like_transplant(model, opt, model2, opt2, rules, steps: int,
                                     seed: int) -> None:
    """``model2``/``opt2`` (loaded from ``model``/``opt``) train on exactly like a copy of
    ``model`` whose ``rules`` optimizer got ``opt``'s state transplanted by hand."""
    ref_model = clone_model(model)
    ref_opt = adamw(ref_model, rules)
    transplant(model, opt, ref_model, ref_opt)
    more = batches(steps, seed=seed)
    train(model2, opt2, more)
    train(ref_model, ref_opt, more)
    for (n, p), q in zip(model2.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), n


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_state_dict_is_keyed_by_canonical_names():
    model, opt = trained()
    sd = state_dict(opt)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(sd["state"]) == sorted(names)
    assert [g["params"] for g in sd["param_groups"]] == [g["param_names"] for g in opt.param_groups]
    for n, p in model.named_parameters():
        assert sd["state"][n] is not None and sd["state"][n]["exp_avg"] is opt.state[p]["exp_avg"]
    assert [g["weight_decay"] for g in sd["param_groups"]] == [0.1, 0.0]


def test_roundtrip_same_rules_resumes_bit_identically():
    model, opt = trained()
    saved_model, saved_opt = roundtrip(model.state_dict()), roundtrip(state_dict(opt))
    more = batches(4, seed=7)
    train(model, opt, more)                      # the uninterrupted run
    resumed = net(seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = adamw(resumed, RULES_A)
    report = load_state_dict(opt2, saved_opt)
    assert report.exact and not report.changed and sorted(report.loaded) == sorted(n for n, _ in model.named_parameters())
    train(resumed, opt2, more)
    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


def test_moments_follow_names_across_groups_and_options_come_from_current_rules():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    model2 = clone_model(model)
    opt2 = adamw(model2, RULES_B)
    groups_before = [id(g) for g in opt2.param_groups]
    # The groups really differ: torch's positional load cannot even size-match them.
    assert [len(g["params"]) for g in opt2.param_groups] != [len(g["params"]) for g in opt.param_groups]
    report = load_state_dict(opt2, saved)

    expected = by_name(model, opt)
    got = by_name(model2, opt2)
    assert got.keys() == expected.keys()
    for n in expected:
        assert_same_state(got[n], expected[n])
    # Options are RULES_B's, written out by hand; the group dicts are the same objects.
    assert [id(g) for g in opt2.param_groups] == groups_before
    table = {n: (g["lr"], g["weight_decay"]) for g in opt2.param_groups for n in g["param_names"]}
    assert table == {"0.weight": (1e-2, 0.0), "0.bias": (5e-3, 0.1), "1.weight": (5e-3, 0.0),
                     "1.bias": (2.5e-3, 0.0), "2.weight": (1e-2, 0.1), "2.bias": (5e-3, 0.1),
                     "3.weight": (1e-2, 0.1), "3.bias": (5e-3, 0.1)}
    assert report.changed["0.weight"] == {"weight_decay": (0.1, 0.0)}
    assert report.changed["0.bias"] == {"lr": (1e-2, 5e-3), "weight_decay": (0.0, 0.1)}
    assert "2.weight" not in report.changed

    # Continuing equals a run whose state was transplanted by hand.
    assert_continues_like_transplant(model, opt, model2, opt2, RULES_B, steps=3, seed=5)


def test_torch_positional_load_gives_another_parameters_moments():
    """Why this module exists: same group sizes, other members -> torch mixes state up silently."""
    model, opt = trained([paramwise.Rule("2.*", lr=1e-3)])    # [0.*, 1.*, 3.*], [2.*]
    model2 = clone_model(model)
    opt2 = adamw(model2, [paramwise.Rule("3.*", lr=1e-3)])    # [0.*, 1.*, 2.*], [3.*]
    native = roundtrip(opt.state_dict())
    opt2.load_state_dict(copy.deepcopy(native))                 # no error, but:
    assert opt2.state[model2[2].weight]["exp_avg"].shape == (3, 8)   # 3.weight's moments
    assert opt2.param_groups[1]["param_names"] == ["2.weight", "2.bias"]  # holds 3.weight/bias
    opt3 = adamw(model3 := clone_model(model), [paramwise.Rule("3.*", lr=1e-3)])
    load_state_dict(opt3, native)                               # by name, the same dict
    for p, q in zip(model.parameters(), model3.parameters()):
        assert_same_state(opt3.state[q], opt.state[p])
    assert opt3.param_groups[1]["param_names"] == ["3.weight", "3.bias"]
    assert [g["lr"] for g in opt3.param_groups] == [1e-2, 1e-3]


def options_by_name(opt: torch.optim.Optimizer) -> dict[str, tuple]:
    return {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["param_names"]}


def test_keep_saved_options_restores_saved_options_per_parameter():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    model2 = clone_model(model)
    opt2 = adamw(model2, RULES_B)
    report = load_state_dict(opt2, saved, keep_saved_options=True)
    assert report.options == "saved checkpoint"
    assert not report.regrouped and len(opt2.param_groups) == 5   # no RULES_B group had to split
    assert options_by_name(opt2) == options_by_name(opt)
    for n, p in model2.named_parameters():
        assert_same_state(opt2.state[p], by_name(model, opt)[n])


def test_keep_saved_options_regroups_when_a_group_must_split():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    model2 = clone_model(model)
    opt2 = adamw(model2, [])                                  # one group
    report = load_state_dict(opt2, saved, keep_saved_options=True)
    assert report.regrouped
    got = [(g["param_names"], g["lr"], g["weight_decay"]) for g in opt2.param_groups]
    assert got == [(["0.weight", "2.weight", "3.weight"], 1e-2, 0.1),
                   (["0.bias", "1.weight", "1.bias", "2.bias", "3.bias"], 1e-2, 0.0)]
    assert_continues_like_transplant(model, opt, model2, opt2, RULES_A, steps=2, seed=3)


def test_keep_saved_options_without_regrouping_updates_in_place():
    model, opt = trained()
    opt.param_groups[0]["lr"] = 3e-3                         # e.g. a scheduler moved it
    saved = roundtrip(state_dict(opt))
    opt2 = adamw(clone_model(model), RULES_A)
    ids = [id(g) for g in opt2.param_groups]
    report = load_state_dict(opt2, saved, keep_saved_options=("lr",))
    assert not report.regrouped and [id(g) for g in opt2.param_groups] == ids
    assert [g["lr"] for g in opt2.param_groups] == [3e-3, 1e-2]


def test_keep_only_some_keys_regroups_when_needed():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    opt2 = adamw(clone_model(model), RULES_B)
    load_state_dict(opt2, saved, keep_saved_options=["weight_decay"])
    table = {n: (g["lr"], g["weight_decay"]) for g in opt2.param_groups for n in g["param_names"]}
    assert table["0.weight"] == (1e-2, 0.1)      # lr from RULES_B, weight_decay from the checkpoint
    assert table["0.bias"] == (5e-3, 0.0)
    assert table["1.bias"] == (2.5e-3, 0.0)


def test_new_parameters_start_fresh_and_resized_ones_too():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    model2 = net(extra=True)             # 3.* is now Linear(8, 8) (was the 3-output head), 4.* new
    opt2 = adamw(model2, RULES_A)
    with pytest.warns(UserWarning, match=r"2 parameters changed shape .*: 3\.weight, 3\.bias"):
        report = load_state_dict(opt2, saved)
    assert report.new == ["4.weight", "4.bias"] and report.reshaped == ["3.weight", "3.bias"]
    assert report.vanished == [] and not report.exact
    for n in ("3.weight", "3.bias", "4.weight", "4.bias"):
        assert dict(model2.named_parameters())[n] not in opt2.state, n
    assert_same_state(opt2.state[model2[2].weight], by_name(model, opt)["2.weight"])
    train(model2, opt2, batches(1))
    assert opt2.state[model2[4].weight]["step"].item() == 1.0
    assert opt2.state[model2[0].weight]["step"].item() == 4.0


def test_vanished_parameters_warn_and_are_reported():
    model = net(extra=True)
    opt = adamw(model, RULES_A)
    train(model, opt, batches(2))
    saved = roundtrip(state_dict(opt))
    opt2 = adamw(net(), RULES_A)
    with pytest.warns(UserWarning) as caught:
        report = load_state_dict(opt2, saved)
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"2 parameters in the checkpoint .* dropped: 4\.weight, 4\.bias", m)
               for m in messages), messages
    assert report.vanished == ["4.weight", "4.bias"] and not report.new
    assert report.reshaped == ["3.weight", "3.bias"]              # the 8x8 layer became the head
    assert "2 vanished" in str(report)
    with pytest.raises(paramwise.ParamwiseError, match=r"2 vanished .*strict=False"):
        load_state_dict(adamw(net(), RULES_A), saved, strict=True)


def test_native_state_dict_with_param_names_loads_by_name():
    model, opt = trained()
    native = roundtrip(opt.state_dict())                        # integer ids + param_names
    model2 = clone_model(model)
    opt2 = adamw(model2, RULES_B)
    load_state_dict(opt2, native)
    for n, p in model2.named_parameters():
        assert_same_state(opt2.state[p], by_name(model, opt)[n])


def test_wrapped_names_match_by_wrapper_free_name():
    model = net()
    compiled = torch.compile(model)                              # names '_orig_mod.0.weight'
    plain = torch.optim.AdamW(compiled.named_parameters(), lr=1e-2)
    train(model, plain, batches(2))
    assert plain.param_groups[0]["param_names"][0] == "_orig_mod.0.weight"
    opt2 = adamw(clone_model(model), RULES_A)
    with pytest.warns(UserWarning, match=r"8 saved names load under another name .*: "
                      r"_orig_mod\.0\.weight -> 0\.weight, _orig_mod\.0\.bias -> 0\.bias"):
        report = load_state_dict(opt2, roundtrip(plain.state_dict()))
    assert report.renamed["_orig_mod.0.weight"] == "0.weight" and report.exact
    assert "8 renamed (wrapper segments dropped): _orig_mod.0.weight -> 0.weight" in str(report)
    got = {n: opt2.state[p] for g in opt2.param_groups for n, p in zip(g["param_names"], g["params"])}
    for n, p in model.named_parameters():
        assert_same_state(got[n], plain.state[p])


def test_model_argument_names_a_plain_optimizer():
    model = net()
    plain = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    train(model, plain, batches(2))
    with pytest.raises(paramwise.ParamwiseError, match=r"has no 'param_names'.*model=the_model"):
        state_dict(plain)
    sd = state_dict(plain, model=model)
    assert sorted(sd["state"]) == sorted(n for n, _ in model.named_parameters())
    model2 = clone_model(model)
    opt2 = paramwise.optimizer(model2, "sgd", RULES_A, lr=1e-2, momentum=0.9, weight_decay=1e-4)
    load_state_dict(opt2, roundtrip(sd))
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(plain.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"]), n


def test_state_is_cast_like_torch_does():
    model, opt = trained()
    saved = roundtrip(state_dict(opt))
    model2 = clone_model(model).double()
    opt2 = adamw(model2, RULES_A)
    load_state_dict(opt2, saved)
    st = opt2.state[model2[0].weight]
    assert st["exp_avg"].dtype == torch.float64
    assert st["step"].dtype == torch.float32                     # torch keeps 'step' as saved


def test_positional_state_without_names_is_refused():
    model = net()
    plain = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    train(model, plain, batches(1))
    opt2 = adamw(net(), RULES_A)
    with pytest.raises(paramwise.ParamwiseError,
                       match=r"group 0 lists parameters by position without 'param_names'"):
        load_state_dict(opt2, plain.state_dict())
    with pytest.raises(paramwise.ParamwiseError, match=r"expected an optimizer state dict"):
        load_state_dict(opt2, {"state.0.weight.step": 1})
    with pytest.raises(paramwise.ParamwiseError, match=re.escape("keep_saved_options=[1]")):
        load_state_dict(opt2, state_dict(opt2), keep_saved_options=[1])


def test_report_text():
    r = LoadReport(loaded=["a", "b"], new=["c"], vanished=["d"], changed={"a": {"lr": (1, 2)}})
    text = str(r)
    assert text.startswith("loaded state of 2 parameters (options from the current rules)")
    assert "1 new (fresh state): c" in text and "1 vanished (state dropped): d" in text
    assert "a (lr)" in text and not r.exact


def test_interop_with_torch_distributed_checkpoint_state_dict():
    dsd = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    model, opt = trained()
    ours = state_dict(opt)
    theirs = dsd.get_optimizer_state_dict(model, opt)
    assert ours["state"].keys() == theirs["state"].keys()
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    # torch's FQN-keyed dict loads by name into an optimizer with other rules ...
    model2 = clone_model(model)
    opt2 = adamw(model2, RULES_B)
    load_state_dict(opt2, copy.deepcopy(theirs))
    for n, p in model2.named_parameters():
        assert_same_state(opt2.state[p], by_name(model, opt)[n])
    # ... and ours loads with torch's set_optimizer_state_dict when the rules are the same.
    model3 = clone_model(model)
    opt3 = adamw(model3, RULES_A)
    dsd.set_optimizer_state_dict(model3, opt3, copy.deepcopy(ours))
    for n, p in model3.named_parameters():
        assert_same_state(opt3.state[p], by_name(model, opt)[n])


def test_l2_to_init_anchors_follow_names():
    """The anchor w0 is the *pretrained* value: a resumed run must not re-anchor at its start."""
    model = net()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    rules = [paramwise.Rule("weight & type:Linear", l2_to_init=0.5)]
    opt = paramwise.optimizer(model, "sgd", rules, lr=0.1)
    train(model, opt, batches(3))
    saved = roundtrip(state_dict(opt))
    assert sorted(saved["paramwise_anchors"]) == ["0.weight", "2.weight", "3.weight"]
    assert torch.equal(saved["paramwise_anchors"]["2.weight"], w0["2.weight"])

    model2 = clone_model(model)                        # starts at the trained weights
    rules2 = [paramwise.Rule("2.weight | 3.weight", l2_to_init=0.5)]   # 0.weight dropped
    opt2 = paramwise.optimizer(model2, "sgd", rules2, lr=0.1)
    load_state_dict(opt2, saved)
    ref_model = clone_model(model)
    ref_opt = paramwise.optimizer(ref_model, "sgd", rules2, lr=0.1)
    more = batches(2, seed=11)
    train(model2, opt2, more)
    # The reference: plain SGD on loss + (0.5/2)·||w - w0||² with the original w0.
    with torch.no_grad():
        ref_model.load_state_dict(model.state_dict())
    plain = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    del ref_opt
    for x, y in more:
        plain.zero_grad()
        loss = nn.functional.mse_loss(ref_model(x), y)
        for n in ("2.weight", "3.weight"):
            loss = loss + 0.25 * (dict(ref_model.named_parameters())[n] - w0[n]).square().sum()
        loss.backward()
        plain.step()
    for (n, p), q in zip(model2.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def test_regularizer_options_come_from_current_rules():
    model = net()
    opt = paramwise.optimizer(model, "adam", [paramwise.Rule("weight & type:Linear", l1=1e-3)],
                              lr=1e-2)
    train(model, opt, batches(2))
    saved = roundtrip(state_dict(opt))
    assert saved["param_groups"][0]["l1"] == 1e-3
    model2 = clone_model(model)
    opt2 = paramwise.optimizer(model2, "adam", [paramwise.Rule("0.weight", group_lasso=1e-2)],
                               lr=1e-2)
    report = load_state_dict(opt2, saved)
    got = {n: (g.get("l1"), g.get("group_lasso")) for g in opt2.param_groups for n in g["param_names"]}
    assert got["0.weight"] == (None, 1e-2) and got["2.weight"] == (None, None)
    assert report.changed["2.weight"] == {"l1": (1e-3, "<unset>")}
    load_state_dict(opt2, saved, keep_saved_options=True)
    got = {n: (g.get("l1"), g.get("group_lasso")) for g in opt2.param_groups for n in g["param_names"]}
    assert got["0.weight"] == (1e-3, None) and got["2.weight"] == (1e-3, None)
    assert got["0.bias"] == (None, None)


def test_load_dcp_single_process_with_new_and_vanished_parameters(tmp_path):
    """A DCP checkpoint (no process group needed) loads by name: the template comes from the
    checkpoint's metadata, so added, removed and reshaped parameters are all fine."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from paramwise.state.dcp import load_dcp

    model = net(extra=True)
    opt = adamw(model, RULES_A)
    train(model, opt, batches(2))
    dcp.save({"optim": state_dict(opt)}, checkpoint_id=str(tmp_path))
    model2 = net(seed=4)                      # 3.* resized (8x8 -> 3x8), 4.* gone
    opt2 = adamw(model2, RULES_B)
    with pytest.warns(UserWarning):
        report = load_dcp(opt2, str(tmp_path))
    assert report.vanished == ["4.weight", "4.bias"] and report.reshaped == ["3.weight", "3.bias"]
    assert sorted(report.loaded) == ["0.bias", "0.weight", "1.bias", "1.weight", "2.bias", "2.weight"]
    for n, p in model2.named_parameters():
        if n.startswith("3."):
            assert p not in opt2.state
        else:
            assert_same_state(opt2.state[p], by_name(model, opt)[n])
    assert options_by_name(opt2)["0.weight"] == (1e-2, 0.0)      # RULES_B
    with pytest.raises(paramwise.ParamwiseError, match=r"no optimizer under key 'opt'"):
        load_dcp(opt2, str(tmp_path), key="opt")


def _l2_to_init_reference(model: nn.Module, anchors: dict[str, torch.Tensor], data) -> nn.Module:
    """Plain SGD on loss + Σ (0.5/2)·||w - w0||² over ``anchors`` (by name)."""
    ref = clone_model(model)
    plain = torch.optim.SGD(ref.parameters(), lr=0.1)
    params = dict(ref.named_parameters())
    for x, y in data:
        plain.zero_grad()
        loss = nn.functional.mse_loss(ref(x), y)
        for n, a in anchors.items():
            loss = loss + 0.25 * (params[n] - a).square().sum()
        loss.backward()
        plain.step()
    return ref


@pytest.mark.parametrize("loader", ["paramwise", "dcp_template_first"])
def test_resume_order_anchors_new_parameters_at_the_loaded_weights(loader):
    """build model → build optimizer → load model weights → load optimizer state: anchors in
    the checkpoint come back bit-identical; a parameter the checkpoint has no anchor for is
    anchored at its *loaded* weights, not at the random init the optimizer was built with."""
    import torch.distributed.checkpoint.state_dict as dsd

    before = [paramwise.Rule("2.weight", l2_to_init=0.5)]
    after = [paramwise.Rule("2.weight", l2_to_init=0.5),
             paramwise.Rule("3.weight", l2_to_init=0.5)]    # 3.weight: new to the anchors
    model = net()
    opt = paramwise.optimizer(model, "sgd", before, lr=0.1)
    train(model, opt, batches(2))
    saved_model = roundtrip(model.state_dict())
    saved_opt = roundtrip(state_dict(opt))
    w0 = dict(saved_opt["paramwise_anchors"])
    assert sorted(w0) == ["2.weight"]

    model2 = net(seed=7)                                     # random init, not the checkpoint's
    opt2 = paramwise.optimizer(model2, "sgd", after, lr=0.1)
    handle = paramwise.step.hooks.handle_of(opt2)
    if loader == "dcp_template_first":                       # torchtitan-style: the template
        dsd.get_optimizer_state_dict(model2, opt2)           # first (an lr = 0 step inside)
    model2.load_state_dict(saved_model)
    load_state_dict(opt2, saved_opt)
    params = dict(model2.named_parameters())
    assert torch.equal(handle.anchors[params["2.weight"]], w0["2.weight"])
    assert params["3.weight"] not in handle.anchors
    more = batches(2, seed=11)
    train(model2, opt2, more)
    assert torch.equal(handle.anchors[params["2.weight"]], w0["2.weight"])   # restored wins
    assert torch.equal(handle.anchors[params["3.weight"]], saved_model["3.weight"])
    want = {"2.weight": w0["2.weight"], "3.weight": saved_model["3.weight"]}
    ref = _l2_to_init_reference(net_loaded(saved_model), want, more)
    for (n, p), q in zip(model2.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def net_loaded(state: dict) -> nn.Module:
    model = net(seed=99)
    model.load_state_dict(state)
    return model


def test_fine_tuning_anchors_at_the_pretrained_weights():
    """L2-SP without an optimizer checkpoint: optimizer built, then pretrained weights loaded."""
    pretrained = net(seed=3).state_dict()
    model = net()
    opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("weight", l2_to_init=0.5)], lr=0.1)
    model.load_state_dict(pretrained)
    data = batches(2, seed=4)
    train(model, opt, data)
    anchors = paramwise.step.hooks.handle_of(opt).anchors
    for n, p in model.named_parameters():
        if n.endswith("weight") and p.ndim == 2:
            assert torch.equal(anchors[p], pretrained[n]), n
    want = {n: t for n, t in pretrained.items() if n.endswith("weight") and t.ndim == 2}
    ref = _l2_to_init_reference(net_loaded(pretrained), want, data)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
