r"""Regularizers as pure math on lists of tensors: penalty, gradient term, proximal map, projection.

This module knows nothing of rules or optimizers (:mod:`paramwise.step.hooks` wires it to a step;
:mod:`paramwise.options.regularization` holds the keys and checks which values are valid). In
the formulas, :math:`w` is a parameter, :math:`g` its gradient, :math:`s` a step scale (a number,
or one per element), :math:`w_r` one group of :math:`w` (a row / channel: a slice along
``group_dim``) and :math:`m = |w_r|` the number of elements in a group.

=================== ===================================== =========================================
option              penalty                               gradient term / map
=================== ===================================== =========================================
``l2=λ``            :math:`\tfrac{λ}{2}\|w\|^2`            :math:`g \mathrel{+}= λ w`
``l1=λ``            :math:`λ\|w\|_1`                       prox: :math:`w ← \operatorname{sign}(w)\max(|w|-sλ, 0)`;
                                                          ``prox=False``: :math:`g \mathrel{+}= λ\operatorname{sign}(w)`
``l1`` + ``l2``     elastic net, sum of both               prox: soft-threshold, then :math:`÷ (1 + sλ_2)`
``group_lasso=λ``   :math:`λ\sum_r \sqrt{m}\,\|w_r\|`      prox: :math:`w_r ← w_r\max(0, 1 - sλ\sqrt m/\|w_r\|)`;
                                                          ``prox=False``: :math:`g_r \mathrel{+}= λ\sqrt m\, w_r/\|w_r\|`
``max_norm=c``      constraint :math:`\|w_r\| ≤ c`          :math:`w_r ← w_r \min(1, c/\|w_r\|)`
``decoupled_decay`` none (not a gradient)                  :math:`w ← (1 - \mathrm{lr}\,λ)\, w`
``l2_to_init=λ``    :math:`\tfrac{λ}{2}\|w - w_0\|^2`       :math:`g \mathrel{+}= λ (w - w_0)`
=================== ===================================== =========================================

**How l2 relates to other conventions.** ``l2=λ`` adds :math:`λw` to the gradient, the gradient of
:math:`\tfrac{λ}{2}\|w\|^2` — the same as torch's ``weight_decay=λ``. With a mean-squared loss
:math:`\tfrac{1}{2n}\|y - Xw\|^2` that is ridge regression with scikit-learn's ``alpha = n·λ``
(scikit-learn minimises :math:`\|y - Xw\|^2 + α\|w\|^2`); with the summed loss :math:`\|y-ŷ\|^2 +
λ'\|W\|^2` use ``l2 = 2λ'``; Keras' ``regularizers.L2(k)`` adds :math:`k\|w\|^2`, so ``l2 = 2k``.
``l1`` and ``group_lasso`` are the penalties themselves (no factor ½): scikit-learn's
``Lasso(alpha=a)`` with the mean-squared loss above is ``l1=a``; ``ElasticNet(alpha=a,
l1_ratio=r)`` is ``l1=a·r, l2=a·(1-r)``.

**Non-finite values.** No map here spreads a NaN or inf to finite elements: elementwise maps
touch only the element itself; row maps (group lasso, max-norm) leave a row whose norm is not
finite unchanged instead of scaling the whole row by NaN.

In-place functions take ``foreach``: ``True`` runs ``torch._foreach_*`` multi-tensor kernels (the
fast path on accelerators), ``False`` a plain per-tensor loop (CPU, DTensor); both give the same
numbers. Example::

    >>> import torch
    >>> w = [torch.tensor([0.5, 0.05, -2.0])]
    >>> prox_l1_(w, 0.1, 1.0)      # soft-threshold at s·λ = 0.1
    >>> w[0]
    tensor([ 0.4000,  0.0000, -1.9000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..options.regularization import (
    PROX_SCALES,
    REG_KEYS,
    STRENGTH_KEYS,
    check_options,
    check_values,
)
from ._chunks import is_dtensor, plain
from ._rows import (
    assign_,
    group_norms,
    group_size,
    majorized_group_prox_,
    majorized_group_prox_scaled_,
    metric_group_prox_,
    mul_,
)

__all__ = [
    "REG_KEYS", "STRENGTH_KEYS", "PROX_SCALES", "check_options", "check_values",
    "group_norms", "group_size",
    "l2_penalty", "l1_penalty", "group_lasso_penalty", "l2_to_init_penalty",
    "add_l2_grad_", "add_l1_grad_", "add_group_lasso_grad_", "add_l2_to_init_grad_", "decay_",
    "soft_threshold_", "prox_l1_", "prox_l1_scaled_", "prox_group_lasso_",
    "prox_group_lasso_scaled_", "project_max_norm_",
]

Scale = float | Sequence[Tensor]
#: An optimizer's last operation :math:`w ← w - a\,u/d`, not yet applied, as ``(u, a)`` (``a``
#: a 0-d tensor while ``torch.compile`` traces Adam's or Adagrad's step).
Tail = tuple[Tensor, "float | Tensor"]


def _total(terms: list[Tensor]) -> Tensor:
    # DTensor terms are reduced to their global value first (a sum of partial norms is not one)
    return torch.stack([plain(t) for t in terms]).sum() if terms else torch.zeros(())


# ---------------------------------------------------------------------------------- penalties
def l2_penalty(params: Sequence[Tensor], lam: float) -> Tensor:
    r""":math:`\tfrac{λ}{2}\sum \|w\|^2` (differentiable; its gradient is :func:`add_l2_grad_`'s)."""
    return _total([w.square().sum() for w in params]) * (lam / 2)


def l1_penalty(params: Sequence[Tensor], lam: float) -> Tensor:
    r""":math:`λ\sum \|w\|_1` (differentiable)."""
    return _total([w.abs().sum() for w in params]) * lam


def group_lasso_penalty(params: Sequence[Tensor], lam: float, dims: Sequence[int]) -> Tensor:
    r""":math:`λ\sum_r \sqrt{m}\,\|w_r\|` over the groups along ``dims[i]`` (differentiable)."""
    return _total([plain(group_norms(w, d)).sum() * math.sqrt(group_size(w, d))
                   for w, d in zip(params, dims)]) * lam


def l2_to_init_penalty(params: Sequence[Tensor], anchors: Sequence[Tensor], lam: float) -> Tensor:
    r""":math:`\tfrac{λ}{2}\sum \|w - w_0\|^2` (L2-SP; differentiable)."""
    return _total([(w - a).square().sum() for w, a in zip(params, anchors)]) * (lam / 2)


# ----------------------------------------------------------------------------- gradient terms
def add_l2_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], lam: float, *,
                 foreach: bool = False) -> None:
    r""":math:`g ← g + λw`, the gradient of :math:`\tfrac{λ}{2}\|w\|^2`."""
    if foreach:
        torch._foreach_add_(grads, params, alpha=lam)
    else:
        for g, w in zip(grads, params):
            g.add_(w, alpha=lam)


