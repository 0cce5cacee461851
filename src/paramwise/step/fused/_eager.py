r"""The eager forms of the fused updates (:mod:`paramwise.step.fused.update` says when they run):
torch's ``_single_tensor_adam``, ``_sgd``, ``_rmsprop`` and ``_adagrad``, operation for
operation, on cache-sized chunks of whole slices, with a ``before`` callback (the gradient
terms) ahead of each batch's update and an ``apply`` callback (the proximal maps, which get
the update's own denominator) after it. While ``torch.compile`` traces, each hands over to its
twin in :mod:`paramwise.step.fused._traced`.

Example (the Adagrad update alone, no map: one step of ``Adagrad.step``)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.tensor([1.0, -1.0])
    >>> opt = torch.optim.Adagrad([w], lr=0.5)
    >>> with torch.no_grad():
    ...     adagrad_update_(opt, opt.param_groups[0], [w], [0], lambda *a: None)
    >>> w.tolist()
    [0.5, 1.5]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._chunks import Piece, batches, chunk_limit
from ..regularizers import Tail
from ..scales import decayed_lr, momentum_scale
from . import _traced
from .callbacks import Apply, Before

__all__ = ["adam_update_", "sgd_update_", "rmsprop_update_", "adagrad_update_"]

#: A deferred tail forms :math:`w d/a`, which overflows float32 once :math:`|w| d > 3.4\cdot
#: 10^{38} a`; below this step size :math:`a` (:math:`|w| d > 3.4\cdot 10^{26}` would do) the
#: update runs whole and the map after it.
_TINY_A = 1e-12


def _by_dtype(params: Sequence[Tensor], dims: Sequence[int]
              ) -> list[tuple[list[Tensor], list[int]]]:
    """``params`` (with their ``dims``) split by dtype, order kept within each: a batch's
    scratch has one dtype, so float32 and float64 parameters never share one."""
    out: dict[torch.dtype, tuple[list[Tensor], list[int]]] = {}
    for p, d in zip(params, dims):
        ps, ds = out.setdefault(p.dtype, ([], []))
        ps.append(p)
        ds.append(d)
    return list(out.values())


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _state(opt: torch.optim.Optimizer, group: dict, p: Tensor) -> dict[str, Any]:
    """``opt.state[p]``, created exactly as ``Adam._init_group`` / ``RMSprop._init_group``
    create it (``Adagrad`` creates its own when built)."""
    st = opt.state[p]
    if len(st) == 0:
        if type(opt) is torch.optim.RMSprop:
            st["step"] = torch.zeros((), dtype=_scalar_dtype())
            zeros = ["square_avg"] + (["momentum_buffer"] if group["momentum"] > 0 else []) + (
                ["grad_avg"] if group["centered"] else [])
        else:
            st["step"] = torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")
            zeros = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        for key in zeros:
            st[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return st


#: ``piece(pc, w, g, scratch) -> (d, k, tail)``: one piece's update (``w``, ``g`` its parameter
#: and gradient slices, ``scratch`` its scratch slices), returning its denominator,
#: :math:`k` and the :data:`Tail` it left undone (or None).
_PieceFn = Callable[[Piece, Tensor, Tensor, list[Tensor]],
                    "tuple[Tensor | None, float, Tail | None]"]


def _run(params: Sequence[Tensor], dims: Sequence[int], per: int, piece: _PieceFn,
         apply: Apply, before: Before | None) -> None:
    """The batch loop every update shares: batches of whole slices along ``dims``, split by
    dtype, of about twice the hooks' batch over ``per`` scratch tensors a piece (the best of
    2^17..2^21 on a 16.8M-parameter MLP); ``before``, ``piece`` on each piece, ``apply``."""
    work: Tensor | None = None
    limit = 2 * chunk_limit(torch.device("cpu")) // max(per, 1)
    for batch in (b for ps, ds in _by_dtype(params, dims) for b in batches(ps, ds, limit)):
        n = sum(pc.numel for pc in batch)
        dtype = batch[0].param.dtype
        if per and (work is None or work.numel() < per * n or work.dtype != dtype):
            work = torch.empty(per * n, dtype=dtype)
        ws = [pc.view(pc.param) for pc in batch]
        gs = [pc.view(pc.param.grad) for pc in batch]  # type: ignore[arg-type]
        if before is not None:
            before(batch, ws, gs)
        dens, xs, ks, tails = [], [], [], []
        o = 0
        for pc, w, g in zip(batch, ws, gs):
            m = pc.numel
            scratch = [work[i * n + o:i * n + o + m].view(w.shape)  # type: ignore[index]
                       for i in range(per)]
            d, k, tail = piece(pc, w, g, scratch)
            if d is not None:
                dens.append(d)
                xs.append(scratch[1])
                ks.append(k)
            if tail is not None:
                tails.append(tail)
            o += m
        apply(batch, ws, dens, xs, ks, tails)


def _negated_over(d: Tensor, shift: Tensor, a: float) -> Tensor:
    r""":math:`\tilde d = -(d + ε)/a` in place, in one operation, given the 0-d ``shift``
    :math:`= -ε/a` (a 0-d tensor plus a scaled tensor is one vectorized kernel): a deferred
    tail's denominator."""
    return torch.add(shift, d, alpha=-1 / a, out=d)


