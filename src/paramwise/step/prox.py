r"""The step scale :math:`s` of a proximal step, read from the optimizer's own state.

A proximal step after the optimizer's update must shrink by :math:`s·λ`, where :math:`s` is the
step the optimizer takes per unit of gradient. Then the iteration's fixed points are exactly the
regularized problem's (for l1: :math:`0 ∈ ∇f(w) + λ∂\|w\|_1`, the lasso's): at a fixed point the
update moves an element by :math:`s·g` and the prox moves it back by :math:`s·λ`.

``prox_scale="adaptive"`` (the default) uses these rules (:mod:`paramwise.step.scales`, derived from
torch 2.13's update code), evaluated *after* the step, so the state holds the step count
:math:`t` and the moments this step used; :math:`b = \sqrt{1-β_2^t}`, :math:`\hat v = v/b^2`,
and momentum buffers are taken at steady state (:math:`m = g`):

=============== ==========================================================================
SGD             :math:`s = \mathrm{lr}\,(1-d)/(1-μ)` with momentum :math:`μ > 0` and dampening
                :math:`d` (nesterov: :math:`\mathrm{lr}(1-μd)/(1-μ)`), else :math:`\mathrm{lr}`
ASGD            :math:`s = \mathrm{lr}/(1 + λ\,\mathrm{lr}\,(t-1))^{α}`, the :math:`η` step
                :math:`t` used (``lambd``, ``alpha``); its own decay :math:`(1-λη)w` is an l2
                term of strength ``lambd``
Adam, AdamW     :math:`s = \mathrm{lr}/(\sqrt{\hat v}+ε)` (``max_exp_avg_sq`` with amsgrad)
NAdam           :math:`s = \mathrm{lr}\,c_t/(\sqrt{\hat v}+ε)`,
                :math:`c_t = (1-μ_t)/(1-Π_t) + μ_{t+1}/(1-Π_{t+1})`,
                :math:`μ_t = β_1(1 - ½·0.96^{tψ})` (``momentum_decay`` ψ),
                :math:`Π_t = ∏_{i≤t} μ_i` (``mu_product``); :math:`c_t → 1`
RAdam           :math:`s = \mathrm{lr}\,r_t\,b/(\sqrt v+ε)` while :math:`ρ_t > 5`
                (:math:`r_t` its rectification term), else :math:`\mathrm{lr}` (the SGD-like
                first steps, :math:`w ← w - \mathrm{lr}\,\hat m`)
Adamax          :math:`s = \mathrm{lr}/u` (:math:`u = \max(β_2u, |g|+ε)`, ``exp_inf``)
RMSprop         :math:`s = \mathrm{lr}/((\sqrt{v}+ε)(1-μ))` (centered: :math:`v - \bar g^2`)
Adagrad         :math:`s = \mathrm{lr}_t/(\sqrt{G}+ε)`,
                :math:`\mathrm{lr}_t = \mathrm{lr}/(1 + (t-1)\,\mathrm{lr\_decay})`
Adadelta        :math:`s = \mathrm{lr}\sqrt{u + ε}/\sqrt{v + ε}`
Adafactor       :math:`s = (α/D)/\sqrt{\max(\hat V, ε_1^2)}`, :math:`\hat V` its factored
                (rows × columns) or full second moment, :math:`α = \max(ε_2,
                \mathrm{RMS}(w))\min(\mathrm{lr}, t^{-1/2})` with :math:`w` before the step,
                :math:`D = \max(1, \mathrm{RMS}(g/\sqrt{\hat V})/d)`
SparseAdam      :math:`s = \mathrm{lr}\,b/(\sqrt v+ε)` (on the rows of the gradient:
                :mod:`paramwise.step._sparse`)
Rprop           refused: :math:`w ← w - η_i\operatorname{sign}(g)` has no step per unit of
                gradient (use ``prox=False``: see :func:`scale_fix`)
Muon, LBFGS     refused: an orthogonalized matrix update, a line search along a quasi-Newton
                direction (use ``prox_scale="lr"`` or another optimizer for those parameters)
=============== ==========================================================================

A refusal is a :class:`~paramwise.errors.ParamwiseError` when the optimizer is built
(:func:`scale_problem`, :func:`scale_fix`); a rule registered for the class lifts it.

**Denominator form.** For most built-in adaptive rules :math:`s` is a scalar over a
per-element denominator, :math:`s = k/d` (Adam: :math:`k = \mathrm{lr}\,b`,
:math:`d = \sqrt{v} + ε b`). :func:`denominator_for` returns a rule that writes :math:`d` into
caller-owned buffers and returns :math:`k`, so the proximal maps can work in the scaled variable
:math:`w·d` (fewer passes, no temporaries, exact zeros; see
:func:`paramwise.step.regularizers.prox_l1_scaled_`). A rule returns ``None`` where :math:`d` could be
0 (:math:`ε = 0`); callers then use the per-element :math:`s` rule.

**Other optimizers** (:func:`generic`). A class without a rule is assumed Adam-like when, for
each parameter, its state holds a second moment shaped like the parameter under one of
:data:`SECOND_MOMENTS` (``v`` only where no element is negative) and its group a number
``eps``: :math:`s = \mathrm{lr}/(\sqrt{\hat v}+ε)`, bias-corrected with :math:`β_2` from
``betas[1]`` (or ``beta2``) when the state has a ``step``. One warning per class says which key
was used and that this holds only if the update divides by :math:`\sqrt{\hat v}` as Adam's does.
Otherwise :math:`s = \mathrm{lr}` with one warning per class saying what that means.
:func:`register_scaling` teaches paramwise a class; ``prox_scale="lr"`` uses :math:`s =
\mathrm{lr}` everywhere (decoupled, like AdamW's decay). Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step(); rule = scaling_for(type(opt))
    >>> round(rule(opt.param_groups[0], 0.1, [], opt.state, foreach=False), 6)
    1.0
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import user_stacklevel
from . import denominators as D
from . import scales as S
from . import thirdparty as _third
from ._chunks import Piece
from ._chunks import as_float as _num
from .scales import adam as _adam
from .scales import decayed_lr, momentum_scale

__all__ = ["Scaling", "Denominator", "register_scaling", "scaling_for", "denominator_for",
           "per_element", "warn_unknown", "scale_problem", "scale_fix", "momentum_scale",
           "decayed_lr", "generic", "rule_name", "SECOND_MOMENTS"]

#: ``rule(group, lr, pieces, state, foreach=...) -> s``: a number, or one new tensor per piece
#: (shaped like the piece) holding the per-element scale. ``state`` is ``optimizer.state``.
#: Rules are linear in ``lr``: called with ``lr·λ`` they return the threshold ``s·λ`` directly.
Scaling = Callable[..., "float | list[Tensor]"]

#: ``rule(group, lr, pieces, state, out) -> [k, ...] | None``: writes the denominator :math:`d`
#: of :math:`s = k/d` into ``out[i]`` (a buffer shaped like piece ``i``) and returns one :math:`k`
#: per piece; ``None`` when the form does not apply (then ``out`` holds nothing useful).
Denominator = Callable[..., "list[float] | None"]

#: State keys :func:`generic` reads as an Adam-like second moment, in this order.
SECOND_MOMENTS = ("exp_avg_sq", "second_moment", "exp_avg_var", "square_avg", "nu", "v")

_RULES: dict[type, Scaling] = {}
_DENOMS: dict[type, Denominator] = {}
_SCALAR: tuple[Scaling, ...] = (S.sgd, S.asgd)      # one number per group, never per element
_WARNED: set[Any] = set()
_GENERIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MET: weakref.WeakSet = weakref.WeakSet()   # classes already looked up in thirdparty

_O = torch.optim
#: (class, why 'adaptive' has no scale, what to use instead), matched with issubclass.
_REFUSED: list[tuple[type, str, str]] = [
    (_O.Rprop,
     "it moves each weight by its own step size times sign(g), whatever |g| is, so no step "
     "per unit of gradient exists (a threshold step_size·λ/|g| keeps the lasso's fixed points, "
     "but its step sizes then grow without bound around them and it does not converge)",
     "set prox=False: the penalty then goes into the gradient, whose sign flips shrink Rprop's "
     "step sizes around the lasso point (weights that belong at 0 end within about "
     "step_sizes[0] of it, not exactly at 0); for exact zeros use an optimizer with a step "
     "scale (SGD, Adam, ...) for these parameters"),
    (_O.LBFGS,
     "it steps along a quasi-Newton direction found by a line search (up to max_iter inner "
     "iterations per step()), so no step per unit of gradient exists, and a proximal map after "
     "step() invalidates the curvature pairs it keeps",
     "train these parameters with an optimizer that has a step scale (SGD, Adam, ...), or set "
     "prox_scale='lr' to soft-threshold by lr·λ after each step() (a heuristic: its fixed "
     "points are not the lasso's)"),
] + ([(_O.Muon,
       "its update is the momentum matrix orthogonalized as a whole (Newton-Schulz), so no "
       "per-element step per unit of gradient exists",
       "set prox_scale='lr' (threshold lr·λ per step, decoupled like AdamW's decay: its fixed "
       "points are not the lasso's), or send these parameters to an optimizer with a step "
       "scale (a rule with optimizer='adamw')")] if hasattr(_O, "Muon") else [])


def register_scaling(cls: type, rule: Scaling) -> None:
    """Use ``rule`` for ``prox_scale='adaptive'`` on optimizers of exactly class ``cls``.

    A proximal map (``l1``, ``group_lasso``) after a step shrinks each weight by :math:`s·λ`,
    where :math:`s` is how far the optimizer's step moved that weight per unit of gradient.
    paramwise knows :math:`s` for torch's optimizers and for some third-party ones; for another
    class it guesses from an Adam-like second moment in the state (with a warning), and refuses
    a class whose update has no such scale. ``rule(group, lr, pieces, state, *, foreach)``
    returns :math:`s` right after the step: a number, or one tensor per piece (shaped like
    ``piece.param``'s slice ``piece.view(t)``); ``state`` is ``optimizer.state``. It must be
    linear in ``lr`` (it is called with ``lr·λ`` to get the threshold). Registering a rule also
    lifts a refusal of ``cls``. Subclasses are not covered: their update may differ.

        >>> import paramwise, torch
        >>> class PlainSGD(torch.optim.SGD):     # moves a weight by lr per unit of gradient
        ...     pass
        >>> paramwise.register_scaling(PlainSGD, lambda group, lr, pieces, state, *, foreach: lr)
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = paramwise.optimizer(model, PlainSGD, [paramwise.Rule("weight", l1=1e-3)], lr=0.1)
        >>> model(torch.randn(3, 4)).sum().backward(); opt.step()     # no warning: s = lr
    """
    _RULES[cls] = rule


def _meet(cls: type) -> None:
    """First sight of ``cls``: take its rule or refusal from :mod:`paramwise.step.thirdparty`."""
    if cls not in _RULES and cls not in _MET:
        _MET.add(cls)
        found = _third.lookup(cls)
        if callable(found):
            _RULES[cls] = found
        elif found is not None:
            _REFUSED.append((cls, *found))


def scaling_for(cls: type) -> Scaling | None:
    """The rule for exactly ``cls`` (subclasses may change the update, so they are not
    guessed), else :func:`generic`'s rule for it; None for a class :func:`scale_problem` refuses."""
    _meet(cls)
    rule = _RULES.get(cls)
    if rule is not None:
        return rule
    return None if _refusal(cls) else generic(cls)


def rule_name(cls: type) -> str:
    """What ``'adaptive'`` uses on ``cls``, in words: the class's own rule (``'NAdam'``, also
    for a rule registered for it), ``'generic'`` (:func:`generic`) or ``'refused'``."""
    _meet(cls)
    if cls in _RULES:
        return cls.__name__
    return "refused" if _refusal(cls) else "generic"


def denominator_for(cls: type) -> Denominator | None:
    """The built-in denominator-form rule for exactly ``cls``, or None. Only used while the
    scaling rule is still paramwise's own (a rule registered by the user wins)."""
    rule = _DENOMS.get(cls)
    return rule if rule is not None and _RULES.get(cls) is _BUILTIN.get(cls) else None


def per_element(cls: type) -> bool:
    """Whether ``'adaptive'`` on ``cls`` may give a per-element scale (every rule but SGD's and
    ASGD's, which give one number per group)."""
    rule = scaling_for(cls)
    return rule is not None and rule not in _SCALAR


def _refusal(cls: type) -> tuple[str, str] | None:
    _meet(cls)
    if cls in _RULES:
        return None
    for base, why, fix in _REFUSED:
        if issubclass(cls, base):
            return why, fix
    return None


def scale_problem(cls: type, group: Mapping[str, Any]) -> str | None:
    """Why ``'adaptive'`` has no step scale for ``group`` of a ``cls`` optimizer, or None: the
    refused classes (Rprop, LBFGS, Muon and their subclasses, unless a rule is registered for
    the class), and SGD's and RMSprop's rules under ``momentum >= 1`` (which torch accepts:
    they divide by :math:`1 - μ`, so there is no steady-state step to threshold with).
    :func:`scale_fix` says what to use instead."""
    refused = _refusal(cls)
    if refused:
        return f"{cls.__name__} has no step scale for prox_scale='adaptive': {refused[0]}"
    if _RULES.get(cls) in (S.sgd, S.rmsprop) and _num(group.get("momentum", 0.0)) >= 1:
        return (f"momentum={group['momentum']} has no steady-state step, so prox_scale="
                f"'adaptive' (threshold lr·λ/(1 - momentum)) is undefined")
    return None


def scale_fix(cls: type, group: Mapping[str, Any]) -> str:
    """What to use instead when :func:`scale_problem` refuses ``cls``."""
    refused = _refusal(cls)
    if refused:
        return refused[1]
    return "use momentum < 1, or prox_scale='lr' (threshold lr·λ)"


def _moment_key(group: Mapping[str, Any], p: Tensor, st: Mapping[str, Any]) -> str | None:
    keys = (("max_exp_avg_sq",) if group.get("amsgrad") else ()) + SECOND_MOMENTS
    for key in keys:
        v = st.get(key)
        if (isinstance(v, Tensor) and v.shape == p.shape and v.is_floating_point()
                and (key != "v" or torch.compiler.is_compiling() or not bool((v < 0).any()))):
            return key
    return None


def _number(x: Any) -> float | None:
    if isinstance(x, Tensor):
        return _num(x) if x.numel() == 1 and not x.is_complex() else None
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _beta2(group: Mapping[str, Any]) -> float | None:
    betas = group.get("betas")
    if isinstance(betas, (tuple, list)) and len(betas) >= 2:
        return _number(betas[1])
    return _number(group.get("beta2"))


def generic(cls: type) -> Scaling:
    r"""The rule for a class paramwise has none for (one per class, so its warnings can name
    it): Adam's :math:`s = \mathrm{lr}/(\sqrt{\hat v}+ε)` on the second moment found in each
    parameter's state (see the module docstring), else :math:`\mathrm{lr}`; each case warns
    once per class (and key)."""
    rule = _GENERIC.get(cls)
    if rule is None:
        def rule(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                 *, foreach: bool) -> float | list[Tensor]:
            return _generic(cls, group, lr, pieces, state, foreach)
        _GENERIC[cls] = rule
    return rule


def _generic(cls: type, group: Mapping[str, Any], lr: float, pieces: Sequence[Piece],
             state: Mapping, foreach: bool) -> float | list[Tensor]:
    eps = _number(group.get("eps"))
    keys = ([_moment_key(group, pc.param, state.get(pc.param, {})) for pc in pieces]
            if eps is not None and eps >= 0 else [None] * len(pieces))
    if not pieces or None in keys:
        warn_unknown(cls)
        return lr
    beta2 = _beta2(group)
    for key in dict.fromkeys(keys):
        _warn_generic(cls, key, beta2)  # type: ignore[arg-type]
    if len(set(keys)) == 1:
        return S.adam_like(lr, pieces, state, keys[0], beta2, eps,  # type: ignore[arg-type]
                           foreach=foreach)
    return [S.adam_like(lr, [pc], state, k, beta2, eps, foreach=False)[0]  # type: ignore[arg-type]
            for pc, k in zip(pieces, keys)]


def _warn_generic(cls: type, key: str, beta2: float | None) -> None:
    if (cls, key) in _WARNED:
        return
    _WARNED.add((cls, key))
    bc = (f"bias-corrected with β₂ = {beta2:g} and its step count" if beta2 is not None
          else "without bias correction (no betas/beta2 in the group)")
    warnings.warn(
        f"paramwise: prox_scale='adaptive' has no rule for {cls.__name__}; it found an "
        f"Adam-like second moment v = state[{key!r}] and uses s = lr/(√v̂ + ε), v̂ {bc}, ε the "
        f"group's eps. That is {cls.__name__}'s step per unit of gradient only if its update "
        f"divides by √v̂ as Adam's does; if not, teach it with paramwise.register_scaling("
        f"{cls.__name__}, rule), or set prox_scale='lr'", stacklevel=user_stacklevel())


def warn_unknown(cls: type) -> None:
    """Say once per class that ``'adaptive'`` fell back to ``lr``, and what that means."""
    if cls in _WARNED:
        return
    _WARNED.add(cls)
    name = cls.__name__
    warnings.warn(
        f"paramwise: prox_scale='adaptive' does not know how {name} scales its steps and found "
        f"no Adam-like second moment in its state ({', '.join(SECOND_MOMENTS)}, with a number "
        f"eps in the group), so the proximal threshold is the plain lr·λ. Its fixed points are "
        f"the regularized problem's only if {name} moves a weight by lr per unit of gradient "
        f"(plain SGD does); where its steps are larger (adaptive, sign-based or normalized "
        f"updates with small gradients) expect fewer exact zeros than the penalty implies, "
        f"where smaller, more. Teach it with paramwise.register_scaling({name}, rule), or "
        f"set prox_scale='lr' to keep lr·λ and silence this", stacklevel=user_stacklevel())


for _cls, _rule in [(_O.SGD, S.sgd), (_O.ASGD, S.asgd), (_O.Adam, _adam), (_O.AdamW, _adam),
                    (_O.NAdam, S.nadam), (_O.RAdam, S.radam), (_O.Adamax, S.adamax),
                    (_O.RMSprop, S.rmsprop), (_O.Adagrad, S.adagrad),
                    (_O.Adadelta, S.adadelta), (_O.SparseAdam, S.sparse_adam)]:
    register_scaling(_cls, _rule)
if hasattr(_O, "Adafactor"):
    register_scaling(_O.Adafactor, S.adafactor)
_BUILTIN: dict[type, Scaling] = dict(_RULES)
for _cls, _den in [(_O.Adam, D.adam_den), (_O.AdamW, D.adam_den), (_O.NAdam, D.nadam_den),
                   (_O.RAdam, D.radam_den), (_O.Adamax, D.adamax_den),
                   (_O.RMSprop, D.rmsprop_den), (_O.Adagrad, D.adagrad_den)]:
    _DENOMS[_cls] = _den
