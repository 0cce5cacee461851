"""paramwise.step.hooks: attach() on real torch optimizers, against the optimizers' own options."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch

import paramwise.step._chunks as chunks
from paramwise.errors import ParamwiseError
from paramwise.step import prox
from paramwise.step.hooks import attach, handle_of, lower
from paramwise.step.monitor import penalty, stats

F64 = torch.float64
OPTIM = torch.optim


def make(shape=(8, 5), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))


def grads(p, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(p.shape, generator=g, dtype=p.dtype)


def train(opt, params, steps, start=0, sched=None):
    for t in range(start, start + steps):
        for i, p in enumerate(params):
            p.grad = grads(p, 31 * t + i) + 0.1 * p.detach()
        opt.step()
        if sched is not None:
            sched.step()


# --------------------------------------------------------------------- native equivalents
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_with_decoupled_decay_equals_adamw(amsgrad):
    a, b = make(), make()
    ref = OPTIM.AdamW([a], lr=1e-2, weight_decay=0.3, amsgrad=amsgrad)
    opt = OPTIM.Adam([{"params": [b], "decoupled_decay": 0.3}], lr=1e-2, amsgrad=amsgrad)
    attach(opt)
    s1 = OPTIM.lr_scheduler.StepLR(ref, 10, 0.5)
    s2 = OPTIM.lr_scheduler.StepLR(opt, 10, 0.5)
    train(ref, [a], 50, sched=s1)
    train(opt, [b], 50, sched=s2)
    assert (a - b).abs().max() <= 1e-10


def test_lowered_decoupled_decay_equals_adamw_bit_for_bit():
    a, b = make(), make()
    ref = OPTIM.AdamW([a], lr=1e-2, weight_decay=0.3)
    groups = lower([{"params": [b], "decoupled_decay": 0.3}], OPTIM.Adam)
    assert groups[0]["decoupled_weight_decay"] is True
    opt = OPTIM.Adam(groups, lr=1e-2)
    attach(opt)
    train(ref, [a], 50)
    train(opt, [b], 50)
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls, kw", [
    (OPTIM.SGD, {}), (OPTIM.SGD, {"momentum": 0.9, "nesterov": True}),
    (OPTIM.SGD, {"momentum": 0.9, "maximize": True}), (OPTIM.Adam, {}),
    (OPTIM.Adam, {"maximize": True}), (OPTIM.RMSprop, {"momentum": 0.5, "centered": True}),
    (OPTIM.Adagrad, {}), (OPTIM.Adadelta, {}), (OPTIM.Adamax, {}), (OPTIM.NAdam, {}),
    (OPTIM.RAdam, {}), (OPTIM.ASGD, {}),
])
def test_l2_hook_equals_native_coupled_weight_decay(cls, kw):
    a, b = make(), make()
    ref = cls([a], lr=1e-2, weight_decay=0.2, **kw)
    opt = cls([{"params": [b], "l2": 0.2}], lr=1e-2, **kw)
    attach(opt)
    train(ref, [a], 30)
    train(opt, [b], 30)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sgd_l2_equals_sgd_weight_decay_exactly():
    a, b = make(), make()
    ref = OPTIM.SGD([a], lr=0.1, weight_decay=0.05, momentum=0.9)
    opt = OPTIM.SGD([{"params": [b], "l2": 0.05}], lr=0.1, momentum=0.9)
    attach(opt)
    train(ref, [a], 50)
    train(opt, [b], 50)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- lower
@pytest.mark.parametrize("cls, group, expect, lowered", [
    (OPTIM.SGD, {"l2": 0.1}, {"weight_decay": 0.1}, ("l2->weight_decay",)),
    (OPTIM.SGD, {"l2": 0.1, "weight_decay": 0.2}, {"weight_decay": 0.30000000000000004},
     ("l2->weight_decay",)),
    (OPTIM.RMSprop, {"l2": 0.1}, {"weight_decay": 0.1}, ("l2->weight_decay",)),
    (OPTIM.Adagrad, {"l2": 0.1}, {"weight_decay": 0.1}, ("l2->weight_decay",)),
    (OPTIM.AdamW, {"l2": 0.1}, {}, ()),                         # AdamW's decay is decoupled
    (OPTIM.AdamW, {"decoupled_decay": 0.1}, {"weight_decay": 0.11},  # + AdamW's default 0.01
     ("decoupled_decay->weight_decay",)),
    (OPTIM.AdamW, {"decoupled_decay": 0.1, "weight_decay": 0.0}, {"weight_decay": 0.1},
     ("decoupled_decay->weight_decay",)),
    (OPTIM.Adam, {"decoupled_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True},
     ("decoupled_decay->weight_decay+decoupled_weight_decay",)),
    (OPTIM.Adam, {"decoupled_decay": 0.1, "weight_decay": 0.01}, {"weight_decay": 0.01}, ()),
    (OPTIM.Adam, {"l2": 0.1, "decoupled_decay": 0.1}, {"weight_decay": 0.1},
     ("l2->weight_decay",)),
    (OPTIM.Adam, {"decoupled_decay": 0.1, "weight_decay": 0.01, "decoupled_weight_decay": True},
     {"weight_decay": 0.11}, ("decoupled_decay->weight_decay",)),
    (OPTIM.SGD, {"l2": 0.1, "l1": 1e-3}, {}, ()),              # l2 folded into the prox
    (OPTIM.SGD, {"l2": 0.1, "l1": 1e-3, "prox": False}, {"weight_decay": 0.1},
     ("l2->weight_decay",)),
    (OPTIM.SGD, {"decoupled_decay": 0.1}, {}, ()),              # no native decoupled decay
    (OPTIM.Rprop, {"l2": 0.1}, {}, ()),
    (OPTIM.SGD, {"l2": 0.0}, {}, ()),
])
def test_lower(cls, group, expect, lowered):
    g = {"params": [], **group}
    out = lower([g], cls)[0]
    assert g == {"params": [], **group}                          # input untouched
    for k, v in expect.items():
        assert out[k] == pytest.approx(v)
    assert out.get("paramwise_lowered", ()) == lowered
    for k in group:                                              # original keys kept
        assert k in out
    assert lower([out], cls)[0] == out                           # idempotent


def test_lower_uses_constructor_defaults_when_given():
    out = lower([{"params": [], "decoupled_decay": 0.1}], OPTIM.AdamW, {"weight_decay": 0.0})[0]
    assert out["weight_decay"] == pytest.approx(0.1)


def test_lower_leaves_subclasses_alone():
    class MyAdam(OPTIM.Adam):
        pass
    assert "paramwise_lowered" not in lower([{"params": [], "l2": 0.1}], MyAdam)[0]


def test_hooks_skip_what_was_lowered():
    a, b = make(), make()
    ref = OPTIM.SGD([a], lr=0.1, weight_decay=0.05)
    opt = OPTIM.SGD(lower([{"params": [b], "l2": 0.05}], OPTIM.SGD), lr=0.1)
    attach(opt)
    train(ref, [a], 20)
    train(opt, [b], 20)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------ prox behaviour
def test_sgd_prox_l1_is_step_then_soft_threshold_with_the_scheduled_lr():
    w = make((30,))
    opt = OPTIM.SGD([{"params": [w], "l1": 0.2}], lr=0.5)
    attach(opt)
    sched = OPTIM.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for t in range(5):
        lr = opt.param_groups[0]["lr"]
        g = grads(w, t)
        z = w.detach() - lr * g
        expected = torch.sign(z) * torch.clamp(z.abs() - lr * 0.2, min=0)
        w.grad = g
        opt.step()
        sched.step()
        torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


def test_zeros_stay_zero_when_the_gradient_is_small():
    w = torch.nn.Parameter(torch.zeros(50, dtype=F64))
    opt = OPTIM.SGD([{"params": [w], "l1": 0.1}], lr=0.5)
    attach(opt)
    for t in range(10):
        w.grad = 0.099 * torch.sign(grads(w, t))
        opt.step()
    assert (w == 0).all()


def test_adam_prox_uses_adams_own_scale():
    w = make((40,))
    opt = OPTIM.Adam([{"params": [w], "l1": 0.05}], lr=0.1, betas=(0.8, 0.9), eps=1e-3)
    attach(opt)
    plain = OPTIM.Adam([w0 := torch.nn.Parameter(w.detach().clone())], lr=0.1, betas=(0.8, 0.9),
                       eps=1e-3)
    for t in range(3):
        g = grads(w, t)
        w0.data.copy_(w.detach())
        w.grad, w0.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
        st = plain.state[w0]
        vhat = st["exp_avg_sq"] / (1 - 0.9 ** st["step"].item())
        thr = 0.1 * 0.05 / (vhat.sqrt() + 1e-3)
        z = w0.detach()
        torch.testing.assert_close(w.detach(), torch.sign(z) * torch.clamp(z.abs() - thr, min=0),
                                   rtol=1e-14, atol=1e-15)


def test_prox_scale_lr_is_plain_lr_times_lambda():
    w = make((40,))
    opt = OPTIM.Adam([{"params": [w], "l1": 0.05, "prox_scale": "lr"}], lr=0.1)
    attach(opt)
    ref = OPTIM.Adam([w0 := torch.nn.Parameter(w.detach().clone())], lr=0.1)
    w.grad = w0.grad = grads(w, 0)
    opt.step()
    ref.step()
    z = w0.detach()
    torch.testing.assert_close(w.detach(), torch.sign(z) * torch.clamp(z.abs() - 0.005, min=0))


def test_unknown_optimizer_falls_back_to_lr_and_warns_once():
    class Mine(OPTIM.SGD):
        pass
    ws = [make((10,)), make((10,), seed=1)]
    opt = Mine([{"params": [ws[0]], "l1": 0.1}, {"params": [ws[1]], "l1": 0.1}], lr=0.1)
    attach(opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(opt, ws, 3)
    msgs = [str(w.message) for w in caught if "paramwise" in str(w.message)]
    assert len(msgs) == 1 and re.search(r"does not know how Mine scales its steps.*lr·λ", msgs[0])
    opt2 = Mine([{"params": [make((3,))], "l1": 0.1, "prox_scale": "lr"}], lr=0.1)
    attach(opt2)
    prox._WARNED.discard(Mine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(opt2, opt2.param_groups[0]["params"], 2)


def test_register_scaling_teaches_a_new_optimizer():
    class Mine(OPTIM.SGD):
        pass
    prox.register_scaling(Mine, lambda group, lr, pieces, state, *, foreach: 2 * lr)
    w = torch.nn.Parameter(torch.ones(4, dtype=F64))
    opt = Mine([{"params": [w], "l1": 0.1}], lr=0.5)
    attach(opt)
    w.grad = torch.zeros(4, dtype=F64)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((4,), 1 - 2 * 0.5 * 0.1, dtype=F64))


@pytest.mark.parametrize("opts", [
    {"l1": 0.1}, {"l1": 0.1, "prox": False}, {"l2": 0.3}, {"decoupled_decay": 0.1},
    {"group_lasso": 0.5}, {"max_norm": 0.1}, {"l2_to_init": 0.1},
])
@pytest.mark.parametrize("cls", [OPTIM.SGD, OPTIM.Adam])
def test_lr_zero_changes_nothing(cls, opts):
    w = make()
    before = w.detach().clone()
    opt = cls([{"params": [w], **opts}], lr=0.0)
    attach(opt)
    train(opt, [w], 3)
    assert torch.equal(w.detach(), before)


def test_params_without_grad_are_skipped():
    a, b = make(), make(seed=1)
    before = b.detach().clone()
    opt = OPTIM.SGD([{"params": [a, b], "l1": 0.5, "decoupled_decay": 0.5, "max_norm": 0.1}],
                    lr=0.1)
    attach(opt)
    a.grad = grads(a, 0)
    opt.step()
    assert torch.equal(b.detach(), before)
    assert not torch.equal(a.detach(), make())


def test_max_norm_after_step():
    w = make((6, 4))
    opt = OPTIM.SGD([{"params": [w], "max_norm": 0.5, "max_norm_dim": 1}], lr=0.1)
    attach(opt)
    train(opt, [w], 2)
    assert (w.detach().norm(dim=0) <= 0.5 + 1e-12).all()


def test_group_lasso_prox_gives_zero_rows_and_stats_counts_them():
    w = make((10, 4))
    opt = OPTIM.SGD([{"params": [w], "group_lasso": 2.0}, {"params": [make((3,))]}], lr=0.1)
    attach(opt)
    with torch.no_grad():
        w[:3] *= 0.01
    w.grad = torch.zeros_like(w)
    opt.step()
    s = stats(opt)
    assert s[0]["zero_rows"] >= 3 and s[0]["rows"] == 10
    assert s[0]["zeros"] == 4 * s[0]["zero_rows"]
    assert s[0]["zero_fraction"] == pytest.approx(s[0]["zeros"] / 40)
    assert s[0]["penalty"] == pytest.approx(float(penalty(opt).detach()))
    assert s[1]["penalty"] == 0 and "zero_rows" not in s[1]
    assert s[0]["norm"] == pytest.approx(float(w.detach().norm()))


# ------------------------------------------------------------- penalty() vs gradient terms
@pytest.mark.parametrize("opts", [
    {"l2": 0.3}, {"l1": 0.2, "prox": False}, {"l1": 0.2, "l2": 0.3, "prox": False},
    {"group_lasso": 0.4, "prox": False}, {"group_lasso": 0.4, "group_dim": 1, "prox": False},
    {"l2_to_init": 0.5}, {"l1": 0.1, "group_lasso": 0.2, "l2": 0.1, "l2_to_init": 0.2,
                          "prox": False},
])
def test_gradient_terms_equal_autograd_of_penalty(opts):
    w = make((6, 5))
    opt = OPTIM.SGD([{"params": [w], **opts}], lr=0.0)        # lr 0: the step moves nothing
    attach(opt).capture_anchors()                  # l2_to_init: w0 now, not at the first step
    with torch.no_grad():
        w.add_(0.3)                                            # away from the anchor
    expected, = torch.autograd.grad(penalty(opt), [w])
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-12)


def test_penalty_is_zero_without_options_and_sums_groups():
    a, b = make(), make(seed=1)
    assert float(penalty(OPTIM.SGD([a], lr=0.1))) == 0.0
    opt = OPTIM.SGD([{"params": [a], "l1": 0.1}, {"params": [b], "l2": 0.2}], lr=0.1)
    expected = 0.1 * float(a.detach().abs().sum()) + 0.1 * float((b.detach() ** 2).sum())
    assert float(penalty(opt).detach()) == pytest.approx(expected)


# ----------------------------------------------------------------------- state_dict resume
def test_state_dict_round_trip_resumes_bit_identically():
    def build(params):
        groups = [{"params": [params[0]], "l1": 1e-2, "l2": 1e-3, "max_norm": 2.0},
                  {"params": [params[1]], "group_lasso": 5e-2, "l2_to_init": 1e-2,
                   "decoupled_decay": 1e-2},
                  {"params": [params[2]]}]
        opt = OPTIM.Adam(lower(groups, OPTIM.Adam), lr=1e-2, amsgrad=True)
        attach(opt)
        return opt, OPTIM.lr_scheduler.StepLR(opt, 3, 0.5)

    ps = [make((6, 4)), make((5, 3), seed=1), make((4,), seed=2)]
    opt, sched = build(ps)
    train(opt, ps, 5, sched=sched)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(),
                "params": [p.detach().clone() for p in ps]}, buf)
    train(opt, ps, 5, start=5, sched=sched)

    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    qs = [torch.nn.Parameter(t + 1.0) for t in ck["params"]]
    opt2, sched2 = build(qs)              # attach() sees other values: the anchor must be loaded
    with torch.no_grad():
        for q, t in zip(qs, ck["params"]):
            q.copy_(t)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert opt2.param_groups[1]["group_lasso"] == 5e-2
    train(opt2, qs, 5, start=5, sched=sched2)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_capture_anchors_anchors_at_attach_time():
    w = make((5,))
    opt = OPTIM.SGD([{"params": [w], "l2_to_init": 1.0}], lr=0.5)
    assert attach(opt).capture_anchors() == 1
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    w.grad = torch.zeros_like(w)
    opt.step()                                   # w ← w - 0.5·(w - w0): halfway back
    torch.testing.assert_close(w.detach(), start + 0.5)


def test_anchor_is_taken_at_the_first_step_not_at_attach():
    w = make((5,))
    opt = OPTIM.SGD([{"params": [w], "l2_to_init": 1.0}], lr=0.5)
    handle = attach(opt)
    assert handle.anchors == {} and float(penalty(opt)) == 0.0
    with torch.no_grad():
        w.add_(1.0)                              # e.g. weights loaded after the optimizer was built
    loaded = w.detach().clone()
    w.grad = torch.zeros_like(w)
    opt.step()                                   # anchored at `loaded`: no pull yet
    assert torch.equal(w.detach(), loaded) and torch.equal(handle.anchors[w], loaded)
    with torch.no_grad():
        w.add_(1.0)
    opt.step()
    torch.testing.assert_close(w.detach(), loaded + 0.5)


def test_a_step_with_lr_zero_takes_no_anchor():
    """torch.distributed.checkpoint's state init runs step() with lr = 0 before weights load."""
    w = make((5,))
    opt = OPTIM.SGD([{"params": [w], "l2_to_init": 1.0}], lr=0.0)
    handle = attach(opt)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert handle.anchors == {} and torch.equal(w.grad, torch.zeros_like(w))
    with torch.no_grad():
        w.add_(1.0)
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert torch.equal(handle.anchors[w], w.detach())