def add_l1_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], lam: float, *,
                 foreach: bool = False) -> None:
    r""":math:`g ← g + λ\operatorname{sign}(w)`, the subgradient of :math:`λ\|w\|_1` (0 at 0,
    and at NaN, as ``torch.sign``). While ``torch.compile`` traces, the term is written as
    ``where(|w| > 0, copysign(|λ|, w), 0)`` added with the sign of λ (negative under
    ``maximize``), the same numbers: inductor's CPU code for ``sign`` (two compares and two
    blends) made a fused Adagrad step 1.8x slower, this form 1.2x."""
    if foreach:
        torch._foreach_add_(grads, torch._foreach_sign(params), alpha=lam)
    elif torch.compiler.is_compiling():
        for g, w in zip(grads, params):
            term = torch.where(w.abs() > 0, torch.copysign(torch.full_like(w, abs(lam)), w), 0.0)
            g.add_(term, alpha=1.0 if lam >= 0 else -1.0)
    else:
        for g, w in zip(grads, params):
            g.add_(w.sign(), alpha=lam)


def add_group_lasso_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], lam: float,
                          dims: Sequence[int]) -> None:
    r""":math:`g_r ← g_r + λ\sqrt m\, w_r/\|w_r\|`; rows with zero or non-finite norm get 0."""
    for g, w, d in zip(grads, params, dims):
        n = group_norms(w, d)
        f = torch.where((n > 0) & torch.isfinite(n), (lam * math.sqrt(group_size(w, d))) / n, 0.0)
        if is_dtensor(g):
            assign_(g, g + w * f)
        else:
            g.addcmul_(w, f.to(g.dtype))