def _shifts(params: Sequence[Tensor], eps: float, a: Callable[[Tensor], float]
            ) -> dict[Tensor, Tensor]:
    """The 0-d ``shift`` of :func:`_negated_over` per parameter, made once per step (a
    ``torch.tensor`` call costs about as much as a small kernel)."""
    made: dict[tuple[float, torch.dtype], Tensor] = {}
    return {p: made.setdefault((a(p), p.dtype), torch.tensor(-eps / a(p), dtype=p.dtype))
            for p in params}


def _prep(g: Tensor, w: Tensor, maximize: bool, wd: float, buf: Tensor | None) -> Tensor:
    """torch's ``grad = -grad`` (maximize), ``grad = grad.add(param, alpha=wd)``, into ``buf``."""
    if maximize:
        g = torch.neg(g, out=buf)
    if wd != 0:
        g = torch.add(g, w, alpha=wd, out=buf)
    return g


def adam_update_(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
                 dims: Sequence[int], apply: Apply, before: Before | None = None, *,
                 defer: bool = False) -> None:
    r"""Run ``Adam.step``'s update for ``params`` (all :func:`~paramwise.step.fused.update.fusable`), in
    batches of whole slices along ``dims``; call ``before`` on each batch first and ``apply``
    after, with its denominators (:math:`k = \mathrm{lr}`).

    Each parameter's step count goes up by one first; the batch math is torch's
    ``_single_tensor_adam``, operation for operation (``grad.add(param)``, ``lerp_``,
    ``mul_().addcmul_()``, ``sqrt() / bc2 + eps``, ``addcdiv_``), on slices instead of whole
    tensors, so every element is computed as ``Adam.step`` computes it. ``defer`` (see
    :func:`paramwise.step.fused.update.update_`): the last ``addcdiv_`` is left to ``apply`` as the tail
    :math:`(m,\ a = \mathrm{lr}/(1-β_1^t))`, with :math:`\tilde d = -d/a` computed as
    :math:`-\sqrt{\hat v}/(a\sqrt{1-β_2^t}) - ε/a` (as many operations as :math:`d`).
    """
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    beta1, beta2 = (float(b) for b in group["betas"])
    maximize, amsgrad = bool(group["maximize"]), bool(group["amsgrad"])
    decoupled = bool(group.get("decoupled_weight_decay", False))
    defer = defer and lr > _TINY_A
    if torch.compiler.is_compiling():
        _traced.adam(group, params, [_state(opt, group, p) for p in params], apply, before,
                     defer)
        return
    coeffs: dict[Tensor, tuple[float, float]] = {}
    states: dict[Tensor, dict[str, Any]] = {}
    for p in params:
        st = states[p] = _state(opt, group, p)
        st["step"] += 1
        t = st["step"].item()
        bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
        coeffs[p] = (lr / bc1, bc2 ** 0.5)
    coupled = wd != 0 and not decoupled

    def piece(pc: Piece, w: Tensor, g: Tensor, scratch: list[Tensor]
              ) -> tuple[Tensor, float, Tail | None]:
        st = states[pc.param]
        step_size, bc2s = coeffs[pc.param]
        d = scratch[0]
        g = _prep(g, w, maximize, wd if coupled else 0.0, scratch[-1])
        if wd != 0 and decoupled:
            w.mul_(1 - lr * wd)
        exp_avg, exp_avg_sq = pc.view(st["exp_avg"]), pc.view(st["exp_avg_sq"])
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        src = exp_avg_sq
        if amsgrad:
            src = pc.view(st["max_exp_avg_sq"])
            torch.maximum(src, exp_avg_sq, out=src)
        torch.sqrt(src, out=d)
        if defer:
            d.mul_(-1 / (step_size * bc2s)).add_(-eps / step_size)
            return d, lr, (exp_avg, step_size)
        d.div_(bc2s).add_(eps)
        w.addcdiv_(exp_avg, d, value=-step_size)
        return d, lr, None

    _run(params, dims, 3 if (maximize or coupled) else 2, piece, apply, before)


