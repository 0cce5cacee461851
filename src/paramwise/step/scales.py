r"""The step-scale rules of ``torch.optim``'s optimizers: how far each one's step moves a weight
per unit of gradient, read from its group and state right after the step.

A rule ``rule(group, lr, pieces, state, *, foreach) -> s`` returns a number or one new tensor
per piece (see :data:`paramwise.step.prox.Scaling`); it is linear in ``lr``, so called with
``lr·λ`` it returns the threshold :math:`sλ`. Each formula follows the update code of torch
2.13 (``torch/optim/<name>.py``, ``_single_tensor_<name>``) and is the update's coefficient on
the gradient :math:`g` once the momentum buffers have caught up with it (:math:`m = g`): the
step then moves a weight by exactly :math:`s·g`, so a proximal map shrinking by :math:`s·λ`
has the regularized problem's fixed points. The table of formulas is in :mod:`paramwise.step.prox`;
:mod:`paramwise.step.prox` registers the rules. Example (NAdam at steady state, step 2000)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.NAdam([w], lr=0.1)
    >>> for _ in range(2000):
    ...     w.grad = torch.tensor([1.0, -4.0]); before = w.detach().clone(); opt.step()
    >>> s = nadam(opt.param_groups[0], 0.1, [Piece(w)], opt.state, foreach=False)[0]
    >>> torch.allclose(before - w.detach(), s * w.grad, rtol=1e-4)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ._chunks import Piece, is_dtensor, power
from ._chunks import as_float as _num

__all__ = ["momentum_scale", "decayed_lr", "sgd", "asgd", "adam", "nadam", "radam", "adamax",
           "rmsprop", "adagrad", "adadelta", "adafactor", "sparse_adam", "adam_like"]

_ONE_PASS = (torch.float32, torch.float64)


def momentum_scale(lr: float, mu: float) -> float:
    r"""RMSprop's :math:`k`: :math:`\mathrm{lr}/(1-μ)`, the steady-state step of a momentum
    buffer per unit of input (``inf`` for :math:`μ ≥ 1`, which has none: see
    :func:`paramwise.step.prox.scale_problem`), :math:`\mathrm{lr}` without momentum. One definition
    for the post-step rules and the fused updates."""
    if mu <= 0:
        return lr
    return lr / (1 - mu) if mu < 1 else math.inf


def decayed_lr(lr: float, step: Any, decay: float) -> Any:
    r"""Adagrad's :math:`\mathrm{lr}_t = \mathrm{lr}/(1 + (t-1)\,\mathrm{lr\_decay})`, written
    as torch's ``_single_tensor_adagrad`` writes it (so the fused update stays bit-for-bit);
    ``step`` a number, or a step tensor while ``torch.compile`` traces."""
    return lr / (1 + (step - 1) * decay)


def _value(st: Mapping[str, Any], key: str) -> float | Tensor:
    """A scalar of the state (``step``, ``mu_product``): a number, or (under
    ``torch.compile``, where ``.item()`` would break the graph) the tensor itself."""
    v = st[key]
    if isinstance(v, Tensor) and torch.compiler.is_compiling():
        return v
    return _num(v)


def _state(state: Mapping[Tensor, dict], pieces: Sequence[Piece], key: str) -> list[Tensor]:
    return [pc.view(state[pc.param][key]) for pc in pieces]


def _finish(d: list[Tensor], scale: Any, foreach: bool) -> list[Tensor]:
    """``scale / d`` in place of ``d`` (one pass per tensor on the plain path). ``scale``: a
    number or a list of them (0-d tensors under ``torch.compile``)."""
    scales = scale if isinstance(scale, list) else [scale] * len(d)
    if foreach:
        torch._foreach_reciprocal_(d)
        torch._foreach_mul_(d, scales)
        return d
    for t, k in zip(d, scales):
        if t.dtype in _ONE_PASS and not is_dtensor(t) and not isinstance(k, Tensor):
            torch.div(torch.tensor(k, dtype=t.dtype), t, out=t)
        else:  # k stays a full-precision scalar for half types; DTensor needs its own ops
            t.reciprocal_().mul_(k)
    return d


def _sqrt(ts: list[Tensor], foreach: bool) -> list[Tensor]:
    return torch._foreach_sqrt(ts) if foreach else [t.sqrt() for t in ts]


def _add(ts: list[Tensor], c: Any, foreach: bool) -> None:
    cs = c if isinstance(c, list) else [c] * len(ts)
    if foreach:
        torch._foreach_add_(ts, cs)
    else:
        for t, k in zip(ts, cs):
            t.add_(k)


def adam_like(lr: float, pieces: Sequence[Piece], state: Mapping, key: str, beta2: float | None,
              eps: float, *, foreach: bool, eps_hat: bool = True) -> list[Tensor]:
    r""":math:`s = \mathrm{lr}/(\sqrt{v/(1-β_2^t)} + ε)` with :math:`v` = ``state[p][key]``,
    computed as :math:`\mathrm{lr}\,b/(\sqrt v + εb)`, :math:`b = \sqrt{1-β_2^t}` (no bias
    correction, :math:`b = 1`, when ``beta2`` is None or the state has no ``step``);
    ``eps_hat=False``: :math:`\mathrm{lr}\,b/(\sqrt v + ε)` (ε added to :math:`\sqrt v`)."""
    d = _sqrt(_state(state, pieces, key), foreach)
    bc = [(1 - power(beta2, _value(state[pc.param], "step"))) ** 0.5
          if beta2 is not None and "step" in state[pc.param] else 1.0 for pc in pieces]
    _add(d, [eps * b for b in bc] if eps_hat else eps, foreach)
    return _finish(d, [lr * b for b in bc], foreach)


def sgd(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
        *, foreach: bool) -> float:
    mu = _num(group.get("momentum", 0.0))
    if mu == 0:
        return lr
    if group.get("nesterov", False):
        return lr * (1 - mu * _num(group.get("dampening", 0.0))) / (1 - mu)
    return lr * (1 - _num(group.get("dampening", 0.0))) / (1 - mu)


def asgd(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> float:
    # the η = lr/(1 + λ·lr·(t-1))^α this step used (ASGD stores the next step's); no momentum
    params = [pc.param for pc in pieces] or group["params"]
    st = next((state[p] for p in params if "step" in state.get(p, ())), None)
    t = _num(st["step"]) if st is not None else 1.0
    glr = _num(group["lr"])
    return lr / (1 + _num(group["lambd"]) * glr * (t - 1)) ** _num(group["alpha"])


def adam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> list[Tensor]:
    key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
    return adam_like(lr, pieces, state, key, _num(group["betas"][1]), _num(group["eps"]),
                     foreach=foreach)


def _nadam_coef(group: Mapping[str, Any], st: Mapping[str, Any]) -> Any:
    # (1-μ_t)/(1-Π_t) on g plus μ_{t+1}/(1-Π_{t+1}) on m = g; μ_t = β₁(1 - ½·0.96^(tψ))
    beta1, psi = _num(group["betas"][0]), _num(group["momentum_decay"])
    t, prod = _value(st, "step"), _value(st, "mu_product")
    mu = beta1 * (1.0 - 0.5 * power(0.96, t * psi))
    mu_next = beta1 * (1.0 - 0.5 * power(0.96, (t + 1) * psi))
    return (1.0 - mu) / (1.0 - prod) + mu_next / (1.0 - prod * mu_next)


def nadam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
          *, foreach: bool) -> list[Tensor]:
    beta2, eps = _num(group["betas"][1]), _num(group["eps"])
    d = _sqrt(_state(state, pieces, "exp_avg_sq"), foreach)
    bc = [(1 - power(beta2, _value(state[pc.param], "step"))) ** 0.5 for pc in pieces]
    _add(d, [eps * b for b in bc], foreach)
    return _finish(d, [lr * b * _nadam_coef(group, state[pc.param]) for pc, b in zip(pieces, bc)],
                   foreach)


def _radam_rect(beta2: float, t: Any) -> Any:
    """RAdam's rectification :math:`r_t` where :math:`ρ_t > 5`, else 0 (the SGD-like phase)."""
    rho_inf = 2 / (1 - beta2) - 1
    bt = power(beta2, t)
    rho = rho_inf - 2 * t * bt / (1 - bt)
    if isinstance(rho, Tensor):
        r = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp(min=0)
        return torch.where(rho > 5.0, r.sqrt(), 0.0)
    if rho <= 5.0:
        return 0.0
    return ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5