def test_anchor_is_taken_when_the_first_gradient_arrives():
    """In backward (eager even under a compiled step), from the weights the step starts from;
    a restored anchor wins; the grad hooks go at the next step and with remove()."""
    model = torch.nn.Linear(4, 3).double()
    opt = OPTIM.SGD([{"params": [model.weight], "l2_to_init": 0.1},
                     {"params": [model.bias]}], lr=0.1)
    handle = attach(opt)
    restored = torch.full_like(model.bias, 7.0)
    handle.anchors[model.bias] = restored
    with torch.no_grad():
        model.weight.mul_(2.0)
    before = model.weight.detach().clone()
    model(torch.ones(2, 4, dtype=F64)).sum().backward()
    assert torch.equal(handle.anchors[model.weight], before)
    assert handle.anchors[model.bias] is restored
    opt.step()
    assert handle._grad_hooks == {}
    handle.remove()
    handle2 = attach(opt)
    handle2.remove()
    model(torch.ones(2, 4, dtype=F64)).sum().backward()
    assert handle2.anchors == {}


def test_anchors_round_trip_through_state_dict_bit_identically():
    w, v = make((4, 3)), make((3,), seed=1)
    opt = OPTIM.Adam([{"params": [w, v], "l2_to_init": 0.3}], lr=1e-2)
    attach(opt)
    train(opt, [w, v], 2)
    sd = opt.state_dict()
    assert sorted(sd["paramwise_anchors"]) == [0, 1]
    w2, v2 = make((4, 3), seed=5), make((3,), seed=6)
    opt2 = OPTIM.Adam([{"params": [w2, v2], "l2_to_init": 0.3}], lr=1e-2)
    h2 = attach(opt2)
    h2.capture_anchors([w2])                     # taken before the load: the loaded one wins
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for a, b in ((h2.anchors[w2], sd["paramwise_anchors"][0]),
                 (h2.anchors[v2], sd["paramwise_anchors"][1])):
        assert torch.equal(a, b) and a.dtype == b.dtype
    w2.grad, v2.grad = torch.zeros_like(w2), torch.zeros_like(v2)
    opt2.step()
    assert torch.equal(h2.anchors[w2], sd["paramwise_anchors"][0])   # not re-taken


