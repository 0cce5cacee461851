"""Step scales (paramwise.step.prox, paramwise.step.scales) against torch's own steps, scikit-learn, and
optimizers paramwise has no rule for."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch

import paramwise.step._chunks as chunks
from _lasso import ALPHA, D
from paramwise.errors import ParamwiseError
from paramwise.step import prox
from paramwise.step._chunks import Piece
from paramwise.step.hooks import attach

sklearn = pytest.importorskip("sklearn.linear_model")

F64 = torch.float64
OPTIM = torch.optim


@pytest.fixture(autouse=True)
def _flush_denormals_one_thread():
    # tiny tensors: intra-op threads only contend (10x slower on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def fit(X, y, cls, steps, options, **kw):
    w = torch.nn.Parameter(torch.zeros(X.shape[1], dtype=F64))
    opt = cls([{"params": [w], **options}], **kw)
    attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        ((y - X @ w) ** 2).sum().div(2 * len(y)).backward()
        opt.step()
    return w.detach().numpy()


def lipschitz(X):
    return float(torch.linalg.eigvalsh(X.T @ X / len(X)).max())


def rule_scale(opt, p, pieces=None):
    s = prox.scaling_for(type(opt))(opt.param_groups[0], opt.param_groups[0]["lr"],
                                    pieces or [Piece(p)], opt.state, foreach=False)
    return s if isinstance(s, list) else [torch.full_like(p, s)]


# ------------------------------------------- the rule is torch's own step per unit of gradient
STEADY = [  # (class, options, steps): momentum buffers caught up with a constant gradient
    (OPTIM.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}, 400),
    (OPTIM.Adam, {"lr": 1e-3, "amsgrad": True}, 400),
    (OPTIM.NAdam, {"lr": 1e-3}, 400),
    (OPTIM.NAdam, {"lr": 1e-3, "momentum_decay": 0.01, "decoupled_weight_decay": True}, 400),
    (OPTIM.RAdam, {"lr": 1e-3}, 400),
    (OPTIM.RAdam, {"lr": 1e-3}, 3),                 # ρ_t ≤ 5: the SGD-like phase, s = lr
    (OPTIM.Adamax, {"lr": 1e-3}, 400),
    (OPTIM.RMSprop, {"lr": 1e-3, "momentum": 0.5, "alpha": 0.9}, 400),
    (OPTIM.Adagrad, {"lr": 0.1, "lr_decay": 0.01}, 50),
]


@pytest.mark.parametrize("cls,kw,steps", STEADY, ids=lambda v: getattr(v, "__name__", ""))
def test_rule_is_the_steady_state_step_per_unit_of_gradient(cls, kw, steps):
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=F64))
    grad = torch.randn(6, 5, generator=g, dtype=F64)
    opt = cls([w], **kw)
    for _ in range(steps):
        w.grad = grad.clone()
        before = w.detach().clone()
        opt.step()
    torch.testing.assert_close((before - w.detach()) / grad, rule_scale(opt, w)[0],
                               rtol=1e-9, atol=0)


def test_sparse_adam_rule_is_its_step_per_unit_of_gradient():
    w = torch.nn.Parameter(torch.randn(5, 3, dtype=F64))
    grad = torch.randn(5, 3, dtype=F64)
    opt = OPTIM.SparseAdam([w], lr=1e-2, eps=1e-3)     # ε large enough to tell where it goes
    for _ in range(300):
        w.grad = grad.to_sparse()
        before = w.detach().clone()
        opt.step()
    torch.testing.assert_close((before - w.detach()) / grad, rule_scale(opt, w)[0], rtol=1e-9,
                               atol=0)


def measured_step(cls, w, grad, c=1.0, sign=1.0, **kw):
    """One step of torch's ``cls`` alone on a copy of ``w``: the weights after it and the
    per-element step per unit of gradient it took (``w_post = c·w_pre - sign·s·g``)."""
    v = torch.nn.Parameter(w.detach().clone())
    v.grad = grad.clone()
    cls([v], **kw).step()
    return v.detach(), (w * c - v.detach()) / (sign * grad)


def soft(w, t):
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


@pytest.mark.parametrize("shape,kw", [
    ((40, 30), {"lr": 0.05}),
    ((40, 30), {"lr": 0.05, "weight_decay": 0.5, "maximize": True, "d": 1.0}),
    ((3, 20, 10), {"lr": 0.05, "eps": (1e-20, 1e-3)}),
    ((77,), {"lr": 0.05, "beta2_decay": -0.5}),
])
def test_adafactor_threshold_is_lambda_times_its_own_step(monkeypatch, shape, kw):
    """Adafactor has no momentum: each step moves w by s·g exactly. The prox after it must
    shrink by λ·s, s measured from torch's step on a copy (α from the weights *before* the
    step, recovered by paramwise from the weights after it). Chunks of 64 elements cut the
    matrices into several batches, each thresholded after the one before."""
    monkeypatch.setitem(chunks.DEFAULT_LIMITS, "cpu", 64)
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, generator=g, dtype=F64)
    gs = [torch.randn(shape, generator=g, dtype=F64).sign() * (0.5 + torch.rand(
        shape, generator=g, dtype=F64))]
    lam = 2.0
    post, s = measured_step(OPTIM.Adafactor, w0, gs[0], c=1 - kw["lr"] * kw.get("weight_decay", 0),
                            sign=-1.0 if kw.get("maximize") else 1.0, **kw)
    w = torch.nn.Parameter(w0.clone())
    opt = OPTIM.Adafactor([{"params": [w], "l1": lam}], **kw)
    attach(opt)
    w.grad = gs[0].clone()
    opt.step()
    torch.testing.assert_close(w.detach(), soft(post, lam * s), rtol=1e-10, atol=1e-12)
    assert (w == 0).any() and (w != 0).any()


def test_asgd_threshold_is_the_eta_its_step_used():
    """ASGD's step t uses η = lr/(1 + λ·lr·(t-1))^α (it stores the next one) after its own
    decay (1 - λη)w."""
    lam_asgd, lr = 0.5, 0.05
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(30, generator=g, dtype=F64)
    gs = [torch.randn(30, generator=g, dtype=F64) for _ in range(5)]
    kw = {"lr": lr, "lambd": lam_asgd, "alpha": 0.6}
    ref = torch.nn.Parameter(w0.clone())
    w = torch.nn.Parameter(w0.clone())
    opt_ref = OPTIM.ASGD([ref], **kw)
    opt = OPTIM.ASGD([{"params": [w], "l1": 0.2}], **kw)
    attach(opt)
    for t in range(5):
        eta = lr / (1 + lam_asgd * lr * t) ** 0.6
        ref.grad, w.grad = gs[t].clone(), gs[t].clone()
        opt_ref.step()
        opt.step()
        with torch.no_grad():   # the reference iterate: torch's step, then the prox by hand
            ref.copy_(soft(ref, 0.2 * eta))
        torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-6, atol=1e-9)


def test_asgd_reaches_sklearn_elastic_net(data):
    """ASGD's own decay (1 - λη)w is a gradient step on (λ/2)‖w‖²: with l1 the fixed point is
    scikit-learn's ElasticNet with l1 = ALPHA and l2 = lambd (lambd large enough that η
    decays over the run: the old s = lr threshold ended 0.21 away, with 43 zeros of 42)."""
    X, y = data
    lambd = 1e-2
    a = ALPHA + lambd
    ref = sklearn.ElasticNet(alpha=a, l1_ratio=ALPHA / a, fit_intercept=False, tol=1e-14,
                             max_iter=100_000).fit(X.numpy(), y.numpy()).coef_
    w = fit(X, y, OPTIM.ASGD, 600, {"l1": ALPHA}, lr=1 / lipschitz(X), lambd=lambd)
    assert 0 < (ref != 0).sum() < D
    assert np.array_equal(w != 0, ref != 0)
    assert np.abs(w - ref).max() < 1e-6


# ------------------------------------------------------------------------------ refusals
def test_rprop_refuses_the_adaptive_prox_and_its_gradient_form_reaches_the_lasso(data, lasso):
    """Rprop's step is step_size·sign(g): no step per unit of gradient. With prox=False the
    l1 subgradient's sign flips shrink its step sizes around the lasso point, so it ends
    within step_size_min-ish of sklearn's solution, with no exact zeros."""
    X, y = data
    w = torch.nn.Parameter(torch.zeros(D, dtype=F64))
    with pytest.raises(ParamwiseError, match=r"param group 0: Rprop has no step scale for "
                       r"prox_scale='adaptive': it moves each weight by its own step size "
                       r"times sign\(g\).*; set prox=False: the penalty then goes into the "
                       r"gradient"):
        attach(OPTIM.Rprop([{"params": [w], "l1": ALPHA}], lr=1e-2))
    assert re.search(r"set prox=False: the penalty then goes into the gradient.*not exactly",
                     prox.scale_fix(OPTIM.Rprop, {}))
    got = fit(X, y, OPTIM.Rprop, 400, {"l1": ALPHA, "prox": False}, lr=1e-2)
    assert (got == 0).sum() == 0
    assert np.abs(got - lasso).max() < 1e-5
    assert np.array_equal(np.abs(got) > 1e-4, lasso != 0)