def add_l2_to_init_grad_(grads: Sequence[Tensor], params: Sequence[Tensor],
                         anchors: Sequence[Tensor], lam: float, *, foreach: bool = False) -> None:
    r""":math:`g ← g + λ(w - w_0)`, the gradient of :math:`\tfrac{λ}{2}\|w - w_0\|^2`."""
    if foreach:
        torch._foreach_add_(grads, params, alpha=lam)
        torch._foreach_add_(grads, anchors, alpha=-lam)
    else:
        for g, w, a in zip(grads, params, anchors):
            g.add_(w, alpha=lam).add_(a, alpha=-lam)


def decay_(params: Sequence[Tensor], factor: float, *, foreach: bool = False) -> None:
    r""":math:`w ← f\,w`; decoupled decay uses :math:`f = 1 - \mathrm{lr}\,λ`, as AdamW does."""
    if foreach:
        torch._foreach_mul_(params, factor)
    else:
        for w in params:
            w.mul_(factor)


# ----------------------------------------------------------------------------- proximal maps
def soft_threshold_(params: Sequence[Tensor], t: Scale, *, foreach: bool = False) -> None:
    r"""Soft-threshold in place, :math:`w ← \operatorname{sign}(w)\max(|w| - t, 0)`.

    ``t`` is one number or one tensor per parameter (per-element thresholds), computed as
    :math:`w - \operatorname{clamp}(w, -t, t)` so elements with :math:`|w| ≤ t` become exact zeros.
    """
    if not params:
        return
    if isinstance(t, (int, float)):
        t = float(t)
        if foreach:
            c = torch._foreach_clamp_min(params, -t)
            torch._foreach_clamp_max_(c, t)
            torch._foreach_sub_(params, c)
        else:
            for w in params:
                if is_dtensor(w):
                    w.sub_(w.clamp(-t, t))
                else:
                    torch.ops.aten.softshrink.out(w, t, out=w)
    elif foreach:
        nt = torch._foreach_neg(t)
        torch._foreach_maximum_(nt, params)
        torch._foreach_minimum_(nt, t)
        torch._foreach_sub_(params, nt)
    else:
        for w, ti in zip(params, t):
            nt = torch.neg(ti)
            w.sub_(torch.clamp(w, nt, ti, out=nt))


def prox_l1_(params: Sequence[Tensor], scale: Scale, lam: float, l2: float = 0.0, *,
             foreach: bool = False) -> None:
    r"""Proximal map of :math:`s(λ\|w\|_1 + \tfrac{λ_2}{2}\|w\|^2)`, in place.

    .. math:: w ← \frac{\operatorname{sign}(w)\max(|w| - sλ, 0)}{1 + sλ_2}

    (:func:`soft_threshold_` at :math:`sλ`, so elements inside the threshold become exact zeros).
    ``scale`` is one number :math:`s` or one tensor per parameter (a per-element :math:`s`, e.g.
    Adam's :math:`\mathrm{lr}/(\sqrt{\hat v}+ε)`). With ``l2 = 0`` this is the lasso prox; with
    ``l2 > 0`` the elastic-net prox: the l2 part is folded in here instead of being added to the
    gradient.
    """
    if not params:
        return
    scalar = isinstance(scale, (int, float))
    if lam > 0:
        if scalar:
            soft_threshold_(params, float(scale) * lam, foreach=foreach)
        elif foreach:
            soft_threshold_(params, torch._foreach_mul(scale, lam), foreach=True)
        else:
            soft_threshold_(params, [s * lam for s in scale])
    if l2 > 0:
        if scalar:
            _div_scalar_(params, 1.0 + float(scale) * l2, foreach)
        elif foreach:
            f = torch._foreach_mul(scale, l2)
            torch._foreach_add_(f, 1.0)
            torch._foreach_div_(params, f)
        else:
            for w, s in zip(params, scale):
                w.div_(s * l2 + 1.0)


