r"""The step scale :math:`s` of a proximal step, read from the optimizer's own state.

A proximal step after the optimizer's update must shrink by :math:`s·λ`, where :math:`s` is the
step the optimizer takes per unit of gradient. Then the iteration's fixed points are exactly the
regularized problem's (for l1: :math:`0 ∈ ∇f(w) + λ∂\|w\|_1`, the lasso's): at a fixed point the
update moves an element by :math:`s·g` and the prox moves it back by :math:`s·λ`.

``prox_scale="adaptive"`` (the default) uses these rules, evaluated *after* the step, so the
state holds the step count and moments this step used:

=============== ==========================================================================
SGD             :math:`s = \mathrm{lr}\,(1-d)/(1-μ)` with momentum :math:`μ > 0` and dampening
                :math:`d` (the steady-state step of the momentum buffer; nesterov:
                :math:`\mathrm{lr}/(1-μ)`), else :math:`s = \mathrm{lr}`
Adam, AdamW     :math:`s = \mathrm{lr}/(\sqrt{\hat v}+ε)`, :math:`\hat v = v/(1-β_2^t)`
                (``max_exp_avg_sq`` with amsgrad)
RMSprop         :math:`s = \mathrm{lr}/((\sqrt{v}+ε)(1-μ))` (centered: :math:`v - \bar g^2`)
Adagrad         :math:`s = \mathrm{lr}_t/(\sqrt{G}+ε)`,
                :math:`\mathrm{lr}_t = \mathrm{lr}/(1 + (t-1)\,\mathrm{lr\_decay})`
Adadelta        :math:`s = \mathrm{lr}\sqrt{u + ε}/\sqrt{v + ε}`
Adamax          :math:`s = \mathrm{lr}/u` (:math:`u` the infinity norm ``exp_inf``)
=============== ==========================================================================

**Denominator form.** For the built-in adaptive optimizers :math:`s` is a scalar over a
per-element denominator, :math:`s = k/d` (Adam: :math:`k = \mathrm{lr}\,b`,
:math:`d = \sqrt{v} + ε b`, :math:`b = \sqrt{1-β_2^t}`). :func:`denominator_for` returns a rule
that writes :math:`d` into caller-owned buffers and returns :math:`k`, so the proximal maps can
work in the scaled variable :math:`w·d` (fewer passes, no temporaries, exact zeros; see
:func:`paramwise.regularizers.prox_l1_scaled_`). A rule returns ``None`` where :math:`d` could be
0 (:math:`ε = 0`); callers then use the per-element :math:`s` rule.

``prox_scale="lr"`` uses :math:`s = \mathrm{lr}` (decoupled, like AdamW's decay). For any other
optimizer class ``"adaptive"`` falls back to :math:`s = \mathrm{lr}` and warns once per class;
:func:`register_scaling` teaches paramwise a new one. Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step(); rule = scaling_for(type(opt))
    >>> round(rule(opt.param_groups[0], 0.1, [], opt.state, foreach=False), 6)
    1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._chunks import Piece, is_dtensor, power
from ._chunks import as_float as _num

__all__ = ["Scaling", "Denominator", "register_scaling", "scaling_for", "denominator_for",
           "per_element", "warn_unknown", "scale_problem", "momentum_scale", "decayed_lr"]

#: ``rule(group, lr, pieces, state, foreach=...) -> s``: a number, or one new tensor per piece
#: (shaped like the piece) holding the per-element scale. ``state`` is ``optimizer.state``.
#: Rules are linear in ``lr``: called with ``lr·λ`` they return the threshold ``s·λ`` directly.
Scaling = Callable[..., "float | list[Tensor]"]

#: ``rule(group, lr, pieces, state, out) -> [k, ...] | None``: writes the denominator :math:`d`
#: of :math:`s = k/d` into ``out[i]`` (a buffer shaped like piece ``i``) and returns one :math:`k`
#: per piece; ``None`` when the form does not apply (then ``out`` holds nothing useful).
Denominator = Callable[..., "list[float] | None"]

_RULES: dict[type, Scaling] = {}
_DENOMS: dict[type, Denominator] = {}
_ONE_PASS = (torch.float32, torch.float64)
_WARNED: set[type] = set()


def register_scaling(cls: type, rule: Scaling) -> None:
    """Use ``rule`` for ``prox_scale='adaptive'`` on optimizers of exactly class ``cls``."""
    _RULES[cls] = rule


def scaling_for(cls: type) -> Scaling | None:
    """The rule for exactly ``cls`` (subclasses may change the update, so they are not guessed)."""
    return _RULES.get(cls)


def denominator_for(cls: type) -> Denominator | None:
    """The built-in denominator-form rule for exactly ``cls``, or None. Only used while the
    scaling rule is still paramwise's own (a rule registered by the user wins)."""
    rule = _DENOMS.get(cls)
    return rule if rule is not None and _RULES.get(cls) is _BUILTIN.get(cls) else None


