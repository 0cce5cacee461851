"""The face: ``param_groups()``, ``optimizer()`` and the lookup of what was built from what.

    >>> import torch.nn as nn, paramwise
    >>> model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))
    >>> opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("bias", weight_decay=0.0)],
    ...                           lr=1e-2, momentum=0.9, weight_decay=1e-5)
    >>> [g["param_names"] for g in opt.param_groups]
    [['0.weight', '2.weight'], ['0.bias', '2.bias']]

``optimizer()`` returns the real ``torch.optim`` instance (never a wrapper) when one optimizer is
in play; when rules send parameters to several (``Rule(..., optimizer="muon")``), a
:class:`~paramwise.hybrid.Hybrid` built from one plain instance per class. When a group carries
regularization options it lowers them to the optimizer's native equivalent where one exists and
attaches step hooks for the rest (:func:`paramwise.attach`).
"""

from __future__ import annotations

import reprlib
import weakref
from collections.abc import Iterable

import torch
from torch import nn

from .errors import ParamwiseError, closest
from .grouping.groups import groups_by_class
from .grouping.perclass import class_name
from .grouping.plan import Plan, make_plan
from .grouping.rules import RuleLike
from .hybrid import Hybrid
from .options.keys import optimizer_keys, paramwise_keys, resolve_optimizer
from .options.regularization import REG_KEYS
from .step.hooks import attach
from .step.lowering import LOWERED_KEY, lower
from .step.monitor import penalty as _penalty
from .step.monitor import stats as _stats

__all__ = ["param_groups", "optimizer", "penalty", "stats", "plan_for", "resolve_target",
           "optimizer_of"]

# optimizer -> the plan it was built from; model -> the last optimizer built for it.
_PLANS: weakref.WeakKeyDictionary[torch.optim.Optimizer, Plan] = weakref.WeakKeyDictionary()
_LAST: weakref.WeakKeyDictionary[nn.Module, weakref.ref] = weakref.WeakKeyDictionary()


def param_groups(
    model: nn.Module,
    rules: Iterable[RuleLike] | RuleLike = (),
    *,
    optimizer: str | type | None = None,
    strict: bool = True,
    include_frozen: bool = False,
    **defaults: object,
) -> list[dict]:
    """Plain torch param groups for ``model`` under ``rules``.

    Each group has ``params``, ``param_names`` and the options resolved from the rules and from
    ``defaults``; options neither sets are left out, so the optimizer's own defaults apply
    exactly as in torch. Groups with identical options are merged, ordered by first appearance
    in ``model.named_parameters()``. Every trainable parameter is in exactly one group.

    ``rules`` and ``defaults`` are as in :func:`paramwise.optimizer`. ``optimizer`` (a class or
    name) checks option keys against its signature; without it keys are checked against every
    ``torch.optim`` optimizer's. ``strict=False`` turns "rule matched no parameter" into a
    warning; ``include_frozen=True`` groups ``requires_grad=False`` parameters too. Rules that
    send parameters to several optimizer classes need :func:`paramwise.optimizer`, which builds
    one optimizer over all of them.

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> rules = [paramwise.Rule("bias | norm", weight_decay=0.0)]
        >>> groups = paramwise.param_groups(model, rules, weight_decay=0.05)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.05), (3, 0.0)]
        >>> opt = torch.optim.AdamW(groups, lr=1e-3)

    Groups may carry regularizer options (``l1``, ``group_lasso``, ...): an optimizer built from
    them by hand needs ``paramwise.attach(opt)`` for those to run (:func:`paramwise.optimizer`
    does it).
    """
    cls = resolve_optimizer(optimizer) if optimizer is not None else None
    plan = make_plan(model, rules, optimizer=cls, strict=strict, include_frozen=include_frozen,
                     **defaults)
    parts = groups_by_class(plan)
    if len(parts) > 1:
        raise ParamwiseError(
            f"the rules send parameters to {len(parts)} optimizers ("
            f"{', '.join(class_name(c) if c else 'the one you will build' for c, _ in parts)}), "
            "and param_groups() returns the "
            "groups of one", fix="build them with paramwise.optimizer(model, default, rules, "
            "...), which returns one torch.optim.Optimizer over all of them")
    return parts[0][1] if parts else []


