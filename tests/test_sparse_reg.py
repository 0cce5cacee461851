"""Regularizers on sparse gradients (paramwise.step._sparse): lazy, on the rows the gradient holds,
against hand-built references (torch's own optimizer, then the map on those rows only)."""

from __future__ import annotations

import math

import pytest
import torch

from paramwise.errors import ParamwiseError
from paramwise.step.hooks import attach

F64 = torch.float64
V, D = 12, 4
# batches of looked-up rows, repeats included (an uncoalesced gradient); rows 9-11 never
LOOKUPS = [[0, 2, 2, 5], [1, 2, 7], [0, 8, 8, 8], [3, 5, 6], [2, 4, 7, 1]]


def embedding(seed=0):
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(V, D, sparse=True).to(F64)
    return emb


def loss(emb, t, idx):
    g = torch.Generator().manual_seed(50 + t)
    target = torch.randn(len(idx), D, generator=g, dtype=F64)
    return (emb(torch.tensor(idx)) * target).sum() + 0.5 * (emb(torch.tensor(idx)) ** 2).sum()


def soft(w, t):
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


def sparse_adam_scale(opt, p, rows):
    st, g = opt.state[p], opt.param_groups[0]
    bc2 = 1 - g["betas"][1] ** st["step"]
    return g["lr"] * math.sqrt(bc2) / (st["exp_avg_sq"][rows].sqrt() + g["eps"])


def adagrad_scale(opt, p, rows):
    st, g = opt.state[p], opt.param_groups[0]
    clr = g["lr"] / (1 + (st["step"].item() - 1) * g["lr_decay"])
    return clr / (st["sum"][rows].sqrt() + g["eps"])


def sgd_scale(opt, p, rows):
    return opt.param_groups[0]["lr"]


CASES = [
    (torch.optim.SparseAdam, {"lr": 0.05}, sparse_adam_scale),
    (torch.optim.Adagrad, {"lr": 0.3, "lr_decay": 0.1}, adagrad_scale),
    (torch.optim.SGD, {"lr": 0.1}, sgd_scale),
]


def run_reference(cls, kw, after_step):
    """torch's optimizer alone; ``after_step(opt, w, rows)`` edits the looked-up rows."""
    emb = embedding()
    opt = cls(emb.parameters(), **kw)
    for t, idx in enumerate(LOOKUPS):
        opt.zero_grad()
        loss(emb, t, idx).backward()
        opt.step()
        rows = torch.tensor(sorted(set(idx)))
        with torch.no_grad():
            after_step(opt, emb.weight, rows)
    return emb.weight.detach()


def run_paramwise(cls, kw, opts):
    emb = embedding()
    opt = cls([{"params": [emb.weight], **opts}], **kw)
    attach(opt)
    for t, idx in enumerate(LOOKUPS):
        opt.zero_grad()
        loss(emb, t, idx).backward()
        opt.step()
    return emb.weight.detach()


@pytest.mark.parametrize("cls,kw,scale", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_l1_prox_touches_only_looked_up_rows_with_the_optimizers_own_scale(cls, kw, scale):
    lam = 0.8

    def prox(opt, w, rows):
        w[rows] = soft(w[rows], scale(opt, w, rows) * lam)

    ref = run_reference(cls, kw, prox)
    got = run_paramwise(cls, kw, {"l1": lam})
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert torch.equal(got[9:], embedding().weight.detach()[9:])  # never looked up: untouched
    assert (got[:9] == 0).any()                                    # the map did zero something


def test_group_lasso_and_max_norm_on_rows_lazily():
    lam, c = 0.6, 0.3
    kw = {"lr": 0.1}

    def maps(opt, w, rows):
        r = w[rows]
        n = r.norm(dim=1, keepdim=True)
        r = r * torch.clamp(1 - 0.1 * lam * math.sqrt(D) / n, min=0)   # block soft-threshold
        n = r.norm(dim=1, keepdim=True)
        w[rows] = torch.where(n > c, r * c / n, r)                      # then the projection

    ref = run_reference(torch.optim.SparseAdam, kw, maps)
    got = run_paramwise(torch.optim.SparseAdam, kw,
                        {"group_lasso": lam, "prox_scale": "lr", "max_norm": c})
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)
    init = embedding().weight.detach()
    assert torch.equal(got[9:], init[9:]) and (init[9:].norm(dim=1) > c).all()  # left as is


