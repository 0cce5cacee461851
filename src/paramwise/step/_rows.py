r"""Row-wise (group) math shared by the group regularizers: a *group* of a tensor is one slice
along ``dim`` (a row, an output channel), :math:`m` its number of elements.

Works on plain tensors and on DTensors alike (a DTensor's group norm across shards is reduced by
DTensor itself; in-place updates are redistributed to the parameter's own placement)::

    >>> import torch
    >>> group_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 0).flatten().tolist()
    [5.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._chunks import is_dtensor

__all__ = ["group_size", "group_norms", "sum_groups", "rowdot", "mul_", "assign_",
           "metric_group_prox_", "inverse_radius", "any_zero_row", "majorized_group_prox_",
           "majorized_group_prox_scaled_"]


def group_size(w: Tensor, dim: int) -> int:
    """:math:`m`, the number of elements in one group (slice along ``dim``) of ``w``."""
    return w.numel() // w.shape[dim] if w.ndim else 1


def group_norms(w: Tensor, dim: int) -> Tensor:
    r""":math:`\|w_r\|` for every slice :math:`w_r` along ``dim``, shaped to broadcast against ``w``
    (size 1 in every other dim). For a 1-d ``w`` every element is a group: :math:`|w_i|`."""
    other = [i for i in range(w.ndim) if i != dim % max(w.ndim, 1)]
    if not other:
        return w.abs()
    return torch.linalg.vector_norm(w, dim=other, keepdim=True)


def sum_groups(x: Tensor, dim: int) -> Tensor:
    r""":math:`\sum_{i∈r} x_i` for every group :math:`r` along ``dim`` (keepdim-shaped)."""
    other = [i for i in range(x.ndim) if i != dim % max(x.ndim, 1)]
    return x.sum(dim=other, keepdim=True) if other else x


def mul_(w: Tensor, f: Tensor) -> None:
    """``w *= f`` (``f`` broadcast). A DTensor's in-place ops cannot change its placement, and
    a row factor reduced across shards has another one: multiply out of place, redistribute
    the product like ``w``, copy back."""
    if is_dtensor(w):
        assign_(w, w * f)
    else:
        w.mul_(f)


def assign_(w: Tensor, x: Tensor) -> None:
    """``w ← x`` for DTensors whose placements may differ."""
    w.copy_(x.redistribute(w.device_mesh, w.placements))


def rowdot(a: Tensor, b: Tensor, dim: int) -> Tensor:
    r""":math:`\sum_{i∈r} a_i b_i` for every group :math:`r` along ``dim`` (keepdim-shaped)."""
    if dim == 0 and a.is_contiguous() and b.is_contiguous() and not is_dtensor(a):
        rows = a.shape[0]
        r = torch.linalg.vecdot(a.reshape(rows, -1), b.reshape(rows, -1), dim=1)
        return r.reshape((rows,) + (1,) * (a.ndim - 1))
    return sum_groups(a * b, dim)


def metric_group_prox_(w: Tensor, s: Tensor, tau: float, l2: float, dim: int,
                        steps: int) -> None:
    r"""Group-lasso prox of ``w`` in the metric :math:`\operatorname{diag}(1/s)`, in place.

    Row :math:`r` becomes 0 iff :math:`\|w_r/s_r\| ≤ τ`, else
    :math:`w_i ← w_i v/((1 + s_iλ_2)v + s_i)` with :math:`v` from Newton's method on
    :math:`\|w_r/((1+sλ_2)v + s)\|^{-1} = 1/τ` (see
    :func:`paramwise.step.regularizers.prox_group_lasso_`). At most ``steps`` steps; stops early
    when every row's relative change is below :math:`\sqrt{ε}` (not under ``torch.compile``).
    """
    y2 = w.square()
    a = s * l2 + 1.0 if l2 > 0 else None
    norms = group_norms(w, dim)
    ok = torch.isfinite(norms)
    tol = math.sqrt(torch.finfo(w.dtype).eps)
    v = torch.zeros_like(norms)
    zero = active = None
    compiling = torch.compiler.is_compiling()   # no data-dependent early exit in a graph
    for k in range(steps):
        c = (torch.addcmul(s, a, v) if a is not None else s + v).reciprocal_()   # 1/c
        u = y2 * c                                                               # y²/c
        big_s = rowdot(u, c, dim)                                               # Σ y²/c²
        if zero is None:
            zero = big_s <= tau * tau          # ‖y/s‖ ≤ τ: the whole row goes to zero
            active = ok & ~zero
            if not compiling and not bool(active.any()):
                break
        if a is not None:
            u.mul_(a)
        dsum = rowdot(u, c.square_(), dim)                                      # Σ a y²/c³
        h = big_s.rsqrt()
        dv = torch.where(active, (1.0 / tau - h) / (dsum * h.pow(3)), 0.0)
        v = v + dv
        if k and not compiling and bool((dv.abs() <= tol * v.abs()).all()):
            break
    f = (torch.addcmul(s, a, v) if a is not None else s + v).reciprocal_().mul_(v)
    if zero is not None:
        f = torch.where(zero, 0.0, f)
    mul_(w, torch.where(ok, f, 1.0))


def inverse_radius(w: Tensor, dim: int) -> Tensor:
    r""":math:`ρ_r = 1/\|w_r\|` per row (keepdim-shaped): ``inf`` for a zero row, 0 for a row
    whose norm is not finite. The majorization radius of :func:`majorized_group_prox_`,
    captured before the optimizer's step."""
    return torch.nan_to_num(group_norms(w, dim).reciprocal(), nan=0.0, posinf=math.inf)


