r"""The fused updates of :mod:`paramwise.step.fused.update` in the form ``torch.compile`` wants (Adam,
AdamW, RMSprop, Adagrad; SGD's eager form traces as it is).

While dynamo traces, the eager forms would hurt: cutting tensors into chunks makes one kernel
per chunk where inductor fuses the whole update and the proximal map into one loop anyway, a
step count read with ``.item()`` breaks the graph, and scratch buffers written with ``out=``
would reach the graph as real buffers. So these work on whole tensors with functional ops
(besides the in-place writes of weights and state), keep step counts as tensors, and compute
bias corrections as :math:`e^{t\ln β}` (:func:`paramwise.step._chunks.power`), which inductor
evaluates once per loop. Each computes what its eager twin computes, up to rounding (tested in
``tests/test_compile.py`` against the eager step); the step counts are float32 tensors unless
the default dtype is float64 (as torch makes them), so bias corrections and Adagrad's decayed
lr are rounded to float32 here, as in torch's own compiled step (float64 weights then differ
from the eager step by about 1e-6 relative under Adam). Per parameter, with the optimizer's own
denominator :math:`d` and step-scale number :math:`k` handed to ``apply`` (:math:`s = k/d`;
with ``defer``, :math:`\tilde d = -d/a` and the tail :math:`(u, a)` of the last operation
:math:`w ← w - a\,u/d` instead, as in :func:`paramwise.step.fused.update.update_`):

.. math::
    \text{Adam: } d = \sqrt{\hat v}/\sqrt{1-β_2^t} + ε,\ k = \mathrm{lr};\quad
    \text{RMSprop: } d = \sqrt{v} + ε,\ k = \frac{\mathrm{lr}}{1-μ};\quad
    \text{Adagrad: } d = \sqrt{G} + ε,\ k = \frac{\mathrm{lr}}{1 + (t-1)\,\mathrm{lr\_decay}}

They run eagerly too (the same numbers, without the speed)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.tensor([1.0, -1.0])
    >>> opt = torch.optim.Adagrad([w], lr=0.5)
    >>> with torch.no_grad():
    ...     adagrad(opt.param_groups[0], [w], [opt.state[w]], lambda *a: None, None)
    >>> w.tolist()
    [0.5, 1.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._chunks import Piece, power
from ..regularizers import Tail
from ..scales import decayed_lr, momentum_scale
from .callbacks import Apply, Before

__all__ = ["adam", "rmsprop", "adagrad"]

def _start(params: Sequence[Tensor], before: Before | None) -> tuple[list[Piece], list[Tensor],
                                                               list[Tensor]]:
    """Whole-tensor pieces, weights and gradients, after ``before`` (the gradient terms)."""
    pieces = [Piece(p) for p in params]
    ws, gs = list(params), [p.grad for p in params]
    if before is not None:
        before(pieces, ws, gs)
    return pieces, ws, gs  # type: ignore[return-value]


def _finish(w: Tensor, u: Tensor, d: Tensor, a: Any, defer: bool, ds: list[Tensor],
            tails: list[Tail]) -> None:
    r"""The update's last operation :math:`w ← w - a\,u/d`, or with ``defer`` its
    :data:`~paramwise.step.regularizers.Tail` and :math:`\tilde d = -d/a` for ``apply`` (one division per
    element less in the fused kernel: the proximal map divides once)."""
    if defer:
        ds.append(d * (-1 / a))
        tails.append((u, a))
    else:
        w.sub_(u / d * a)
        ds.append(d)


def _grad(g: Tensor, w: Tensor, group: dict[str, Any], wd: float) -> Tensor:
    if group["maximize"]:
        g = -g
    return g.add(w, alpha=wd) if wd != 0 else g


def adam(group: dict[str, Any], params: Sequence[Tensor], states: Sequence[dict],
         apply: Apply, before: Before | None, defer: bool = False) -> None:
    """``Adam.step`` / ``AdamW.step`` (coupled or decoupled ``weight_decay``, amsgrad);
    ``defer``: hand the last operation to ``apply`` as in :func:`paramwise.step.fused.update.update_`."""
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    beta1, beta2 = (float(b) for b in group["betas"])
    decoupled = bool(group.get("decoupled_weight_decay", False))
    pieces, ws, gs = _start(params, before)
    ds: list[Tensor] = []
    tails: list[Tail] = []
    for w, g, st in zip(ws, gs, states):
        st["step"] += 1
        t = st["step"]
        if decoupled and wd != 0:
            w.mul_(1 - lr * wd)
        g = _grad(g, w, group, 0.0 if decoupled else wd)
        st["exp_avg"].lerp_(g, 1 - beta1)
        st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        src = st["exp_avg_sq"]
        if group["amsgrad"]:
            src = st["max_exp_avg_sq"]
            torch.maximum(src, st["exp_avg_sq"], out=src)
        bc1, bc2 = 1 - power(beta1, t), 1 - power(beta2, t)
        d = src.sqrt() / bc2.sqrt() + eps     # type: ignore[union-attr]
        _finish(w, st["exp_avg"], d, lr / bc1, defer, ds, tails)
    apply(pieces, ws, ds, [], [lr] * len(ds), tails)


def rmsprop(group: dict[str, Any], params: Sequence[Tensor], states: Sequence[dict],
            apply: Apply, before: Before | None, defer: bool = False) -> None:
    """``RMSprop.step`` (momentum, centered); ``defer`` as in :func:`adam` (without momentum
    only)."""
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    alpha, mu = float(group["alpha"]), float(group["momentum"])
    pieces, ws, gs = _start(params, before)
    ds: list[Tensor] = []
    tails: list[Tail] = []
    for w, g, st in zip(ws, gs, states):
        st["step"] += 1
        g = _grad(g, w, group, wd)
        st["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if group["centered"]:
            st["grad_avg"].lerp_(g, 1 - alpha)
            d = st["square_avg"].addcmul(st["grad_avg"], st["grad_avg"], value=-1).sqrt() + eps
        else:
            d = st["square_avg"].sqrt() + eps
        if mu > 0:
            st["momentum_buffer"].mul_(mu).addcdiv_(g, d)
            w.sub_(st["momentum_buffer"] * lr)
            ds.append(d)
        else:
            _finish(w, g, d, lr, defer, ds, tails)
    apply(pieces, ws, ds, [], [momentum_scale(lr, mu)] * len(ds), tails)


def adagrad(group: dict[str, Any], params: Sequence[Tensor], states: Sequence[dict],
            apply: Apply, before: Before | None, defer: bool = False) -> None:
    """``Adagrad.step`` (dense gradients; ``lr_decay`` with the step count a tensor);
    ``defer`` as in :func:`adam`."""
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    decay = float(group["lr_decay"])
    pieces, ws, gs = _start(params, before)
    ds: list[Tensor] = []
    ks: list[Any] = []
    tails: list[Tail] = []
    for w, g, st in zip(ws, gs, states):
        st["step"] += 1
        clr = decayed_lr(lr, st["step"], decay)
        g = _grad(g, w, group, wd)
        st["sum"].addcmul_(g, g, value=1)
        d = st["sum"].sqrt() + eps
        _finish(w, g, d, clr, defer, ds, tails)
        ks.append(clr)
    apply(pieces, ws, ds, [], ks, tails)