# ------------------------------------------------------------------ attach, remove, errors
def test_remove_detaches_and_allows_reattaching():
    a, b = make(), make()
    opt = OPTIM.SGD([{"params": [a], "l1": 0.5}], lr=0.1)
    h = attach(opt)
    assert handle_of(opt) is h and h.attached
    h.remove()
    h.remove()
    assert handle_of(opt) is None and not h.attached
    ref = OPTIM.SGD([b], lr=0.1)
    train(opt, [a], 3)
    train(ref, [b], 3)
    assert torch.equal(a, b)
    attach(opt)


def test_attach_twice_is_an_error():
    opt = OPTIM.SGD([{"params": [make()], "l1": 0.5}], lr=0.1)
    attach(opt)
    with pytest.raises(ParamwiseError, match=r"already has paramwise regularization attached; "
                                             r"keep the handle"):
        attach(opt)


@pytest.mark.parametrize("group, pattern", [
    ({"l1": -1.0}, r"param group 0 \('enc\.w'\), parameter 'enc\.w': l1=-1\.0 is not a finite"),
    ({"group_lasso": 1.0}, r"parameter 'enc\.w': group_lasso needs a parameter with >= 2 dims"),
    ({"prox_scale": "fast", "l1": 1.0}, r"prox_scale='fast' is not one of"),
])
def test_attach_checks_options_with_names(group, pattern):
    opt = OPTIM.SGD([{"params": [make((4,))], "param_names": ["enc.w"], **group}], lr=0.1)
    with pytest.raises(ParamwiseError, match=pattern):
        attach(opt)