def any_zero_row(rho: Tensor) -> bool:
    """Whether a row of ``rho`` (from :func:`inverse_radius`: in :math:`[0, ∞]`) is ``inf``,
    i.e. was 0 before the step: one reduction and one sync (cheaper than ``isinf().any()``)."""
    return rho.numel() > 0 and rho.max().item() == math.inf


def _row_coef(w: Tensor | Callable[[], Tensor], q: Tensor, rho: Tensor, kt: float, kl2: float,
              dim: int, wake: bool | None) -> Tensor:
    r"""The per-row :math:`c_r = kλ_2 + kτ/n_r` of :func:`majorized_group_prox_scaled_` (with
    :math:`k = 1` that of :func:`majorized_group_prox_`): ``inf`` for rows that go to zero
    (:math:`q_r = \|w_r d_r\| ≤ kτ`); rows that were 0 before the step and are not now
    use their current norm (of ``w``, or as ``w()`` computes them; a waking row whose current
    norm is not finite gets :math:`c_r = 0`, left as the step made it, so a NaN stays in its
    element). ``wake``: whether to look for such rows (None: without a sync)."""
    zero = q <= kt
    c = rho * kt
    if wake is None or wake:
        waking = torch.isinf(c) & ~zero
        if wake is None or bool(waking.any()):
            norms = w() if callable(w) else group_norms(w, dim)
            c = torch.where(waking, torch.nan_to_num(kt / norms, nan=0.0), c)
    c.masked_fill_(zero, math.inf)                   # (c is this function's own tensor)
    return c.add_(kl2) if kl2 else c


