"""Regularized training reaches the solutions of independent solvers (scikit-learn, KKT)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from _lasso import ALPHA, D, N
from paramwise.step.hooks import attach

sklearn = pytest.importorskip("sklearn.linear_model")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _flush_denormals():
    # Adam's second moments decay into denormals once gradients vanish; on CPU those are
    # ~100x slower. Flushing them changes nothing at the 1e-5 level tested here.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def fit(X, y, cls, steps, options, bias=None, **kw):
    """Full-batch training on (1/2n)‖y - Xw - b‖² with ``options`` in w's group."""
    w = torch.nn.Parameter(torch.zeros(X.shape[1], dtype=F64))
    groups = [{"params": [w], **options}]
    if bias is not None:
        b = torch.nn.Parameter(torch.zeros((), dtype=F64))
        groups.append({"params": [b], **bias})
    opt = cls(groups, **kw)
    attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        pred = X @ w + (b if bias is not None else 0)
        loss = ((y - pred) ** 2).sum() / (2 * len(y))
        loss.backward()
        opt.step()
    return (w.detach().numpy(), float(b.detach()) if bias is not None else None)


def lipschitz(X):
    return float(torch.linalg.eigvalsh(X.T @ X / len(X)).max())




@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "adam", "adagrad", "nadam", "radam",
                                  "adamax", "rmsprop", "adafactor"])
def test_proximal_l1_reaches_sklearn_lasso(data, lasso, name):
    # each with its own step scale (paramwise.step.prox); the plain lr·λ threshold this replaced
    # left NAdam 1, RAdam 3 and Adafactor 50 zeros of sklearn's 42 (tests/test_scales.py has
    # ASGD, Rprop and a third-party-like optimizer)
    X, y = data
    L = lipschitz(X)
    cls, steps, kw = {
        "sgd": (torch.optim.SGD, 600, {"lr": 1 / L}),
        "sgd-momentum": (torch.optim.SGD, 600, {"lr": 0.5 / L, "momentum": 0.9}),
        "adam": (torch.optim.Adam, 2000, {"lr": 1e-2}),
        "adagrad": (torch.optim.Adagrad, 2000, {"lr": 0.5}),
        "nadam": (torch.optim.NAdam, 400, {"lr": 0.1}),
        "radam": (torch.optim.RAdam, 500, {"lr": 0.1}),       # ρ_t ≤ 5 (SGD-like) until step 6
        "adamax": (torch.optim.Adamax, 400, {"lr": 0.1}),
        "rmsprop": (torch.optim.RMSprop, 400, {"lr": 0.03}),
        "adafactor": (torch.optim.Adafactor, 500, {"lr": 0.3}),  # steps relative to RMS(w)
    }[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # a rule of its own, no fallback
        w, _ = fit(X, y, cls, steps, {"l1": ALPHA}, **kw)
    assert 0 < (lasso != 0).sum() < D
    hit = ((w != 0) & (lasso != 0)).sum()
    assert 2 * hit / ((w != 0).sum() + (lasso != 0).sum()) >= 0.95       # F1 of the support
    assert np.array_equal(w != 0, lasso != 0), "support differs from sklearn's"
    assert np.abs(w - lasso).max() < 1e-5


def test_subgradient_l1_reaches_no_exact_zeros(data, lasso):
    X, y = data
    w, _ = fit(X, y, torch.optim.SGD, 600, {"l1": ALPHA, "prox": False}, lr=1 / lipschitz(X))
    assert (w == 0).sum() == 0                       # close to the lasso, but never exactly 0
    assert np.abs(w - lasso).max() < 0.2


def test_adam_with_a_plain_lr_threshold_gives_almost_no_zeros(data, lasso):
    X, y = data
    w, _ = fit(X, y, torch.optim.Adam, 2000, {"l1": ALPHA, "prox_scale": "lr"}, lr=1e-2)
    assert (w == 0).sum() < (lasso == 0).sum() // 4


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_elastic_net_reaches_sklearn_elasticnet(data, name):
    X, y = data
    alpha, ratio = 0.2, 0.6
    ref = sklearn.ElasticNet(alpha=alpha, l1_ratio=ratio, fit_intercept=False, tol=1e-14,
                             max_iter=100_000).fit(X.numpy(), y.numpy()).coef_
    opts = {"l1": alpha * ratio, "l2": alpha * (1 - ratio)}
    if name == "sgd":
        w, _ = fit(X, y, torch.optim.SGD, 600, opts, lr=1 / lipschitz(X))
    else:
        w, _ = fit(X, y, torch.optim.Adam, 2000, opts, lr=1e-2)
    assert 0 < (ref == 0).sum() < D
    assert np.array_equal(w != 0, ref != 0)
    assert np.abs(w - ref).max() < 1e-5


def test_ridge_intercept_excluded_vs_included(data):
    """Decaying the bias pulls it to ȳ/(1+λ): the exact form of "decaying biases underfits"."""
    X, y = data
    Xc = X - X.mean(0)
    yc = y + 3.0                                     # a clear intercept
    lam = 0.5
    ref = sklearn.Ridge(alpha=N * lam, fit_intercept=True, tol=1e-14).fit(Xc.numpy(), yc.numpy())
    lr = 1 / (lipschitz(Xc) + lam + 1)
    w, b = fit(Xc, yc, torch.optim.SGD, 800, {"l2": lam}, bias={}, lr=lr)
    ybar = float(yc.mean())
    assert b == pytest.approx(ybar, abs=1e-10)
    assert b == pytest.approx(ref.intercept_, abs=1e-10)
    assert np.abs(w - ref.coef_).max() < 1e-10
    w2, b2 = fit(Xc, yc, torch.optim.SGD, 800, {"l2": lam}, bias={"l2": lam}, lr=lr)
    assert b2 == pytest.approx(ybar / (1 + lam), abs=1e-10)
    assert np.abs(w2 - ref.coef_).max() < 1e-10      # centred X: the weights don't care


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_group_lasso_reaches_its_kkt_point(name):
    """W (3 outputs × 20 inputs), groups = input columns: whole features are dropped."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 20, generator=g, dtype=F64)
    Wt = torch.zeros(3, 20, dtype=F64)
    Wt[:, :5] = torch.randn(3, 5, generator=g, dtype=F64)
    Y = X @ Wt.T + 0.3 * torch.randn(N, 3, generator=g, dtype=F64)
    lam = 0.05
    W = torch.nn.Parameter(torch.zeros(3, 20, dtype=F64))
    cls, steps, kw = ((torch.optim.SGD, 1500, {"lr": 1 / lipschitz(X)}) if name == "sgd"
                      else (torch.optim.Adam, 3000, {"lr": 1e-2}))
    opt = cls([{"params": [W], "group_lasso": lam, "group_dim": 1}], **kw)
    attach(opt)

    def loss_fn():
        return ((Y - X @ W.T) ** 2).sum() / (2 * N)

    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    G, = torch.autograd.grad(loss_fn(), [W])
    tau = lam * math.sqrt(3)
    zero = (W == 0).all(dim=0)
    assert 0 < zero.sum() < 20 and zero[5:].sum() >= 10
    assert (G[:, zero].norm(dim=0) <= tau * (1 + 1e-9)).all()
    Wn = W.detach()[:, ~zero]
    kkt = G[:, ~zero] + tau * Wn / Wn.norm(dim=0)
    assert kkt.abs().max() < 1e-7