def test_attach_rejects_complex_and_non_optimizers():
    opt = OPTIM.SGD([{"params": [torch.nn.Parameter(torch.zeros(3, dtype=torch.cfloat))],
                      "l1": 0.1}], lr=0.1)
    with pytest.raises(ParamwiseError, match="complex parameters are not supported"):
        attach(opt)
    with pytest.raises(ParamwiseError, match=r"attach\(\) needs a torch\.optim\.Optimizer"):
        attach([make()])  # type: ignore[arg-type]


def test_bad_strength_set_mid_training_raises_before_changing_anything():
    w = make()
    opt = OPTIM.SGD([{"params": [w], "l1": 0.1, "param_names": ["fc.weight"]}], lr=0.1)
    attach(opt)
    train(opt, [w], 1)
    opt.param_groups[0]["l1"] = float("nan")
    before = w.detach().clone()
    w.grad = grads(w, 5)
    with pytest.raises(ParamwiseError, match=r"param group 0 \('fc\.weight'\): l1=nan is not a "
                                             r"finite number >= 0.*step\(\) was not run"):
        opt.step()
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("opts", [
    {"l1": 0.1}, {"l1": 0.1, "prox": False}, {"l2": 0.1}, {"group_lasso": 0.1},
    {"group_lasso": 0.1, "prox": False}, {"max_norm": 0.5}, {"decoupled_decay": 0.1},
    {"l1": 0.1, "group_lasso": 0.1, "l2": 0.1},
])
@pytest.mark.parametrize("cls", [OPTIM.SGD, OPTIM.Adam])
def test_a_nan_parameter_does_not_spread(cls, opts):
    w = make((6, 5))
    opt = cls([{"params": [w], **opts}], lr=0.1)
    attach(opt)
    with torch.no_grad():
        w[2, 3] = float("nan")
    for t in range(3):
        w.grad = grads(w, t)
        opt.step()
    bad = ~torch.isfinite(w.detach())
    assert bad.sum() == 1 and bad[2, 3]
    assert stats(opt)[0]["nonfinite"] == 1