def prox_l1_scaled_(params: Sequence[Tensor], dens: Sequence[Tensor], ks: Sequence[float],
                    lam: float, l2: float, scratch: Sequence[Tensor],
                    tails: Sequence[Tail] = ()) -> None:
    r""":func:`prox_l1_` with a per-element scale given as :math:`s = k/d` (one number :math:`k`
    and one tensor :math:`d > 0` per parameter), in place, on plain tensors.

    Soft-thresholding commutes with positive scaling, :math:`S(w, t)\,d = S(wd, td)`, and
    :math:`td = kλ` is one number, so

    .. math:: w ← \frac{S(w d,\ kλ)}{d + kλ_2}
              = \frac{\operatorname{sign}(w)\max(|w| - sλ, 0)}{1 + sλ_2}

    in four passes, three of them over chunk-sized ``scratch`` (shaped like the parameters):
    :math:`x = wd`, :math:`x ← x - \operatorname{clamp}(x, -kλ, kλ)` (one ``softshrink``,
    exact zeros where :math:`|w| d ≤ kλ`), then :math:`w = x/(d + kλ_2)`; the threshold
    :math:`sλ` is never formed. ``dens`` is overwritten when ``l2 > 0``. Surviving elements
    differ from :func:`prox_l1_` by rounding only. An element whose :math:`d` is not finite
    (its optimizer state overflowed) becomes NaN.

    ``tails``: per parameter the optimizer's last operation :math:`w ← w - a\,u/d` (:math:`a >
    0`), not yet applied, and ``dens`` holding :math:`\tilde d = -d/a` instead of :math:`d`.
    The map takes the update in with a pass less (three instead of four): :math:`y = u +
    w\tilde d` (one ``addcmul``; the updated :math:`wd` is :math:`-ay`), and :math:`S(-ay, kλ)
    = -a\,S(y, kλ/a)`, so

    .. math:: w ← \frac{-a\, S(y,\ kλ/a)}{d + kλ_2} = \frac{S(y,\ kλ/a)}{\tilde d - kλ_2/a}

    (one ``softshrink``, one division): the update followed by the map, up to rounding (its zeros
    come out as ``-0.0``, the division being by a negative number). Without
    ``scratch`` (while ``torch.compile`` traces; ``tails`` required) the same map in functional
    ops on whole tensors, the threshold as :math:`y - \operatorname{clamp}(y, -t, t)`, for
    inductor to fuse with the update.
    """
    if not scratch and params:
        if not tails:
            raise ValueError("prox_l1_scaled_ needs scratch tensors (or tails, while tracing)")
        for w, d, k, (u, a) in zip(params, dens, ks, tails):
            y = torch.addcmul(u, w, d)
            if lam > 0:
                t = k * lam / a
                y = y - y.clamp(-t, t)
            w.copy_(y / (d - k * l2 / a) if l2 > 0 else y / d)
        return
    for i, (w, d, k, x) in enumerate(zip(params, dens, ks, scratch)):
        a = tails[i][1] if tails else 1.0
        if tails:
            torch.addcmul(tails[i][0], w, d, out=x)
        else:
            torch.mul(w, d, out=x)
        if lam > 0:
            torch.ops.aten.softshrink.out(x, k * lam / a, out=x)
        if l2 > 0:
            d.add_(-k * l2 / a if tails else k * l2)
        torch.div(x, d, out=w)


def _div_scalar_(params: Sequence[Tensor], d: float, foreach: bool) -> None:
    if foreach:
        torch._foreach_div_(params, d)
    else:
        for w in params:
            w.div_(d)