def optimizer(
    model: nn.Module,
    optim: str | type,
    rules: Iterable[RuleLike] | RuleLike = (),
    *,
    strict: bool = True,
    include_frozen: bool = False,
    **defaults: object,
) -> torch.optim.Optimizer:
    """Build the optimizer ``optim`` over ``model``, with per-parameter options from ``rules``.

    ``optim`` is a ``torch.optim`` class or its name (``"adamw"``, ``"sgd"``, ``"muon"``), or any
    optimizer class, or an import path such as ``"mypkg.optim:Lion"``. ``rules`` is one or a list
    of :class:`paramwise.Rule` and presets (:func:`paramwise.no_decay`,
    :func:`paramwise.layer_decay`, :func:`paramwise.hidden_matrices`), applied in order: a later
    rule overrides what an earlier one set, and multipliers (``lr_mult``) compose.
    ``defaults`` go into every group (and, where they are constructor arguments, into the
    optimizer's own ``defaults``, so ``add_param_group`` inherits them). ``strict`` and
    ``include_frozen`` are as in :func:`paramwise.param_groups`.

    Returns the optimizer itself: a plain instance of ``optim``, or a :class:`paramwise.Hybrid`
    when rules send parameters to other optimizer classes (``Rule(..., optimizer="muon")``).
    Every key and value is checked first, against the class that will read it. Regularization
    options move into the optimizer's own equivalent where it has one (a coupled ``l2`` into
    ``weight_decay``); the rest run in step hooks (:func:`paramwise.attach`).

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
        ...                             torch.nn.Linear(4, 2))
        >>> opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-3,
        ...                           weight_decay=0.05)
        >>> type(opt).__name__, [g["weight_decay"] for g in opt.param_groups]
        ('AdamW', [0.05, 0.0])
        >>> opt.param_groups[1]["param_names"]
        ['0.bias', '1.weight', '1.bias', '2.bias']
    """
    if "optimizer" in defaults:
        raise ParamwiseError("paramwise.optimizer() got optimizer=... as a default option",
                             fix="the default optimizer is the second argument; per-parameter "
                             "ones go in rules: Rule('<selector>', optimizer='muon')")
    cls = resolve_optimizer(optim)
    plan = make_plan(model, rules, optimizer=cls, strict=strict, include_frozen=include_frozen,
                     **defaults)
    parts = groups_by_class(plan)
    parts.sort(key=lambda cg: cg[0] is not cls)  # the default optimizer's part first
    built = [_construct(c, gs, defaults) for c, gs in parts]  # type: ignore[arg-type]
    handles = []
    try:
        for o, has_reg in built:
            if has_reg:
                handles.append(attach(o))
    except ParamwiseError:
        for h in handles:
            h.remove()
        raise
    opt = built[0][0] if len(built) == 1 else Hybrid([o for o, _ in built])
    _PLANS[opt] = plan
    _LAST[model] = weakref.ref(opt)
    return opt


def _construct(cls: type, groups: list[dict], defaults: dict[str, object]
               ) -> tuple[torch.optim.Optimizer, bool]:
    """One plain instance of ``cls`` over ``groups``; the defaults it takes become its own
    ``defaults`` (so ``add_param_group`` inherits them)."""
    accepted = optimizer_keys(cls)
    own_keys = paramwise_keys()
    ctor = {k: v for k, v in defaults.items()
            if k not in own_keys and (accepted is None or k in accepted)}
    has_reg = any(REG_KEYS & g.keys() for g in groups)
    if has_reg:
        groups = lower(groups, cls, ctor)
    try:
        try:
            opt = cls(groups, **ctor)
        except (TypeError, ValueError) as e:
            if isinstance(e, ParamwiseError) or not ctor:
                raise
            # The groups carry every resolved option; the constructor's own checks may misfire
            # on defaults alone (nesterov=True as a default, momentum only in a rule). Run those
            # checks on each group's own options, then build from the groups.
            for g in groups:  # (a **kwargs constructor: the keys it was given as defaults)
                own = {k: v for k, v in g.items() if k in (ctor if accepted is None else accepted)}
                try:
                    cls([torch.zeros(1, requires_grad=True)], **own)
                except (TypeError, ValueError) as ge:
                    names = g.get("param_names", [])
                    raise ParamwiseError(
                        f"{cls.__name__} rejected the options of the group of {names[:3]}"
                        f"{' ...' if len(names) > 3 else ''}: {ge}",
                        fix="check the values passed to paramwise.optimizer() and set by the "
                        "rules (paramwise.report() shows them per group)") from ge
            opt = cls(groups)
    except (TypeError, ValueError) as e:
        if isinstance(e, ParamwiseError):
            raise
        raise ParamwiseError(f"{cls.__name__} rejected the options: {e}",
                             fix="check the values passed to paramwise.optimizer() and set by "
                             "the rules (paramwise.report() shows them per group)") from e
    if accepted is None:  # **kwargs in __init__: the built optimizer's defaults say what it reads
        _check_open_keys(opt, groups)
    return opt, has_reg


def _check_open_keys(opt: torch.optim.Optimizer, groups: list[dict]) -> None:
    valid = set(opt.defaults) | paramwise_keys() | {"params", "param_names", LOWERED_KEY}
    for g in groups:
        for k in g:
            if k not in valid:
                hit = closest(k, [v for v in valid if v in opt.defaults])
                raise ParamwiseError(
                    f"{type(opt).__name__} takes **kwargs, and its defaults have no {k!r}, so it "
                    "would keep the option without reading it"
                    + (f" (did you mean {hit[0]!r}?)" if hit else ""),
                    fix=f"its options are {', '.join(sorted(opt.defaults))}")