def per_element(cls: type) -> bool:
    """Whether ``'adaptive'`` on ``cls`` may give a per-element scale (every rule but SGD's)."""
    rule = _RULES.get(cls)
    return rule is not None and rule is not _sgd


def scale_problem(cls: type, group: Mapping[str, Any]) -> str | None:
    """Why ``'adaptive'`` has no step scale for ``group`` of a ``cls`` optimizer, or None:
    paramwise's SGD and RMSprop rules divide by :math:`1 - μ`, so ``momentum >= 1`` (which
    torch accepts) has no steady-state step to threshold with."""
    if _RULES.get(cls) in (_sgd, _rmsprop) and _num(group.get("momentum", 0.0)) >= 1:
        return (f"momentum={group['momentum']} has no steady-state step, so prox_scale="
                f"'adaptive' (threshold lr·λ/(1 - momentum)) is undefined")
    return None


def momentum_scale(lr: float, mu: float) -> float:
    r"""RMSprop's :math:`k`: :math:`\mathrm{lr}/(1-μ)`, the steady-state step of a momentum
    buffer per unit of input (``inf`` for :math:`μ ≥ 1`, which has none: see
    :func:`scale_problem`), :math:`\mathrm{lr}` without momentum. One definition for the
    post-step rules and the fused updates."""
    if mu <= 0:
        return lr
    return lr / (1 - mu) if mu < 1 else math.inf


def decayed_lr(lr: float, step: Any, decay: float) -> Any:
    r"""Adagrad's :math:`\mathrm{lr}_t = \mathrm{lr}/(1 + (t-1)\,\mathrm{lr\_decay})`, written
    as torch's ``_single_tensor_adagrad`` writes it (so the fused update stays bit-for-bit);
    ``step`` a number, or a step tensor while ``torch.compile`` traces."""
    return lr / (1 + (step - 1) * decay)


def warn_unknown(cls: type) -> None:
    """Say once per class that ``'adaptive'`` fell back to ``lr``."""
    if cls in _WARNED:
        return
    _WARNED.add(cls)
    warnings.warn(
        f"paramwise: prox_scale='adaptive' does not know how {cls.__name__} scales its steps, so "
        f"the proximal threshold is the plain lr·λ; set prox_scale='lr' to silence this, or teach "
        f"it with paramwise.prox.register_scaling({cls.__name__}, rule)",
        stacklevel=3,
    )


def _step(st: Mapping[str, Any]) -> float | Tensor:
    """The state's step count: a number, or (under ``torch.compile``, where ``.item()`` would
    break the graph) the step tensor itself."""
    step = st["step"]
    if isinstance(step, Tensor) and torch.compiler.is_compiling():
        return step
    return _num(step)


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