def radam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
          *, foreach: bool) -> float | list[Tensor]:
    beta2, eps = _num(group["betas"][1]), _num(group["eps"])
    ts = [_value(state[pc.param], "step") for pc in pieces]
    rects = [_radam_rect(beta2, t) for t in ts]
    if all(not isinstance(r, Tensor) and r == 0.0 for r in rects):
        return lr                          # ρ_t ≤ 5: w ← w - lr·m̂, momentum SGD
    d = _sqrt(_state(state, pieces, "exp_avg_sq"), foreach)
    _add(d, eps, foreach)                  # RAdam adds ε to √v, not to √v̂
    ks = [lr * r * (1 - power(beta2, t)) ** 0.5 for r, t in zip(rects, ts)]
    out = _finish(d, ks, foreach)
    return [torch.where(r > 0, s, lr) if isinstance(r, Tensor) else (s if r > 0 else s.fill_(lr))
            for s, r in zip(out, rects)]


def adamax(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
           *, foreach: bool) -> list[Tensor]:
    # w ← w - lr/(1-β₁^t)·m/u with u = max(β₂u, |g| + ε): m̂ = g gives s = lr/u
    u = _state(state, pieces, "exp_inf")
    return _finish([t.clone() for t in u], lr, foreach)


def rmsprop(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
            *, foreach: bool) -> list[Tensor]:
    sq = _state(state, pieces, "square_avg")
    if group.get("centered", False):
        ga = _state(state, pieces, "grad_avg")
        if foreach:
            d = torch._foreach_addcmul(sq, ga, ga, value=-1)
            torch._foreach_sqrt_(d)
        else:
            d = [s.addcmul(g, g, value=-1).sqrt_() for s, g in zip(sq, ga)]
    else:
        d = _sqrt(sq, foreach)
    _add(d, _num(group["eps"]), foreach)
    mu = _num(group.get("momentum", 0.0))
    return _finish(d, momentum_scale(lr, mu), foreach)