@pytest.mark.skipif(not hasattr(OPTIM, "Muon"), reason="torch without Muon")
def test_muon_refuses_adaptive_and_runs_with_prox_scale_lr():
    w = torch.nn.Parameter(torch.randn(8, 6, dtype=F64))
    with pytest.raises(ParamwiseError, match=r"Muon has no step scale for prox_scale="
                       r"'adaptive': its update is the momentum matrix orthogonalized.*; set "
                       r"prox_scale='lr'.*optimizer='adamw'"):
        attach(OPTIM.Muon([{"params": [w], "l1": 0.1}], lr=0.02))
    assert re.search(r"prox_scale='lr'.*optimizer='adamw'", prox.scale_fix(OPTIM.Muon, {}))
    opt = OPTIM.Muon([{"params": [w], "l1": 5.0, "prox_scale": "lr"}], lr=0.02)
    attach(opt)
    ref = torch.nn.Parameter(w.detach().clone())
    opt_ref = OPTIM.Muon([ref], lr=0.02)
    w.grad = ref.grad = torch.randn(8, 6, dtype=F64)
    opt.step()
    opt_ref.step()
    torch.testing.assert_close(w.detach(), soft(ref.detach(), 0.02 * 5.0))


def test_lbfgs_refuses_adaptive_and_a_subclass_is_refused_too():
    class MyLBFGS(OPTIM.LBFGS):
        pass
    w = torch.nn.Parameter(torch.randn(4, dtype=F64))
    for cls in (OPTIM.LBFGS, MyLBFGS):
        with pytest.raises(ParamwiseError, match=rf"{cls.__name__} has no step scale for "
                           r"prox_scale='adaptive': it steps along a quasi-Newton direction"
                           r".*; train these parameters with an optimizer that has a step "
                           r"scale"):
            attach(cls([{"params": [w], "l1": 0.1}]))
    assert re.search(r"optimizer that has a step scale.*prox_scale='lr'",
                     prox.scale_fix(MyLBFGS, {}))
    assert prox.rule_name(OPTIM.LBFGS) == "refused" and prox.scaling_for(OPTIM.LBFGS) is None