# ------------------------------------------------------------------- AMP skipped steps
def test_fused_optimizer_with_grad_scaler_skips_and_unscales():
    def run(fused, scale=None, inf=None):
        w = make((6, 4))
        opt = OPTIM.Adam([{"params": [w], "l2": 0.1, "l1": 0.05, "prox": False,
                           "decoupled_decay": 0.1}], lr=0.1, fused=fused)
        attach(opt)
        for t in range(3):
            w.grad = grads(w, t) * (scale or 1)
            if scale:
                opt.grad_scale = torch.tensor(float(scale))
                opt.found_inf = torch.tensor(float(inf))
            opt.step()
        return w.detach()
    torch.testing.assert_close(run(False), run(True, 1024.0, 0.0), rtol=1e-12, atol=1e-12)
    assert torch.equal(run(True, 1024.0, 1.0), make((6, 4)).detach())


def test_grad_scaler_skipped_step_applies_no_regularization():
    w = make((6, 4), dtype=torch.float32)
    opt = OPTIM.SGD([{"params": [w], "l1": 0.1, "max_norm": 0.5, "decoupled_decay": 0.1}],
                    lr=0.1)
    attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    before = w.detach().clone()
    loss = (w * float("inf")).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w.detach(), before)


# ---------------------------------------------------------------- fast path vs plain loop
@pytest.mark.parametrize("cls, kw", [(OPTIM.Adam, {}), (OPTIM.SGD, {"momentum": 0.9}),
                                     (OPTIM.RMSprop, {}), (OPTIM.Adagrad, {})])