def adagrad(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
            *, foreach: bool) -> list[Tensor]:
    d = _sqrt(_state(state, pieces, "sum"), foreach)
    _add(d, _num(group["eps"]), foreach)
    decay = _num(group.get("lr_decay", 0.0))
    clr = [decayed_lr(lr, _value(state[pc.param], "step"), decay) for pc in pieces]
    return _finish(d, clr, foreach)


def adadelta(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             *, foreach: bool) -> list[Tensor]:
    eps = _num(group["eps"])
    num, den = _state(state, pieces, "acc_delta"), _state(state, pieces, "square_avg")
    if foreach:
        d = torch._foreach_add(den, eps)
        torch._foreach_sqrt_(d)
        u = torch._foreach_add(num, eps)
        torch._foreach_sqrt_(u)
        torch._foreach_div_(d, u)
    else:
        d = [(v + eps).sqrt_().div_((u + eps).sqrt_()) for u, v in zip(num, den)]
    return _finish(d, lr, foreach)


def sparse_adam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                *, foreach: bool) -> list[Tensor]:
    # lr·√(1-β₂^t)/(1-β₁^t)·m/(√v + ε): ε added to √v, not to √v̂
    return adam_like(lr, pieces, state, "exp_avg_sq", _num(group["betas"][1]),
                     _num(group["eps"]), foreach=foreach, eps_hat=False)


# -- Adafactor ------------------------------------------------------------------------------