def test_registering_a_rule_lifts_a_refusal():
    class MyRprop(OPTIM.Rprop):
        pass
    assert prox.scale_problem(MyRprop, {}) is not None
    prox.register_scaling(MyRprop, lambda group, lr, pieces, state, *, foreach: 0.5 * lr)
    assert prox.scale_problem(MyRprop, {}) is None and prox.rule_name(MyRprop) == "MyRprop"
    w = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = MyRprop([{"params": [w], "l1": 1.0}], lr=0.1)
    attach(opt)
    w.grad = torch.ones(3, dtype=F64)
    opt.step()                                  # Rprop: 1 - 0.1·sign(1), then the 0.05 prox
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.85, dtype=F64))


# --------------------------------------------------- optimizers paramwise has no rule for
class Tadam(torch.optim.Optimizer):
    """A third-party-like Adam: its own state key names, its step count as a plain int."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["first_moment"] = 0, torch.zeros_like(p)
                    st["second_moment"] = torch.zeros_like(p)
                st["step"] += 1
                t, m, v = st["step"], st["first_moment"], st["second_moment"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                den = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, den, value=-group["lr"] / (1 - b1 ** t))


class Heavy(torch.optim.Optimizer):
    """Momentum SGD that calls its buffer ``v`` (a velocity: negative entries)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr, "eps": 1e-8})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                v = self.state[p].setdefault("v", torch.zeros_like(p))
                v.mul_(0.5).add_(p.grad)
                p.add_(v, alpha=-group["lr"])