def _sgd(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> float:
    mu = _num(group.get("momentum", 0.0))
    if mu == 0:
        return lr
    if group.get("nesterov", False):
        return lr * (1 - mu * _num(group.get("dampening", 0.0))) / (1 - mu)
    return lr * (1 - _num(group.get("dampening", 0.0))) / (1 - mu)


def _adam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
          *, foreach: bool) -> list[Tensor]:
    # lr/(sqrt(v)/b + eps) computed as (lr·b)/(sqrt(v) + eps·b), b = sqrt(1 - beta2^t)
    beta2 = _num(group["betas"][1])
    eps = _num(group["eps"])
    key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
    d = _sqrt(_state(state, pieces, key), foreach)
    bc = [(1 - power(beta2, _step(state[pc.param]))) ** 0.5 for pc in pieces]
    _add(d, [eps * b for b in bc], foreach)
    return _finish(d, [lr * b for b in bc], foreach)


def _rmsprop(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
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


def _adagrad(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             *, foreach: bool) -> list[Tensor]:
    d = _sqrt(_state(state, pieces, "sum"), foreach)
    _add(d, _num(group["eps"]), foreach)
    decay = _num(group.get("lr_decay", 0.0))
    clr = [decayed_lr(lr, _step(state[pc.param]), decay) for pc in pieces]
    return _finish(d, clr, foreach)


def _adadelta(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
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


def _adamax(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
            *, foreach: bool) -> list[Tensor]:
    u = _state(state, pieces, "exp_inf")
    return _finish([t.clone() for t in u], lr, foreach)


def _adam_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              out: Sequence[Tensor]) -> list[float] | None:
    # s = lr/(sqrt(v)/b + eps) = (lr·b)/(sqrt(v) + eps·b): k = lr·b, d = sqrt(v) + eps·b
    beta2 = _num(group["betas"][1])
    eps = _num(group["eps"])
    key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
    ks = []
    for pc, d in zip(pieces, out):
        b = (1 - beta2 ** _num(state[pc.param]["step"])) ** 0.5
        if not eps * b > 0:
            return None
        torch.sqrt(pc.view(state[pc.param][key]), out=d).add_(eps * b)
        ks.append(lr * b)
    return ks


def _rmsprop_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                 out: Sequence[Tensor]) -> list[float] | None:
    eps = _num(group["eps"])
    if not eps > 0:
        return None
    centered = group.get("centered", False)
    for pc, d in zip(pieces, out):
        sq = pc.view(state[pc.param]["square_avg"])
        if centered:
            ga = pc.view(state[pc.param]["grad_avg"])
            torch.addcmul(sq, ga, ga, value=-1, out=d).sqrt_()
        else:
            torch.sqrt(sq, out=d)
        d.add_(eps)
    mu = _num(group.get("momentum", 0.0))
    return [momentum_scale(lr, mu)] * len(out)


def _adagrad_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                 out: Sequence[Tensor]) -> list[float] | None:
    eps = _num(group["eps"])
    if not eps > 0:
        return None
    decay = _num(group.get("lr_decay", 0.0))
    ks = []
    for pc, d in zip(pieces, out):
        torch.sqrt(pc.view(state[pc.param]["sum"]), out=d).add_(eps)
        ks.append(decayed_lr(lr, _num(state[pc.param]["step"]), decay))
    return ks


for _cls, _rule in [(torch.optim.SGD, _sgd), (torch.optim.Adam, _adam), (torch.optim.AdamW, _adam),
                    (torch.optim.RMSprop, _rmsprop), (torch.optim.Adagrad, _adagrad),
                    (torch.optim.Adadelta, _adadelta), (torch.optim.Adamax, _adamax)]:
    register_scaling(_cls, _rule)
_BUILTIN: dict[type, Scaling] = dict(_RULES)
for _cls, _den in [(torch.optim.Adam, _adam_den), (torch.optim.AdamW, _adam_den),
                   (torch.optim.RMSprop, _rmsprop_den), (torch.optim.Adagrad, _adagrad_den)]:
    _DENOMS[_cls] = _den