_ADAFACTOR_STEP: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _narrow(t: Tensor, pc: Piece) -> Tensor:
    """``pc``'s slice of a tensor that broadcasts against the parameter (a factor)."""
    if pc.length is None or t.shape[pc.dim] == 1:
        return t
    return t.narrow(pc.dim, pc.start, pc.length)


def _adafactor_var(st: Mapping[str, Any], pc: Piece, eps1: float) -> Tensor:
    """A new tensor: Adafactor's :math:`\\max(\\hat V, ε_1^2)` on ``pc``."""
    row = st.get("row_var")
    if row is not None:
        col = st["col_var"]
        mean = row.mean(dim=-2, keepdim=True).clamp_(min=eps1)
        v = (_narrow(row, pc) @ _narrow(col, pc)).div_(_narrow(mean, pc))
    else:
        v = pc.view(st["variance"]).clone()
    return v.clamp_(min=eps1 * eps1)


def _adafactor_alpha(group: Mapping[str, Any], p: Tensor, st: Mapping[str, Any],
                     eps1: float) -> tuple[float, Tensor | None]:
    r"""The step's :math:`α/D` for all of ``p``: :math:`α = \max(ε_2, \mathrm{RMS}(w))\,ρ_t`
    with :math:`w` the weights *before* the step, recovered from the weights after it:
    :math:`w_+ = c\,w - (α/D)\,u` (:math:`c = 1 - \mathrm{lr}\,λ_w`, :math:`u = g/\sqrt{\hat V}`,
    :math:`D = \max(1, \mathrm{RMS}(u)/d)`) makes :math:`r = \mathrm{RMS}(w)` the positive root
    of :math:`(nc^2 - β^2\|u\|^2)r^2 - 2β⟨w_+,u⟩r - \|w_+\|^2 = 0`, :math:`β = ρ_t/D`. Kept per
    parameter and step, so pieces of a parameter cut into batches share it; also returns
    :math:`1/\sqrt{\hat V}` when it computed it (None from the cache)."""
    step, token = _num(st["step"]), id(st["step"])
    hit = _ADAFACTOR_STEP.get(p)
    if hit is not None and hit[0] == step and hit[1] == token:
        return hit[2], None
    lr = _num(group["lr"])
    rho = min(lr, 1 / step ** 0.5)
    c = 1 - lr * _num(group.get("weight_decay", 0.0))
    inv = _adafactor_var(st, Piece(p), eps1).rsqrt_()
    u = inv * p.grad if p.grad is not None else torch.zeros_like(p)
    n, w, u = p.numel(), p.detach().reshape(-1), u.reshape(-1)
    uu, ww, wu = (float(torch.dot(a, b)) for a, b in ((u, u), (w, w), (w, u)))
    if group.get("maximize", False):
        wu = -wu
    big_d = max(1.0, math.sqrt(uu / n) / _num(group["d"]))
    beta = rho / big_d
    a = n * c * c - beta * beta * uu
    r = (beta * wu + math.sqrt(beta * beta * wu * wu + a * ww)) / a if a > 0 else math.sqrt(ww / n)
    out = max(_num(group["eps"][1]), r) * rho / big_d
    _ADAFACTOR_STEP[p] = (step, token, out)
    return out, inv


def adafactor(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              *, foreach: bool) -> list[Tensor]:
    # w ← c·w - (α/D)·g/√max(V̂, ε₁²): s = (α/D)/√max(V̂, ε₁²), per unit of the group's lr
    glr = _num(group["lr"])
    out = []
    for pc in pieces:
        p, st = pc.param, state[pc.param]
        eps1 = group["eps"][0]
        eps1 = torch.finfo(p.dtype).eps if eps1 is None else _num(eps1)
        k, inv = _adafactor_alpha(group, p, st, eps1)
        if inv is None or pc.length is not None:
            inv = _adafactor_var(st, pc, eps1).rsqrt_()
        out.append(inv.mul_(k * (lr / glr if glr else 0.0)))
    return out