def sgd_update_(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
                dims: Sequence[int], apply: Apply, before: Before | None = None, *,
                defer: bool = False) -> None:
    r"""Run ``SGD.step``'s update for ``params`` (all :func:`~paramwise.step.fused.update.fusable`) like
    :func:`adam_update_`: torch's ``_single_tensor_sgd`` operation for operation on slices,
    ``before`` first and ``apply`` (the proximal maps, with one scale for the whole group)
    after each batch.

    .. math:: g ← -g \text{ (maximize)},\ g ← g + λ_w w;\quad
              b ← μ b + (1-d) g \ (b_1 = g);\quad w ← w - \mathrm{lr}\,(g + μ b
              \text{ (nesterov) or } b)
    """
    lr, wd = float(group["lr"]), float(group["weight_decay"])
    mu, damp = float(group["momentum"]), float(group["dampening"])
    maximize, nesterov = bool(group["maximize"]), bool(group["nesterov"])
    first: set[Tensor] = set()
    if mu != 0:
        for p in params:
            st = opt.state[p]
            if st.get("momentum_buffer") is None:   # torch: grad.detach().clone()
                st["momentum_buffer"] = torch.empty_like(p.grad)  # type: ignore[arg-type]
                first.add(p)
    temp = maximize or wd != 0 or (mu != 0 and nesterov)

    def piece(pc: Piece, w: Tensor, g: Tensor, scratch: list[Tensor]
              ) -> tuple[None, float, None]:
        buf = scratch[0] if temp else None
        g = _prep(g, w, maximize, wd, buf)
        if mu != 0:
            mom = pc.view(opt.state[pc.param]["momentum_buffer"])
            if pc.param in first:
                mom.copy_(g)
            else:
                mom.mul_(mu).add_(g, alpha=1 - damp)
            g = torch.add(g, mom, alpha=mu, out=buf) if nesterov else mom
        w.add_(g, alpha=-lr)
        return None, lr, None

    _run(params, dims, 1 if temp else 0, piece, apply, before)