def test_gradient_terms_and_decay_go_into_the_looked_up_rows():
    l2, l1, decay, lr = 0.3, 0.05, 0.2, 0.1

    emb = embedding()
    opt = torch.optim.SGD(emb.parameters(), lr=lr)
    for t, idx in enumerate(LOOKUPS):
        opt.zero_grad()
        loss(emb, t, idx).backward()
        g = emb.weight.grad.coalesce()
        rows = g._indices()[0]
        with torch.no_grad():
            w = emb.weight[rows]
            vals = g._values() + l2 * w + l1 * torch.sign(w)
            emb.weight[rows] = w * (1 - lr * decay)
        emb.weight.grad = torch.sparse_coo_tensor(g._indices(), vals, g.shape)
        opt.step()
    got = run_paramwise(torch.optim.SGD, {"lr": lr},
                        {"l2": l2, "l1": l1, "prox": False, "decoupled_decay": decay})
    assert torch.allclose(got, emb.weight.detach(), rtol=1e-12, atol=1e-14)
    assert torch.equal(got[9:], embedding().weight.detach()[9:])


def test_elementwise_sparse_gradients_take_l1_per_element():
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=F64))
    before = w.detach().clone()
    opt = torch.optim.SGD([{"params": [w], "l1": 0.5}], lr=0.1)
    attach(opt)
    idx = torch.tensor([[0, 2, 3], [1, 1, 0]])          # sparse along both dims
    w.grad = torch.sparse_coo_tensor(idx, torch.tensor([1.0, -2.0, 0.5], dtype=F64), (4, 3))
    opt.step()
    ref = before - 0.1 * w.grad.to_dense()
    ref[tuple(idx)] = soft(ref[tuple(idx)], 0.05)
    assert torch.allclose(w.detach(), ref, atol=1e-15)


@pytest.mark.parametrize("opts,idx,pattern", [
    ({"group_lasso": 0.1, "group_dim": 1}, None,
     r"param group 1, a parameter of shape \(12, 4\): its gradient is sparse \(along 1 dim\(s\)\)"
     r" and group lasso with group_dim=1 needs rows the gradient may hold only in part.*"
     r"use group_dim=0 with a gradient sparse along dim 0 only"),
    ({"max_norm": 1.0}, [[0, 2], [1, 3]], r"its gradient is sparse \(along 2 dim\(s\)\) and "
     r"max_norm with max_norm_dim=0 needs rows"),
])
@pytest.mark.parametrize("closure", [False, True])
def test_rows_split_by_a_sparse_gradient_are_refused_before_anything_moves(opts, idx, pattern,
                                                                           closure):
    emb = embedding()
    other = torch.nn.Parameter(torch.randn(3, 3, dtype=F64))
    opt = torch.optim.SGD([{"params": [other], "decoupled_decay": 0.1},
                           {"params": [emb.weight], **opts}], lr=0.1, momentum=0.5)
    attach(opt)

    def grads():
        other.grad = torch.ones_like(other)
        if idx is None:
            loss(emb, 0, [1, 2]).backward()
        else:
            emb.weight.grad = torch.sparse_coo_tensor(torch.tensor(idx), torch.ones(2, dtype=F64),
                                                      (V, D))
    if not closure:
        grads()
    before = [emb.weight.detach().clone(), other.detach().clone()]
    with pytest.raises(ParamwiseError, match=pattern):
        opt.step(grads if closure else None)
    assert torch.equal(emb.weight.detach(), before[0]) and torch.equal(other.detach(), before[1])
    assert not opt.state                                  # no momentum buffer was created