def optimizer_of(obj: nn.Module | torch.optim.Optimizer, *, what: str) -> torch.optim.Optimizer:
    """An optimizer itself, or the last one :func:`optimizer` built for a model."""
    if isinstance(obj, torch.optim.Optimizer):
        return obj
    if isinstance(obj, nn.Module):
        ref = _LAST.get(obj)
        opt = ref() if ref is not None else None
        if opt is not None:
            return opt
        raise ParamwiseError(f"{what}(model): paramwise built no optimizer for this model",
                             fix=f"pass the optimizer: paramwise.{what}(optimizer)")
    raise _not_a_target(obj, what)


def _not_a_target(obj: object, what: str) -> ParamwiseError:
    got = f"the string {obj!r}" if isinstance(obj, str) else \
        f"{type(obj).__name__} {reprlib.repr(obj)}"
    name = ", name" if what == "explain" else ""
    plan = (f"; to see the plan of a model before building, paramwise.{what}(model{name}, "
            "rules=[...], optimizer='adamw')" if what in ("report", "explain") else "")
    return ParamwiseError(f"{what}() takes a model or an optimizer, got {got}",
                          fix=f"pass the nn.Module or the torch.optim.Optimizer itself: "
                          f"paramwise.{what}(model{name}) or paramwise.{what}(optimizer{name})"
                          + plan)


def penalty(obj: nn.Module | torch.optim.Optimizer) -> torch.Tensor:
    """The differentiable total penalty of the regularization options (a 0-d tensor).

    ``obj`` is an optimizer, or a model (then the last optimizer :func:`paramwise.optimizer`
    built for it). The sum over every group of its ``l1``, ``l2``, ``group_lasso`` and
    ``l2_to_init`` penalties, on the first parameter's device and dtype (``torch.zeros(())``
    when nothing is configured). The step hooks already apply these terms, so a loss you
    backpropagate with it would count them twice: log it (the regularized objective is the
    loss plus this), or add it to the loss of an optimizer built without the hooks.
    ``l2_to_init`` counts once :func:`paramwise.attach` holds the anchors (the hooks take them
    at the first step).

        >>> import torch, paramwise
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("weight", l1=1e-3)], lr=0.1)
        >>> bool(paramwise.penalty(opt) == 1e-3 * model.weight.abs().sum())
        True
    """
    return _penalty(optimizer_of(obj, what="penalty"))


def stats(obj: nn.Module | torch.optim.Optimizer) -> dict:
    """Per param group (by index), what its regularization does; cheap enough to log often.

    ``obj`` is an optimizer, or a model (then the last optimizer :func:`paramwise.optimizer`
    built for it). Keys per group: ``penalty`` (its share of :func:`paramwise.penalty`),
    ``numel``, ``zeros`` and ``zero_fraction`` (exact zeros), ``nonfinite`` (NaN/inf elements),
    ``norm`` (the L2 norm of all its parameters); with ``group_lasso`` also ``rows`` and
    ``zero_rows`` (all-zero rows along ``group_dim``); with ``max_norm`` also ``max_row_norm``.
    Sums are taken in float64, a chunk at a time; under FSDP2 each rank sums its own shards
    and one ``all_reduce`` makes the numbers global.

        >>> import torch, paramwise
        >>> model = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight[0].zero_()
        >>> opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("weight", group_lasso=0.1)],
        ...                           lr=0.1)
        >>> s = paramwise.stats(opt)[0]
        >>> s["numel"], s["zeros"], s["rows"], s["zero_rows"]
        (8, 4, 2, 1)
    """
    return _stats(optimizer_of(obj, what="stats"))


def plan_for(opt: torch.optim.Optimizer) -> Plan | None:
    """The plan an optimizer was built from by :func:`optimizer`, if any."""
    return _PLANS.get(opt)


def resolve_target(obj: nn.Module | torch.optim.Optimizer, rules, defaults: dict,
                   *, what: str) -> tuple[Plan | None, torch.optim.Optimizer | None]:
    """Map ``report``/``explain``'s first argument to (plan, optimizer).

    An optimizer → its plan (if paramwise built it). A model with ``rules`` → a fresh plan. A
    model without rules → the last optimizer paramwise built for it.
    """
    optim_arg = defaults.pop("optimizer", None)
    cls = resolve_optimizer(optim_arg) if optim_arg is not None else None
    if isinstance(obj, torch.optim.Optimizer):
        if rules is not None or defaults or cls is not None:
            raise ParamwiseError(f"{what}(optimizer, ...) got rules or options as well",
                                 fix=f"pass either the optimizer alone, or the model with its "
                                 f"rules and options to {what}()")
        return _PLANS.get(obj), obj
    if isinstance(obj, nn.Module):
        if rules is not None:
            return make_plan(obj, rules, optimizer=cls, **defaults), None
        ref = _LAST.get(obj)
        opt = ref() if ref is not None else None
        if opt is not None:
            if defaults or cls is not None:
                raise ParamwiseError(
                    f"{what}(model, ...) with options, but paramwise already built an optimizer "
                    "for this model and would show that one",
                    fix=f"pass rules=... with the options to see a new plan, or call {what}(model) "
                    "alone")
            return _PLANS.get(opt), opt
        return make_plan(obj, (), optimizer=cls, **defaults), None
    raise _not_a_target(obj, what)