def rmsprop_update_(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
                    dims: Sequence[int], apply: Apply, before: Before | None = None, *,
                    defer: bool = False) -> None:
    r"""Run ``RMSprop.step``'s update (torch's ``_single_tensor_rmsprop``, operation for
    operation) like :func:`adam_update_`; ``apply`` gets :math:`d = \sqrt{v} + ε` (centered:
    :math:`\sqrt{v - \bar g^2} + ε`) and :math:`k = \mathrm{lr}/(1-μ)` (:math:`\mathrm{lr}`
    without momentum). ``defer`` (see :func:`paramwise.step.fused.update.update_`) leaves
    :math:`(g, \mathrm{lr})` to ``apply``, without momentum only.

    .. math:: v ← αv + (1-α)g^2,\quad \bar g ← \bar g + (1-α)(g - \bar g);\quad
              b ← μb + g/d,\ w ← w - \mathrm{lr}\,b \quad (μ = 0:\ w ← w - \mathrm{lr}\,g/d)
    """
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    alpha, mu = float(group["alpha"]), float(group["momentum"])
    defer = defer and mu == 0 and lr > _TINY_A
    if torch.compiler.is_compiling():
        _traced.rmsprop(group, params, [_state(opt, group, p) for p in params], apply, before,
                        defer)
        return
    maximize, centered = bool(group["maximize"]), bool(group["centered"])
    k = momentum_scale(lr, mu)
    shift = _shifts(params, eps, lambda p: lr) if defer else {}
    for p in params:
        _state(opt, group, p)["step"] += 1

    def piece(pc: Piece, w: Tensor, g: Tensor, scratch: list[Tensor]
              ) -> tuple[Tensor, float, Tail | None]:
        st = opt.state[pc.param]
        d = scratch[0]
        g = _prep(g, w, maximize, wd, scratch[-1])
        square_avg = pc.view(st["square_avg"])
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            grad_avg = pc.view(st["grad_avg"])
            grad_avg.lerp_(g, 1 - alpha)
            torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=d).sqrt_()
        else:
            torch.sqrt(square_avg, out=d)
        if defer:
            return _negated_over(d, shift[pc.param], lr), k, (g, lr)
        d.add_(eps)
        if mu > 0:
            buf = pc.view(st["momentum_buffer"])
            buf.mul_(mu).addcdiv_(g, d)
            w.add_(buf, alpha=-lr)
        else:
            w.addcdiv_(g, d, value=-lr)
        return d, k, None

    _run(params, dims, 3 if (maximize or wd != 0) else 2, piece, apply, before)


def adagrad_update_(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
                    dims: Sequence[int], apply: Apply, before: Before | None = None, *,
                    defer: bool = False) -> None:
    r"""Run ``Adagrad.step``'s update (torch's ``_single_tensor_adagrad``, operation for
    operation, dense gradients) like :func:`adam_update_`; ``apply`` gets
    :math:`d = \sqrt{G} + ε` and :math:`k = \mathrm{lr}_t`; ``defer`` (see
    :func:`paramwise.step.fused.update.update_`) leaves :math:`(g, \mathrm{lr}_t)` to ``apply`` (traced:
    only without ``lr_decay``, whose traced lr has no lower bound to check).

    .. math:: G ← G + g^2,\quad \mathrm{lr}_t = \frac{\mathrm{lr}}{1 + (t-1)\,
              \mathrm{lr\_decay}},\quad w ← w - \mathrm{lr}_t\, g/d
    """
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    decay, maximize = float(group["lr_decay"]), bool(group["maximize"])
    if torch.compiler.is_compiling():   # (traced, the decayed lr is a tensor: no tail with a
        _traced.adagrad(group, params, [opt.state[p] for p in params], apply, before,
                        defer and lr > _TINY_A and decay == 0)   # decay, it has no bound)
        return
    clr: dict[Tensor, float] = {}
    for p in params:
        step_t = opt.state[p]["step"]
        step_t += 1
        clr[p] = decayed_lr(lr, step_t.item(), decay)
    defer = defer and all(c > _TINY_A for c in clr.values())
    shift = _shifts(params, eps, clr.__getitem__) if defer else {}

    def piece(pc: Piece, w: Tensor, g: Tensor, scratch: list[Tensor]
              ) -> tuple[Tensor, float, Tail | None]:
        d = scratch[0]
        g = _prep(g, w, maximize, wd, scratch[-1])
        state_sum = pc.view(opt.state[pc.param]["sum"])
        state_sum.addcmul_(g, g, value=1)
        torch.sqrt(state_sum, out=d)
        if defer:
            return _negated_over(d, shift[pc.param], clr[pc.param]), clr[pc.param], (
                g, clr[pc.param])
        d.add_(eps)
        w.addcdiv_(g, d, value=-clr[pc.param])
        return d, clr[pc.param], None

    _run(params, dims, 3 if (maximize or wd != 0) else 2, piece, apply, before)