def majorized_group_prox_(w: Tensor, s: Tensor, tau: float, l2: float, dim: int,
                          rho: Tensor) -> None:
    r"""One majorize-minimize group-lasso prox of ``w`` in the metric
    :math:`\operatorname{diag}(1/s)`, in place, exact at fixed points.

    Row :math:`r` becomes 0 iff :math:`\|w_r/s_r\| ≤ τ` (the exact prox's test). Other rows
    take the prox of the quadratic majorizer of :math:`τ\|x\|` at radius :math:`n = n_r > 0`,

    .. math:: τ\|x\| ≤ \frac{τ}{2}\Big(\frac{\|x\|^2}{n} + n\Big)\quad(\text{equal at }
              \|x\| = n), \qquad
              w_i ← \frac{w_i\, n}{(1 + s_iλ_2)\,n + s_iτ}
                  = \frac{w_i}{1 + s_i(λ_2 + τ/n)},

    a closed form (no Newton iterations). With :math:`n` the row norm *before* the optimizer's
    step (``rho`` :math:`= 1/n`, from :func:`inverse_radius`, captured by the step pre-hook; a
    row that was 0 and is not now uses its current norm), a fixed point :math:`w^*` of step +
    prox has :math:`n = \|w^*_r\|`, where this map equals the exact metric prox
    (:func:`metric_group_prox_` with :math:`v = n/τ`): the fixed points are the group lasso's
    KKT points, :math:`∇_r f = -τ w^*_r/\|w^*_r\|`, or :math:`\|∇_r f\| ≤ τ` for zero rows.
    Away from them each step is a majorize-minimize step on the row, converging linearly with
    rate about :math:`sτ/(n + sτ)`. A row whose previous norm was not finite gets only the
    :math:`λ_2` part; no NaN spreads along a row.
    """
    q = group_norms(w / s, dim)                      # ‖w_r/s_r‖
    c = _row_coef(w, q, rho, tau, l2, dim, None if is_dtensor(w) or
                  torch.compiler.is_compiling() else any_zero_row(rho))
    mul_(w, torch.addcmul(torch.ones_like(s), s, c).reciprocal_())


def majorized_group_prox_scaled_(w: Tensor, d: Tensor, k: float, tau: float, l2: float,
                                 dim: int, rho: Tensor, x: Tensor, wake: bool = True,
                                 tail: tuple[Tensor, float] | None = None) -> None:
    r""":func:`majorized_group_prox_` with :math:`s = k/d`, in place on a plain tensor ``w``,
    using ``x`` (shaped like ``w``) as scratch:

    .. math:: \text{zero iff } \|w_r d_r\| ≤ kτ, \qquad
              w_i ← \frac{w_i d_i}{d_i + c_r},\quad c_r = kλ_2 + kτ/n_r

    — the same map, multiplied through by :math:`d_i` — in one read of ``w``, one write and
    two passes over chunk-sized scratch (:math:`c_r = ∞` zeroes a row exactly; a row with a
    non-finite norm keeps :math:`w_i d_i / d_i`, its values up to one rounding). ``d`` is
    overwritten. ``wake=False`` promises that no row of ``rho`` is ``inf`` (saves a check).

    ``tail = (u, a)``: the optimizer's last operation :math:`w ← w - a\,u/d` (:math:`a > 0`),
    not yet applied, with ``d`` holding :math:`\tilde d = -d/a`; taken in with a pass less:
    ``x`` holds :math:`y = u + w\tilde d` (the updated :math:`wd` is :math:`-ay`, so :math:`q_r
    = a\|y_r\|`, and the updated :math:`w` is :math:`y/\tilde d`), then
    :math:`w_i ← -a\,y_i/(d_i + c_r) = y_i/(\tilde d_i - c_r/a)`, with :math:`c_r/a` and the
    zero test :math:`\|y_r\| ≤ kτ/a` computed from the row numbers divided by :math:`a`.
    """
    if tail is None:
        torch.mul(w, d, out=x)
        q = group_norms(x, dim)                      # k‖w_r/s_r‖
        c = _row_coef(w, q, rho, k * tau, k * l2, dim, wake)
        torch.div(x, d.add_(c), out=w)
        return
    u, a = tail                                      # everything on the rows divided by a
    torch.addcmul(u, w, d, out=x)
    # a waking row's norm: of the updated w = w + u/d~ (finite where d is inf, unlike y/d~)
    c = _row_coef(lambda: group_norms(torch.div(u, d).add_(w), dim), group_norms(x, dim), rho,
                  k * tau / a, k * l2 / a, dim, wake)
    torch.div(x, d.sub_(c), out=w)