def test_foreach_and_chunking_match_the_plain_loop(cls, kw, monkeypatch):
    shapes = [(40, 30), (7, 3, 2, 2), (30,), (1, 5)]
    groups = lambda ps: [  # noqa: E731
        {"params": ps[:2], "l1": 1e-2, "group_lasso": 5e-2, "l2": 1e-2},
        {"params": ps[2:], "l1": 2e-2, "prox": False, "l2": 1e-2, "decoupled_decay": 0.1,
         "max_norm": 1.0}]
    results = []
    for foreach, limit in [(False, 1 << 20), (True, 1 << 20), (False, 64), (True, 64)]:
        monkeypatch.setitem(chunks.DEFAULT_LIMITS, "cpu", limit)
        ps = [make(s, seed=i) for i, s in enumerate(shapes)]
        opt = cls(groups(ps), lr=1e-2, **kw)
        attach(opt, foreach=foreach)
        train(opt, ps, 4)
        results.append(ps)
    for other in results[1:]:
        for p, q in zip(results[0], other):
            torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("group_dim", [0, 1, -1])
def test_sgd_group_lasso_prox_is_step_then_block_soft_threshold(group_dim):
    w = make((6, 4, 3))
    opt = OPTIM.SGD([{"params": [w], "group_lasso": 0.3, "group_dim": group_dim}], lr=0.5)
    attach(opt)
    g = grads(w, 0)
    z = w.detach() - 0.5 * g
    d = group_dim % 3
    other = [i for i in range(3) if i != d]
    norms = z.norm(dim=other, keepdim=True)
    t = 0.5 * 0.3 * (z.numel() / z.shape[d]) ** 0.5
    w.grad = g
    opt.step()
    torch.testing.assert_close(w.detach(), z * torch.clamp(1 - t / norms, min=0), rtol=1e-14,
                               atol=1e-15)


