"""Regularizers on the optimizers users bring (pytorch-optimizer, lion-pytorch, schedulefree,
heavyball): step scales against each optimizer's real steps and scikit-learn's Lasso, heavyball's
cleared gradients, schedule-free evaluation weights, SophiaH's graph-reading step, refusals."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from _lasso import ALPHA
from paramwise.errors import ParamwiseError
from paramwise.step import prox, thirdparty
from paramwise.step._chunks import Piece
from paramwise.step.hooks import attach

po = pytest.importorskip("pytorch_optimizer")
lion_pytorch = pytest.importorskip("lion_pytorch")
sf = pytest.importorskip("schedulefree")
heavyball = pytest.importorskip("heavyball")
sklearn = pytest.importorskip("sklearn.linear_model")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(heavyball.utils, "compile_mode", None)   # eager: no 20 s compile
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def fit(X, y, cls, steps, options=None, schedule_free=False, **kw):
    """Full-batch lasso training; the weights the user evaluates (x after eval() for
    schedule-free optimizers)."""
    w = torch.nn.Parameter(torch.zeros(X.shape[1], dtype=X.dtype))
    opt = cls([{"params": [w], "l1": ALPHA, **(options or {})}], **kw)
    attach(opt)
    if schedule_free:
        opt.train()
    for _ in range(steps):
        opt.zero_grad()
        ((y - X @ w) ** 2).sum().div(2 * len(y)).backward()
        opt.step()
    if schedule_free:
        opt.eval()
    return w.detach().double().numpy()


def f1(w, ref):
    hit = ((w != 0) & (ref != 0)).sum()
    return 2 * hit / ((w != 0).sum() + (ref != 0).sum())


# -------------------------------------------------------------- registry: by name, no imports
def test_paramwise_imports_none_of_the_packages():
    code = ("import sys, paramwise, paramwise.step.hooks; print(sorted(m for m in ('pytorch_optimizer',"
            " 'lion_pytorch', 'schedulefree', 'heavyball') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_classes_are_matched_by_module_and_qualname_and_refusals_reach_subclasses():
    fake = type("Lion", (torch.optim.Optimizer,), {"__module__": "lion_pytorch.lion_pytorch"})
    assert thirdparty.lookup(fake) is thirdparty.lion
    other = type("Lion", (torch.optim.Optimizer,), {"__module__": "mylib.optim"})
    assert thirdparty.lookup(other) is None
    assert prox.rule_name(heavyball.HeavySOAP) == "refused"          # a subclass of SOAPBase
    assert prox.rule_name(po.Lamb) == "Lamb" and prox.rule_name(heavyball.AdamW) == "AdamW"


# ------------------------------------------------- each rule is the optimizer's own step per g
STEADY = [  # (class, options, steps): buffers caught up with a constant gradient
    (po.Lamb, {"lr": 1e-3}, 200), (po.Lamb, {"lr": 1e-3, "grad_averaging": False}, 200),
    (po.Adan, {"lr": 1e-3}, 200), (po.AdaBelief, {"lr": 1e-3}, 200),
    (po.AdaBelief, {"lr": 1e-3, "adam_debias": True}, 30), (po.ADOPT, {"lr": 1e-3}, 200),
    (po.Prodigy, {"lr": 1.0, "growth_rate": 1.0, "d0": 1e-3}, 200),   # d held fixed
    (po.Prodigy, {"lr": 1.0, "growth_rate": 1.0, "d0": 1e-3, "bias_correction": True}, 300),
    (po.SophiaH, {"lr": 1e-3, "p": 1e9}, 2000),
    (heavyball.AdamW, {"lr": 1e-3}, 200), (heavyball.LaProp, {"lr": 1e-3}, 200),
    (heavyball.RMSprop, {"lr": 1e-3}, 200), (heavyball.ADOPT, {"lr": 1e-3}, 200),
    (heavyball.SGD, {"lr": 1e-3}, 200),
]


@pytest.mark.parametrize("cls,kw,steps", STEADY, ids=lambda v: getattr(v, "__name__", ""))
def test_rule_is_the_steady_state_step_per_unit_of_gradient(cls, kw, steps):
    g = torch.Generator().manual_seed(0)
    dtype = F64
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=dtype))
    grad = torch.randn(6, 5, generator=g, dtype=dtype)
    hess = torch.rand(6, 5, generator=g, dtype=dtype) + 0.5
    opt = cls([w], **kw)
    for _ in range(steps):
        w.grad = grad.clone()
        before = w.detach().clone()
        opt.step(**({"hessian": [hess.clone()]} if cls is po.SophiaH else {}))
    s = prox.scaling_for(cls)(opt.param_groups[0], opt.param_groups[0]["lr"], [Piece(w)],
                              opt.state, foreach=False)
    s = s[0] if isinstance(s, list) else torch.full_like(w, s)
    tol = 2e-6 if cls.__module__ == "heavyball" else 1e-9     # heavyball stores fp32 state
    torch.testing.assert_close((before - w.detach()) / grad, s, rtol=tol, atol=0)


@pytest.mark.parametrize("cls", [po.Lion, lion_pytorch.Lion], ids=["pytorch_optimizer",
                                                                    "lion_pytorch"])
def test_lion_rule_makes_its_sign_step_exactly_s_times_c(cls):
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=F64))
    opt = cls([w], lr=1e-3, betas=(0.9, 0.99))
    for _ in range(5):
        m = opt.state[w]["exp_avg"].clone() if opt.state[w] else torch.zeros_like(w)
        w.grad = torch.randn(6, 5, generator=g, dtype=F64)
        before = w.detach().clone()
        opt.step()
    c = 0.9 * m + 0.1 * w.grad                       # the vector whose sign Lion steps along
    s = prox.scaling_for(cls)(opt.param_groups[0], 1e-3, [Piece(w)], opt.state, foreach=False)[0]
    torch.testing.assert_close(before - w.detach(), s * c, rtol=1e-12, atol=0)


# ------------------------------------------------------------ lasso: scikit-learn's solution
LASSO = {  # name: (class, steps, options, coefficient tolerance, schedule-free)
    "Lamb": (po.Lamb, 300, {"lr": 0.1}, 1e-5, False),
    "Adan": (po.Adan, 300, {"lr": 0.1}, 0.1, False),        # its gradient-difference term
    "AdaBelief": (po.AdaBelief, 300, {"lr": 0.1}, 1e-5, False),
    "ADOPT": (po.ADOPT, 300, {"lr": 0.1}, 1e-3, False),
    "Prodigy": (po.Prodigy, 300, {"lr": 1.0}, 1e-5, False),
    "heavyball.SGD": (heavyball.SGD, 300, {"lr": 0.05}, 1e-5, False),
    "schedulefree.SGD": (sf.SGDScheduleFree, 300, {"lr": 0.5}, 1e-2, True),
    "pytorch_optimizer.ScheduleFreeAdamW": (po.ScheduleFreeAdamW, 300, {"lr": 0.1}, 2e-2, True),
}


@pytest.mark.parametrize("name", list(LASSO))
def test_proximal_l1_reaches_sklearn_lasso(data, lasso, name):
    # schedule-free: x (after eval()) converges as an average of the z's, hence the looser bound
    X, y = data
    cls, steps, kw, tol, sfree = LASSO[name]
    if cls is heavyball.SGD:
        X, y = X.float(), y.float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # a rule of its own, no fallback
        w = fit(X, y, cls, steps, schedule_free=sfree, **kw)
    assert f1(w, lasso) >= 0.95 and np.array_equal(w != 0, lasso != 0)
    assert np.abs(w - lasso).max() < tol


def test_lion_reaches_the_lasso_support_and_stays_within_a_few_lr(data, lasso):
    # a sign step moves every weight by lr: with a constant lr the nonzero coefficients end
    # within a few lr of the lasso's, the zeros exactly; the plain lr·λ threshold cannot hold
    # a zero (|sign| = 1 > λ), so it misses the support
    X, y = data
    lr = 2e-2
    w = fit(X, y, lion_pytorch.Lion, 400, lr=lr)
    assert np.array_equal(w != 0, lasso != 0)
    assert np.abs(w - lasso).max() < 3 * lr
    plain = fit(X, y, lion_pytorch.Lion, 400, {"prox_scale": "lr"}, lr=lr)
    assert f1(plain, lasso) < 0.95 or np.abs(plain - lasso).max() > 3 * lr


# --------------------------------------------------- heavyball: step() clears the gradients
def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _batch(t):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(32, 12, generator=g)
    return x, (x[:, :3] * 2).sin()


def test_heavyball_maps_run_although_step_clears_the_gradients():
    # reference: heavyball SGD alone, the soft-threshold by lr/(1-β)·λ and the projection by hand
    lam, c, lr, beta = 1e-2, 0.5, 0.05, 0.9
    runs = []
    for by_hand in (False, True):
        m = _model()
        groups = [{"params": [m[0].weight]}, {"params": [m[2].weight]}, {"params": [m[0].bias,
                                                                                  m[2].bias]}]
        if not by_hand:
            groups[0]["l1"], groups[1]["max_norm"] = lam, c
        opt = heavyball.SGD(groups, lr=lr, beta=beta)
        if not by_hand:
            attach(opt)
        for t in range(30):
            x, y = _batch(t)
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            assert m[0].weight.grad is None                  # heavyball cleared it
            if by_hand:
                with torch.no_grad():
                    m[0].weight.copy_(torch.nn.functional.softshrink(m[0].weight,
                                                                     lr / (1 - beta) * lam))
                    n = m[2].weight.norm(dim=1, keepdim=True)
                    m[2].weight.mul_(torch.where(n > c, c / n, 1.0))
            assert bool((m[2].weight.norm(dim=1) <= c * (1 + 1e-6)).all())
        runs.append(m)
    assert (runs[0][0].weight == 0).float().mean() > 0.2
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- schedule-free: x, y and z
@pytest.mark.parametrize("cls,kw", [(sf.SGDScheduleFree, {"lr": 0.05}),
                                    (sf.AdamWScheduleFree, {"lr": 5e-3}),
                                    (po.ScheduleFreeAdamW, {"lr": 5e-3})],
                         ids=["schedulefree.SGD", "schedulefree.AdamW", "po.AdamW"])
def test_schedule_free_zeros_and_bound_hold_in_the_evaluated_weights(cls, kw):
    m, c = _model(), 0.5
    opt = cls([{"params": [m[0].weight], "l1": 3e-2},
               {"params": [m[2].weight], "max_norm": c},
               {"params": [m[0].bias, m[2].bias]}], **kw)
    attach(opt)
    opt.train()
    beta = kw.get("momentum", 0.9)
    for t in range(40):
        x, y = _batch(t)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        for p in (m[2].weight,):          # x as eval() computes it, after every step
            xs = torch.lerp(p.detach(), opt.state[p]["z"], 1 - 1 / beta)
            assert bool((xs.norm(dim=1) <= c * (1 + 1e-6)).all())
    w = m[0].weight
    zeros_y = (w == 0).clone()
    opt.eval()
    zeros_x = w == 0
    assert zeros_x.float().mean() > 0.2 and torch.equal(zeros_x, zeros_y)
    assert bool((m[2].weight.norm(dim=1) <= c * (1 + 1e-6)).all())
    x_eval = w.detach().clone()
    opt.train()
    opt.eval()
    assert torch.equal(w == 0, zeros_x)                       # survive eval/train switches
    torch.testing.assert_close(w.detach(), x_eval)


def test_schedule_free_variants_without_a_known_layout_are_refused():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ParamwiseError, match=r"SGDScheduleFreeClosure is schedule-free.*wrong "
                       r"weights.*use schedulefree\.SGDScheduleFree"):
        attach(sf.SGDScheduleFreeClosure([{"params": [w], "max_norm": 1.0}], lr=0.1))
    opt = po.ScheduleFreeSGD([{"params": [w], "l1": 0.1}], lr=0.1)
    attach(opt)
    opt.eval()
    w.grad = torch.ones(3, 2)
    with pytest.raises(ParamwiseError, match=r"in eval mode .*call optimizer\.train\(\) before "
                       r"step\(\); step\(\) was not run"):
        opt.step()


# ----------------------------------------------------- SophiaH reads the graph in its step
def test_sophiah_decoupled_decay_is_its_own_decoupled_weight_decay():
    lam, lr = 0.1, 1e-2
    out = []
    for ours in (True, False):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        params = list(m.parameters())
        opt = (po.SophiaH([{"params": params, "decoupled_decay": lam}], lr=lr) if ours else
               po.SophiaH(params, lr=lr, weight_decay=lam, weight_decouple=True))
        if ours:
            attach(opt)
        for t in range(5):
            x, y = _batch(t)
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x[:, :10]), y[:, :1]).backward(create_graph=True)
            opt.step()        # before the fix: "modified by an inplace operation"
        out.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("make,pattern", [
    (lambda w: po.SOAP([{"params": [w], "l1": 0.1}], lr=1e-3), r"SOAP has no step scale.*"
     r"preconditioned or orthogonalized"),
    (lambda w: po.MADGRAD([{"params": [w], "l1": 0.1}], lr=1e-3), r"MADGRAD has no step "
     r"scale.*dual averaging"),
    (lambda w: heavyball.PSGDKron([{"params": [w], "l1": 0.1}], lr=1e-3), r"PSGDKron has no "
     r"step scale"),
    (lambda w: po.Lamb([{"params": [w], "l1": 0.1}], rectify=True), r"no rule for Lamb's "
     r"rectified .*rectify=True"),
])
def test_refusals_say_why_and_what_to_use(make, pattern):
    w = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ParamwiseError, match=pattern) as e:
        attach(make(w))
    assert re.search(r"prox=False|prox_scale='lr'", str(e.value))