def prox_group_lasso_(params: Sequence[Tensor], scale: Scale, lam: float, dims: Sequence[int],
                      l2: float = 0.0, *, newton_steps: int = 10,
                      rho: Sequence[Tensor | None] | None = None) -> None:
    r"""Proximal map of :math:`s(λ\sum_r\sqrt m\|w_r\| + \tfrac{λ_2}{2}\|w\|^2)`, in place.

    With one number :math:`s` (block soft-threshold, zero-norm safe, :math:`τ = λ\sqrt m`):

    .. math:: w_r ← \frac{w_r}{1 + sλ_2}\max\Big(0,\ 1 - \frac{sτ}{\|w_r\|}\Big)

    With a per-element :math:`s` the prox is taken in the metric :math:`\operatorname{diag}(1/s)`,
    the optimizer's own: a row is zero iff :math:`\|w_r / s\| ≤ τ`, else
    :math:`w_i ← w_i\, v / ((1 + s_iλ_2) v + s_i)` where :math:`v > 0` solves
    :math:`\|w_r / ((1 + sλ_2)v + s)\| = τ`. Newton's method on the concave increasing
    :math:`H(v) = \|w_r/((1+sλ_2)v+s)\|^{-1}` from :math:`v = 0` approaches the root from below
    (exact in one step when :math:`s` is constant over the row; 4–5 steps to full precision for
    Adam-like spreads of :math:`s`); it stops when every row's relative change is below
    :math:`\sqrt{ε_\text{dtype}}` or after ``newton_steps``. Rows with a non-finite norm are left
    unchanged. For sparse group lasso apply :func:`prox_l1_` (without ``l2``) first.

    ``rho`` (per-element :math:`s` only): for each parameter the inverse row norms
    :math:`1/n_r` *before* the optimizer's step (:func:`paramwise.step._rows.inverse_radius`,
    keepdim-shaped). Then the nonzero rows take one closed-form majorize-minimize step instead
    of Newton's method, :math:`w_i ← w_i\,n/((1 + s_iλ_2)n + s_iτ)` — equal to the exact
    metric prox at every fixed point of step + prox, so the iteration still reaches the group
    lasso's KKT points (:func:`paramwise.step._rows.majorized_group_prox_` has the derivation). The
    zero test stays exact. This is what the step hooks use.
    """
    for i, w in enumerate(params):
        d = dims[i]
        tau = lam * math.sqrt(group_size(w, d))
        if isinstance(scale, (int, float)):
            s = float(scale)
            n = group_norms(w, d)
            f = torch.where(n > s * tau, 1.0 - (s * tau) / n, 0.0) if lam > 0 else torch.ones_like(n)
            if l2 > 0:
                f = f / (1.0 + s * l2)
            mul_(w, torch.where(torch.isfinite(n), f, 1.0))
        elif lam <= 0:
            if l2 > 0:
                w.div_(scale[i] * l2 + 1.0)
        elif rho is not None and rho[i] is not None:
            majorized_group_prox_(w, scale[i], tau, l2, d, rho[i])
        else:
            metric_group_prox_(w, scale[i], tau, l2, d, newton_steps)


def prox_group_lasso_scaled_(params: Sequence[Tensor], dens: Sequence[Tensor],
                             ks: Sequence[float], lam: float, dims: Sequence[int], l2: float,
                             rho: Sequence[Tensor], scratch: Sequence[Tensor],
                             wake: Sequence[bool] | None = None,
                             tails: Sequence[Tail] = ()) -> None:
    r""":func:`prox_group_lasso_` with ``rho`` and a per-element scale given as :math:`s = k/d`
    (see :func:`prox_l1_scaled_`), in place, on plain tensors: row :math:`r` is zeroed iff
    :math:`\|w_r d_r\| ≤ kτ`, else

    .. math:: w_i ← w_i\,\frac{d_i}{d_i + kλ_2 + kτ/n_r}
              = \frac{w_i\, n_r}{(1 + s_iλ_2)\,n_r + s_iτ},

    :math:`τ = λ\sqrt m`, :math:`n_r = 1/ρ_r` the row's norm before the step. ``scratch`` is
    overwritten, and so is ``dens``. ``wake[i] = False`` promises ``rho[i]`` has
    no ``inf`` (no row was 0 before the step). ``tails``: the optimizer's last operation, not
    yet applied, with :math:`\tilde d = -d/a` in ``dens``, as in :func:`prox_l1_scaled_`.
    """
    if lam <= 0:
        prox_l1_scaled_(params, dens, ks, 0.0, l2, scratch, tails)
        return
    for i, (w, d, k, dim, r, x) in enumerate(zip(params, dens, ks, dims, rho, scratch)):
        tau = lam * math.sqrt(group_size(w, dim))
        majorized_group_prox_scaled_(w, d, k, tau, l2, dim, r, x,
                                     True if wake is None else wake[i],
                                     tails[i] if tails else None)


def project_max_norm_(params: Sequence[Tensor], c: float, dims: Sequence[int]) -> None:
    r"""Projection of every row onto the ball of radius :math:`c`, in place.

    .. math:: w_r ← w_r \min\Big(1, \frac{c}{\|w_r\|}\Big)

    Idempotent up to rounding (a projected row has norm :math:`c`). Rows with a non-finite norm
    are left unchanged. On CPU a tensor with no row outside the ball is not written at all (one
    read: the row norms); elsewhere the multiply always runs, so no device sync is needed.
    """
    for w, d in zip(params, dims):
        n = group_norms(w, d)
        if w.device.type == "cpu" and not is_dtensor(w) and not torch.compiler.is_compiling() \
                and not bool((n > c).any()):     # (NaN > c is False; inf is left out below)
            continue
        mul_(w, torch.where((n > c) & torch.isfinite(n), c / n, 1.0))