@pytest.mark.parametrize("cls, kw, steps", [
    (OPTIM.Adam, {"betas": (0.5, 0.7), "eps": 1e-3}, 1), (OPTIM.AdamW, {"amsgrad": True, "weight_decay": 0.0}, 1),
    (OPTIM.Adamax, {}, 1), (OPTIM.RMSprop, {"eps": 1e-3}, 3),
    (OPTIM.RMSprop, {"centered": True, "alpha": 0.5}, 3),
    (OPTIM.Adagrad, {"lr_decay": 0.3, "eps": 1e-3}, 3),
])
def test_adaptive_scale_is_the_optimizers_own_step_per_unit_gradient(cls, kw, steps):
    """Without momentum the optimizer moves each element by s·g; the prox must use that s."""
    w, ref = make((30,)), make((30,))
    opt = cls([{"params": [w], "l1": 0.03}], lr=0.1, **kw)
    attach(opt)
    plain = cls([ref], lr=0.1, **kw)
    for t in range(steps):
        g = grads(w, t)
        with torch.no_grad():
            ref.copy_(w)
        w.grad, ref.grad = g.clone(), g.clone()
        before = ref.detach().clone()
        plain.step()
        opt.step()
        s = (before - ref.detach()) / g
        z = ref.detach()
        torch.testing.assert_close(w.detach(), torch.sign(z) * torch.clamp(z.abs() - 0.03 * s,
                                                                          min=0),
                                   rtol=1e-9, atol=1e-12)


def test_stats_reports_the_largest_row_norm():
    w = make((6, 4))
    opt = OPTIM.SGD([{"params": [w], "max_norm": 0.5}], lr=0.1)
    attach(opt)
    train(opt, [w], 1)
    assert stats(opt)[0]["max_row_norm"] == pytest.approx(0.5)


