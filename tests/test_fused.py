"""The fused Adam + adaptive prox step (paramwise.step.fused.update) against torch's own Adam and against the
unfused path (torch's step, then the post-step hook)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramwise
from paramwise.step import _chunks, _groupstep, hooks
from paramwise.step.fused.update import adam_update_, fusable, sgd_update_, update_
from paramwise.step.hooks import attach

SHAPES = [(37, 11), (5,), (64, 3, 2), (1, 129)]


def params(dtype: torch.dtype, seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads(ps: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) * (1 + step) for p in ps]


@pytest.fixture(params=[None, 64], ids=["default_chunks", "chunks_of_64"])
def limit(request, monkeypatch):
    if request.param:
        monkeypatch.setitem(_chunks.DEFAULT_LIMITS, "cpu", request.param)


def run_both(cls, kw: dict, ref: list, ps: list, update, steps: int = 5):
    """``steps`` steps of torch's ``cls`` on ``ref`` and of paramwise's ``update`` alone (no
    proximal map) on ``ps``, with the same gradients; returns both optimizers."""
    ref_opt, opt = cls(ref, lr=0.01, **kw), cls(ps, lr=0.01, **kw)
    for step in range(steps):
        for p, q, g in zip(ref, ps, grads(ref, step)):
            p.grad, q.grad = g.clone(), g.clone()
        ref_opt.step()
        with torch.no_grad():
            update(opt, opt.param_groups[0], ps, [0] * len(ps), lambda *a: None)
    return ref_opt, opt


SGD = torch.optim.SGD
SGDS = [
    (torch.optim.SGD, {}),
    (torch.optim.SGD, {"momentum": 0.9}),
    (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1}),
    (torch.optim.SGD, {"momentum": 0.8, "nesterov": True, "maximize": True}),
    (torch.optim.SGD, {"weight_decay": 0.05, "maximize": True}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,kw", SGDS)
def test_sgd_update_is_torch_sgd_bit_for_bit(cls, kw, dtype, limit):
    ref, ps = params(dtype), params(dtype)
    assert_same_as_torch(ref, ps, *run_both(cls, kw, ref, ps, sgd_update_))


def assert_same_as_torch(ref: list, ps: list, ref_opt, opt) -> None:
    """Weights and every state tensor (step counts included) equal, bit for bit, with the same
    keys, dtype and strides."""
    for p, q in zip(ref, ps):
        assert torch.equal(p, q)
        assert ref_opt.state[p].keys() == opt.state[q].keys()
        for k, v in ref_opt.state[p].items():
            assert torch.equal(v, opt.state[q][k]), k
            assert v.dtype == opt.state[q][k].dtype and v.stride() == opt.state[q][k].stride()


OPTS = [
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"weight_decay": 0.1}),
    (torch.optim.Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True}),
    (torch.optim.Adam, {"maximize": True, "weight_decay": 0.05}),
    (torch.optim.AdamW, {"amsgrad": True, "maximize": True}),
    (torch.optim.AdamW, {"betas": (0.8, 0.9), "eps": 1e-6}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,kw", OPTS)
def test_update_is_torch_adam_bit_for_bit(cls, kw, dtype, limit):
    """adam_update_ alone (no proximal map) is Adam.step: weights, moments, step counts."""
    ref, ps = params(dtype), params(dtype)
    ref_opt, opt = run_both(cls, kw, ref, ps, adam_update_)
    assert_same_as_torch(ref, ps, ref_opt, opt)
    for p, q in zip(ref, ps):
        assert all(v.device == opt.state[q][k].device for k, v in ref_opt.state[p].items())
    assert ref_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


RMSPROPS = [
    (torch.optim.RMSprop, {}),
    (torch.optim.RMSprop, {"momentum": 0.9, "weight_decay": 0.1}),
    (torch.optim.RMSprop, {"centered": True, "maximize": True, "alpha": 0.9}),
    (torch.optim.RMSprop, {"centered": True, "momentum": 0.5, "eps": 1e-4}),
]
ADAGRADS = [
    (torch.optim.Adagrad, {}),
    (torch.optim.Adagrad, {"lr_decay": 0.1, "weight_decay": 0.05}),
    (torch.optim.Adagrad, {"initial_accumulator_value": 0.5, "maximize": True, "eps": 1e-6}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,kw", RMSPROPS + ADAGRADS)
def test_rmsprop_and_adagrad_updates_are_torch_bit_for_bit(cls, kw, dtype, limit):
    """update_ alone is RMSprop.step / Adagrad.step: weights, every state tensor, step counts."""
    ref, ps = params(dtype), params(dtype)
    assert_same_as_torch(ref, ps, *run_both(cls, kw, ref, ps, update_))


def run(cls, kw: dict, reg: dict, fuse: bool, steps: int = 6):
    """Weights, optimizer and how often the fused update ran, after `steps` steps with fixed
    gradients; regularization on the 2-d and 3-d parameters."""
    ps = params(torch.float64)
    with torch.no_grad():
        for p in ps:
            p.mul_(0.1)       # small weights: the proximal maps have rows/elements to zero
    calls = []
    name = "update_"
    real = getattr(_groupstep, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_groupstep, name, spy)
        if not fuse:
            mp.setattr(_groupstep, "fusable", lambda *a, **k: False)
        opt = cls([{"params": [ps[0], ps[2]], **reg}, {"params": [ps[1], ps[3]]}], lr=0.05,
                  **kw)
        attach(opt)
        for step in range(steps):
            for p, g in zip(ps, grads(ps, step)):
                p.grad = g
            opt.step()
    return ps, opt, len(calls)


REGS = [{"l1": 0.3}, {"l1": 0.2, "l2": 0.5}, {"group_lasso": 2.0},
        {"group_lasso": 1.0, "l1": 0.1, "group_dim": 1}, {"l1": 0.3, "max_norm": 0.3},
        # gradient terms and decoupled decay, alone and before a prox
        {"l1": 0.3, "prox": False}, {"l2": 0.5}, {"group_lasso": 1.0, "prox": False},
        {"l2_to_init": 0.5, "decoupled_decay": 0.2},
        {"group_lasso": 2.0, "decoupled_decay": 0.3, "l2_to_init": 0.1, "group_dim": 1},
        {"l1": 0.3, "prox_scale": "lr"}, {"group_lasso": 2.0, "l2": 0.1, "prox_scale": "lr"},
        # max-norm projected in the pass: alone, along dim 1, with group lasso on the same rows;
        # with group lasso cutting along another dim it runs after the pass
        {"max_norm": 0.3}, {"max_norm": 0.3, "max_norm_dim": 1, "l2": 0.5},
        {"group_lasso": 2.0, "max_norm": 0.05}, {"group_lasso": 2.0, "max_norm": 0.02, "group_dim": 1}]


@pytest.mark.parametrize("reg", REGS, ids=lambda r: "+".join(r))
@pytest.mark.parametrize("cls,kw", OPTS[:3] + OPTS[4:5] + SGDS[1:4] + RMSPROPS[1:3] + ADAGRADS[1:])
def test_fused_step_equals_step_then_hook(cls, kw, reg, limit):
    fused, fopt, n_fused = run(cls, kw, reg, True)
    plain, popt, n_plain = run(cls, kw, reg, False)
    assert n_fused == 6 and n_plain == 0
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert torch.equal(a == 0, b == 0)              # the same exact zeros
    # the prox zeroed something (in these 6 steps group lasso zeroes rows under Adam only)
    if reg.get("prox", True) and cls is not SGD and (
            "l1" in reg or ("group_lasso" in reg and cls in (torch.optim.Adam, torch.optim.AdamW))):
        assert (fused[0] == 0).any() or (fused[2] == 0).any()
    if "max_norm" in reg:                           # the projection bit: rows at the bound
        other = [i for i in range(fused[0].ndim) if i != reg.get("max_norm_dim", 0)]
        norms = torch.linalg.vector_norm(fused[0], dim=other)
        assert norms.max() <= reg["max_norm"] * (1 + 1e-9)
        if "group_lasso" not in reg:                # (group lasso may shrink every row)
            assert (norms > reg["max_norm"] * (1 - 1e-9)).any()
    for a, b in zip(fused, plain):                  # the gradient terms stay in .grad
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    for a, b in zip(fused, plain):
        assert fopt.state[a].keys() == popt.state[b].keys()
        for key in fopt.state[a]:
            torch.testing.assert_close(fopt.state[a][key], popt.state[b][key],
                                       rtol=1e-9, atol=1e-12)


def test_gradients_are_given_back_and_untouched(monkeypatch):
    ps = params(torch.float32)
    opt = torch.optim.Adam([{"params": ps, "l1": 1e-2}], lr=0.01)
    attach(opt)
    gs = grads(ps, 0)
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    before = [p.grad for p in ps]
    opt.step()
    assert all(p.grad is b for p, b in zip(ps, before))
    assert all(torch.equal(p.grad, g) for p, g in zip(ps, gs))


@pytest.mark.parametrize("why,kw,closure", [
    ("foreach", {"foreach": True}, False),
    ("fused", {"fused": True}, False),
    ("tensor lr", {"lr": torch.tensor(0.01)}, False),
    ("closure", {}, True),
])
def test_not_fused_where_torch_would_not_run_its_loop(why, kw, closure, monkeypatch):
    calls = []
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: calls.append(1))
    ps = params(torch.float32)
    opt = torch.optim.Adam([{"params": ps, "l1": 1e-2}], **{"lr": 0.01, **kw})
    attach(opt)
    for p, g in zip(ps, grads(ps, 0)):
        p.grad = g
    if closure:
        opt.step(lambda: torch.tensor(0.0))
    else:
        opt.step()
    assert calls == [], why
    assert all(opt.state[p]["step"] == 1 for p in ps)     # torch's step ran


def test_not_fused_for_subclasses_other_dtypes_or_a_user_scaling(monkeypatch):
    class MyAdam(torch.optim.Adam):
        pass

    p, half = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    p.grad, half.grad = torch.ones(4, 4), torch.ones(4, dtype=torch.bfloat16)
    for opt in (MyAdam([p]), torch.optim.Adam([p], differentiable=True),
                torch.optim.Adam([half]), torch.optim.SGD([p], nesterov=True, momentum=0.9,
                                                          foreach=True),
                torch.optim.Adadelta([p]), torch.optim.RMSprop([p], foreach=True),
                torch.optim.Adagrad([p], foreach=True)):
        assert not fusable(opt, opt.param_groups[0], opt.param_groups[0]["params"],
                           closure=False)
    for opt in (torch.optim.AdamW([p]), torch.optim.SGD([p], lr=0.1), torch.optim.RMSprop([p]),
                torch.optim.Adagrad([p])):
        assert fusable(opt, opt.param_groups[0], [p], closure=False)
    calls = []
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: calls.append(1))
    monkeypatch.setitem(paramwise.step.prox._RULES, torch.optim.Adam, paramwise.step.prox._adam)
    paramwise.step.prox.register_scaling(torch.optim.Adam, lambda g, lr, *a, **k: lr)  # the user's
    opt = torch.optim.Adam([{"params": [p], "l1": 1e-2}], lr=0.1)
    attach(opt)
    p.grad = torch.ones(4, 4)
    opt.step()
    assert calls == [] and opt.state[p]["step"] == 1          # a user's rule runs after


@pytest.mark.parametrize("then", ["retry", "new_backward"])
def test_a_step_that_raises_applies_nothing_to_fused_groups(then):
    """A later pre-hook raises: the fused groups are not updated (their update runs in the
    post-hook). Retried as it was, the step applies once, with the same gradients; after a new
    backward, a parameter it did not reach has no gradient and is skipped, as in torch."""
    ps = params(torch.float32)
    before = [p.detach().clone() for p in ps]
    opt = torch.optim.Adam([{"params": ps, "l1": 1e-2}], lr=0.01)
    attach(opt)

    def boom(*a):
        raise RuntimeError("later hook failed")

    h = opt.register_step_pre_hook(boom)
    gs = grads(ps, 0)
    for p, g in zip(ps, gs):
        p.grad = g
    with pytest.raises(RuntimeError, match="later hook"):
        opt.step()
    h.remove()
    assert all(torch.equal(p, b) for p, b in zip(ps, before)) and not opt.state
    if then == "retry":
        opt.step()
        assert all(p.grad is g for p, g in zip(ps, gs))
        assert all(opt.state[p]["step"] == 1 for p in ps)
        ref = params(torch.float32)
        ref_opt = torch.optim.Adam([{"params": ref, "l1": 1e-2}], lr=0.01)
        attach(ref_opt)
        for p, g in zip(ref, gs):
            p.grad = g
        ref_opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ps, ref))
    else:
        opt.zero_grad()
        ps[0].grad = torch.ones_like(ps[0])
        opt.step()
        assert all(p.grad is None for p in ps[1:])
        assert opt.state[ps[0]]["step"] == 1 and all(p not in opt.state for p in ps[1:])


def test_remove_gives_set_aside_gradients_back():
    ps = params(torch.float32)
    opt = torch.optim.Adam([{"params": ps, "l1": 1e-2}], lr=0.01)
    handle = attach(opt)
    h = opt.register_step_pre_hook(lambda *a: 1 / 0)
    for p, g in zip(ps, grads(ps, 0)):
        p.grad = g
    with pytest.raises(ZeroDivisionError):
        opt.step()
    h.remove()
    handle.remove()
    assert all(p.grad is not None for p in ps)


def test_mixed_float32_and_float64_group_is_bit_for_bit(limit):
    """One group, both dtypes: each batch's scratch has its tensors' dtype."""
    def make():
        g = torch.Generator().manual_seed(5)
        return [nn.Parameter(torch.randn(30, 7, generator=g)),
                nn.Parameter(torch.randn(40, 5, generator=g, dtype=torch.float64))]

    for cls, kw in [(torch.optim.Adam, {"weight_decay": 0.1}), (SGD, {"momentum": 0.9,
                                                                    "weight_decay": 0.1})]:
        ref, ps = make(), make()
        run_both(cls, kw, ref, ps, sgd_update_ if cls is SGD else adam_update_, steps=3)
        assert all(torch.equal(p, q) for p, q in zip(ref, ps)), cls.__name__


def test_paramwise_optimizer_lasso_under_adam_uses_the_fused_path(monkeypatch):
    calls = []
    real = _groupstep.update_
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: (calls.append(1), real(*a, **k)))
    torch.manual_seed(0)
    model = nn.Linear(20, 1)
    opt = paramwise.optimizer(model, "adam", [paramwise.Rule("weight", l1=0.05)], lr=0.05)
    x, y = torch.randn(200, 20), torch.randn(200, 1)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert len(calls) == 200
    assert (model.weight == 0).sum() > 0 and model.bias.item() != 0


def test_explain_says_which_groups_run_fused():
    model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
    rules = [paramwise.no_decay(), paramwise.Rule("weight & ndim>=2", l1=1e-4)]
    adam = paramwise.optimizer(model, "adam", rules, lr=1e-3)
    assert "fused" in paramwise.explain(adam, "0.weight")
    assert "fused" not in paramwise.explain(adam, "1.weight")            # nothing to fuse
    sgd = paramwise.optimizer(model, "sgd", rules, lr=1e-3, momentum=0.9)
    assert "SGD's update" in paramwise.explain(sgd, "0.weight")
    for name in ("rmsprop", "adagrad"):
        assert "fused" in paramwise.explain(paramwise.optimizer(model, name, rules, lr=1e-3),
                                            "0.weight"), name
    for name, kw in [("adadelta", {}), ("adam", {"foreach": True})]:
        other = paramwise.optimizer(model, name, rules, lr=1e-3, **kw)
        assert "fused" not in paramwise.explain(other, "0.weight"), name


@pytest.mark.parametrize("cls,kw", [(torch.optim.Adam, {"weight_decay": 0.1}),
                                    (torch.optim.SGD, {"momentum": 0.9}),
                                    (torch.optim.RMSprop, {"momentum": 0.9, "centered": True}),
                                    (torch.optim.Adagrad, {"lr_decay": 0.1})])
def test_odd_tensors_late_gradients_and_resume_match_torch(cls, kw, limit, monkeypatch):
    """channels_last and 0-d/empty parameters, a parameter whose first gradient comes at step
    3, and a state_dict resume halfway: the fused update (forced on for a group whose options
    are all 0, so nothing but the update changes the weights) equals torch's step."""
    calls = []
    real = _groupstep.update_
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: (calls.append(1), real(*a, **k)))
    monkeypatch.setattr(_groupstep, "wants_fusion", lambda *a: True)
    def make():
        g = torch.Generator().manual_seed(3)
        conv = torch.randn(8, 3, 3, 3, generator=g).to(memory_format=torch.channels_last)
        return [nn.Parameter(conv), nn.Parameter(torch.tensor(0.5)),
                nn.Parameter(torch.empty(0, 4)), nn.Parameter(torch.randn(5, 7, generator=g))]

    ref, ps = make(), make()
    ref_opt = cls(ref, lr=0.01, **kw)
    opt = cls([{"params": ps, "l1": 0.0, "l2_to_init": 0.0}], lr=0.01, **kw)
    attach(opt)
    for step in range(6):
        if step == 3:                                   # resume from a saved state
            sd = opt.state_dict()
            opt = cls([{"params": ps, "l1": 0.0, "l2_to_init": 0.0}], lr=0.01, **kw)
            attach(opt)
            opt.load_state_dict(sd)
        for i, (p, q) in enumerate(zip(ref, ps)):
            if i == 3 and step < 3:
                p.grad = q.grad = None
                continue
            g = torch.randn(p.shape, generator=torch.Generator().manual_seed(step + 10 * i))
            p.grad, q.grad = g.clone(), g.clone()
        ref_opt.step()
        opt.step()
    assert len(calls) == 6
    for p, q in zip(ref, ps):
        assert torch.equal(p, q) and p.stride() == q.stride()
        for k, v in ref_opt.state[p].items():
            assert torch.equal(v, opt.state[q][k]), k


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.RMSprop])
def test_momentum_one_runs_where_no_scale_is_needed_and_refuses_an_adaptive_prox(cls):
    """torch accepts momentum=1.0; the steady-state scale lr/(1-momentum) then does not exist.
    A prox with prox_scale='lr' and a max-norm projection need none (fused or not, the same
    result); an adaptive prox is refused before step() changes anything."""
    def run(reg: dict, fuse: bool) -> list[torch.Tensor]:
        ps = params(torch.float64)
        with pytest.MonkeyPatch.context() as mp:
            if not fuse:
                mp.setattr(_groupstep, "fusable", lambda *a, **k: False)
            opt = cls([{"params": ps, **reg}], lr=0.01, momentum=1.0)
            attach(opt)
            for step in range(3):
                for p, g in zip(ps, grads(ps, step)):
                    p.grad = g
                opt.step()
        return ps

    for reg in ({"l1": 0.3, "prox_scale": "lr"}, {"max_norm": 0.5, "l2": 0.1}):
        for a, b in zip(run(reg, True), run(reg, False)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    ps = params(torch.float64)
    with pytest.raises(paramwise.ParamwiseError, match=r"momentum=1.0 has no steady-state step"):
        attach(cls([{"params": ps, "l1": 0.3}], lr=0.01, momentum=1.0))     # when built
    idle = cls([{"params": ps, "l1": 0.3}], lr=0.0, momentum=1.0)         # lr 0: no prox runs
    attach(idle)
    for p, g in zip(ps, grads(ps, 0)):
        p.grad = g
    idle.step()
    before = [p.detach().clone() for p in ps]
    opt = cls([{"params": ps, "l1": 0.3}], lr=0.01, momentum=0.9)
    attach(opt)
    opt.param_groups[0]["momentum"] = 1.0                               # set later by hand
    for p, g in zip(ps, grads(ps, 0)):
        p.grad = g
    with pytest.raises(paramwise.ParamwiseError, match=r"step\(\) was not run"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before)) and not opt.state