def paramwise_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("paramwise")]


def test_generic_rule_reads_an_adam_clone_and_reaches_the_lasso(data, lasso):
    X, y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = fit(X, y, Tadam, 600, {"l1": ALPHA}, lr=0.05)
    msgs = paramwise_warnings(caught)
    assert len(msgs) == 1 and re.search(
        r"no rule for Tadam; it found an Adam-like second moment v = state\['second_moment'\] "
        r"and uses s = lr/\(√v̂ \+ ε\), v̂ bias-corrected with β₂ = 0.999.*only if its update "
        r"divides by √v̂ as Adam's does.*register_scaling\(Tadam, rule\)", msgs[0])
    assert np.array_equal(w != 0, lasso != 0)
    assert np.abs(w - lasso).max() < 1e-5
    # the same iterates as torch's Adam with its own rule
    torch.testing.assert_close(w, fit(X, y, OPTIM.Adam, 600, {"l1": ALPHA}, lr=0.05),
                               rtol=0, atol=1e-9)


def test_generic_rule_is_the_clones_step_per_unit_of_gradient():
    w = torch.nn.Parameter(torch.randn(7, 3, dtype=F64))
    grad = torch.randn(7, 3, dtype=F64)
    opt = Tadam([w], lr=1e-3)
    for _ in range(400):
        w.grad = grad.clone()
        before = w.detach().clone()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = rule_scale(opt, w)[0]
    torch.testing.assert_close((before - w.detach()) / grad, s, rtol=1e-9, atol=0)
    assert prox.rule_name(Tadam) == "generic" and prox.per_element(Tadam)


def test_no_second_moment_falls_back_to_lr_with_a_true_warning():
    """A velocity named ``v`` is not taken for a second moment (it has negative entries)."""
    w = torch.nn.Parameter(torch.ones(4, dtype=F64))
    opt = Heavy([{"params": [w], "l1": 0.5}], lr=0.1)
    attach(opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            w.grad = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=F64)
            before = w.detach().clone()
            v_before = opt.state[w]["v"].clone() if opt.state[w] else torch.zeros(4, dtype=F64)
            opt.step()
    step = before - 0.1 * (0.5 * v_before + torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=F64))
    torch.testing.assert_close(w.detach(), soft(step, 0.1 * 0.5))
    msgs = paramwise_warnings(caught)
    assert len(msgs) == 1 and re.search(
        r"does not know how Heavy scales its steps and found no Adam-like second moment in its "
        r"state \(exp_avg_sq, .*\), so the proximal threshold is the plain lr·λ\. Its fixed "
        r"points are the regularized problem's only if Heavy moves a weight by lr per unit of "
        r"gradient.*expect fewer exact zeros.*register_scaling\(Heavy, rule\)", msgs[0])


# ------------------------------------------------------------ the compatibility table runs
def test_compat_table_prints_a_row_per_entry(capsys, monkeypatch):
    """benchmarks/compat_table.py (a smoke run: the figures are checked by the lasso tests)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compat_table.py"
    spec = importlib.util.spec_from_file_location("compat_table", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compat_table", mod)   # for its dataclasses
    spec.loader.exec_module(mod)
    mod.main(["--steps", "21", "--rounds", "1", "--only", "nadam,rprop,lbfgs"])
    out = capsys.readouterr().out
    assert re.search(r"\n\| NAdam \| \d+\.\d% \| \d+/40 \(\d+/20 noise\) \| yes \| yes \(1\.00\) "
                     r"\| yes \| NAdam \| \d+\.\d\d× \| \d\.\d{3} \|", out)
    assert re.search(r"\n\| Rprop \(prox=False\) \| 0\.0% .*\| Rprop: refused → prox=False \|",
                     out)
    assert "| LBFGS (one group: l1 only) | refused when built: LBFGS has no step scale" in out