def test_stats_in_small_chunks_and_without_underflow(monkeypatch):
    """stats() sums a chunk at a time (float64) and counts a zero row by its exact zeros, so a
    row of tiny values (whose squares underflow) is not counted as zero."""
    w, v = make((9, 7), dtype=torch.float32), make((6,), seed=1, dtype=torch.float32)
    with torch.no_grad():
        w[2] = 0.0
        w[4] = 1e-30
        w[:, 3] = 0.0
        v[1] = float("nan")
    opt = OPTIM.SGD([{"params": [w], "group_lasso": 0.1, "l1": 0.2, "l2": 0.3,
                      "max_norm": 5.0, "max_norm_dim": 1},
                     {"params": [v], "l1": 0.2, "max_norm": 5.0}], lr=0.1)
    attach(opt)
    whole = stats(opt)
    monkeypatch.setitem(chunks.DEFAULT_LIMITS, "cpu", 5)
    small = stats(opt)
    for i in (0, 1):
        assert small[i].keys() == whole[i].keys()
        for k, val in whole[i].items():
            assert small[i][k] == pytest.approx(val, rel=1e-12, nan_ok=True), (i, k)
    s, x = whole[0], w.detach().double()
    assert s["zero_rows"] == 1 and s["rows"] == 9 and s["nonfinite"] == 0
    assert s["zeros"] == 7 + 8 and s["numel"] == 63 and s["zero_fraction"] == 15 / 63
    want = (0.2 * x.abs().sum() + 0.15 * x.square().sum()
            + 0.1 * 7 ** 0.5 * x.norm(dim=1).sum())
    assert s["penalty"] == pytest.approx(float(want), rel=1e-12)
    assert s["norm"] == pytest.approx(float(x.norm()), rel=1e-12)
    assert s["max_row_norm"] == pytest.approx(float(x.norm(dim=0).max()), rel=1e-12)
    assert whole[1]["nonfinite"] == 1 and whole[1]["penalty"] != whole[1]["penalty"]  # NaN


@pytest.mark.parametrize("kw", [{"eps": 0.0}, {"amsgrad": True}, {}])
def test_adaptive_prox_scaled_path_matches_the_generic_one(kw, monkeypatch):
    """The CPU fast path (s = k/d on chunk buffers) against the per-element-s path, including
    Adam with eps = 0 (where the fast path steps aside) and a user-registered rule."""
    def run(foreach):
        ps = [make((40, 30), seed=1), make((7, 3, 2), seed=2)]
        with torch.no_grad():
            ps[1][2:4] *= 1e-3                        # rows that go to zero
        opt = OPTIM.Adam([{"params": ps[:1], "l1": 2e-2},
                          {"params": ps[1:], "group_lasso": 2.0, "l2": 1e-2}], lr=5e-2, **kw)
        attach(opt, foreach=foreach)
        train(opt, ps, 6)
        return ps
    monkeypatch.setitem(chunks.DEFAULT_LIMITS, "cpu", 128)
    fast, generic = run(False), run(True)
    for p, q in zip(fast, generic):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        assert torch.equal(p == 0, q == 0)
    assert (fast[0] == 0).any() and (fast[1] == 0).all(dim=(1, 2)).any()
    assert not (fast[1] == 0).all()
    assert prox.denominator_for(OPTIM.Adam) is not None
    monkeypatch.setitem(prox._RULES, OPTIM.Adam, prox._RULES[OPTIM.Adam].__call__)
    assert prox.denominator_for(OPTIM.Adam) is None     # a user's rule wins over the fast path


@pytest.mark.parametrize("cls,kw", [(torch.optim.Adam, {}), (torch.optim.SGD, {"momentum": 0.9})])
def test_a_closure_step_gets_the_gradient_terms_after_its_backward(cls, kw):
    """step(closure) computes the gradients inside step() (Lightning's automatic optimization
    does this, zeroing them first): the terms must be added after the closure ran, and give
    the same training as zero_grad / backward / step."""
    reg = {"l1": 0.05, "prox": False, "l2_to_init": 0.1, "decoupled_decay": 0.2}
    x, y = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)), torch.randn(32, 2)

    def train(with_closure: bool, reg: dict = reg) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 2)
        opt = cls([{"params": [model.weight], **reg}, {"params": [model.bias]}], lr=0.05, **kw)
        attach(opt)
        for _ in range(5):
            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss
            if with_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        return model

    a, b = train(True), train(False)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-6, atol=1e-7)
    plain = train(True, {"l1": 0.0, "prox": False})      # the terms did something
    assert not torch.allclose(a.weight, plain.weight, atol=1e-3)