def test_asking_whether_adagrad_runs_fused_leaves_its_state_alone():
    """Adagrad creates its state when built; a parameter added later has none (torch's step
    would fail on it), so its group is not fused, and asking must not create an entry."""
    w, late = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(2, 3))
    opt = torch.optim.Adagrad([{"params": [w], "l1": 1e-3}], lr=0.1)
    opt.add_param_group({"params": [late], "l1": 1e-3})
    attach(opt)
    assert hooks.runs_fused(opt, 0) and not hooks.runs_fused(opt, 1)
    assert late not in opt.state and len(opt.state_dict()["state"]) == 1


@pytest.mark.parametrize("reg", [{"l1": 0.3}, {"group_lasso": 0.3}], ids=["l1", "group_lasso"])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.Adagrad, torch.optim.RMSprop])
def test_the_folded_update_matches_at_ordinary_and_extreme_step_sizes(cls, reg):
    """Before an adaptive prox the fused pass folds the update's last operation into the map
    (forming w·d/a, a the step size); at a normal lr, and at lrs small enough for w·d/a to
    overflow float32 with large gradients (then the update runs whole), it equals torch's step
    then the map, with no NaN where the weights are exactly 0 (rows waking from 0 included)."""
    for lr, big in ((0.05, 1.0), (1e-25, 1e14), (1e-39, 1.0)):
        out = []
        for fuse in (True, False):
            ps = params(torch.float32)
            with torch.no_grad():
                ps[0][:5] = 0.0
            opt = cls([{"params": ps[:1], **reg}], lr=lr)
            attach(opt)
            with pytest.MonkeyPatch.context() as mp:
                if not fuse:
                    mp.setattr(_groupstep, "fusable", lambda *a, **k: False)
                for step in range(3):
                    ps[0].grad = grads(ps, step)[0] * big
                    opt.step()
            out.append(ps[0].detach())
        assert not out[0].isnan().any(), lr
        torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-7)
        assert torch.equal(out[0] == 0, out[1] == 0)
        if lr == 0.05 and "l1" in reg:
            assert (out[0] == 0).any()
