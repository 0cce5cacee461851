r"""The regularization options a param group may carry, and their checks.

The keys (:data:`REG_KEYS`, public API) and what each one means are in
:mod:`paramwise.step.regularizers`; this module says which values are valid. :func:`check_options`
runs when groups are built and when :func:`paramwise.attach` is called (against each
parameter's global shape), :func:`check_values` at every step (a value changed by hand after
the build is caught before the step changes anything). Both return a message that names the
value and says what would be valid, or ``None``; the callers add the rule / group and parameter
and raise :class:`~paramwise.errors.ParamwiseError`. Example::

    >>> print(check_values({"l1": -1e-4}))
    l1=-0.0001 is not a finite number >= 0; use a strength >= 0 (0 turns l1 off)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

from torch import Tensor

__all__ = ["REG_KEYS", "STRENGTH_KEYS", "PROX_SCALES", "check_options", "check_values"]

#: Regularization option keys a param group may carry (public API).
REG_KEYS: frozenset[str] = frozenset({
    "l2", "l1", "prox", "prox_scale", "decoupled_decay", "group_lasso", "group_dim",
    "max_norm", "max_norm_dim", "l2_to_init",
})
#: Keys whose value is a strength λ ≥ 0 (0 turns the term off).
STRENGTH_KEYS: tuple[str, ...] = ("l2", "l1", "decoupled_decay", "group_lasso", "l2_to_init")
#: Values of ``prox_scale``: the optimizer's own per-element step scale, or the plain ``lr``.
PROX_SCALES: tuple[str, ...] = ("adaptive", "lr")


def _is_real(v: object) -> bool:
    if isinstance(v, Tensor):
        return v.numel() == 1 and v.dtype.is_floating_point
    return isinstance(v, Real) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _set(opts: Mapping[str, object], key: str) -> bool:
    return opts.get(key) is not None


def check_values(opts: Mapping[str, object]) -> str | None:
    """:func:`check_options` without the shape checks (what can be checked on a group alone)."""
    for key in STRENGTH_KEYS:
        if not _set(opts, key):
            continue
        v = opts[key]
        if not _is_real(v):
            return (f"{key}={v!r} is a {type(v).__name__}; a strength must be a number >= 0, "
                    f"e.g. {key}=1e-4")
        if not math.isfinite(float(v)) or float(v) < 0:  # type: ignore[arg-type]
            return (f"{key}={v} is not a finite number >= 0; use a strength >= 0 "
                    f"(0 turns {key} off)")
    if _set(opts, "prox") and not isinstance(opts["prox"], bool):
        return f"prox={opts['prox']!r} must be True or False"
    if _set(opts, "prox_scale") and opts["prox_scale"] not in PROX_SCALES:
        return (f"prox_scale={opts['prox_scale']!r} is not one of 'adaptive' (the optimizer's "
                f"own per-element step scale) or 'lr' (plain lr·λ); use one of those")
    if _set(opts, "max_norm"):
        c = opts["max_norm"]
        if not _is_real(c) or not math.isfinite(float(c)) or float(c) <= 0:  # type: ignore[arg-type]
            return f"max_norm={c!r} must be a finite number > 0 (the largest allowed row norm)"
    for key in ("group_dim", "max_norm_dim"):
        if _set(opts, key) and not _is_int(opts[key]):
            return f"{key}={opts[key]!r} must be an int (a dimension index such as 0 or -1)"
    if opts.get("prox") is True and not (_set(opts, "l1") or _set(opts, "group_lasso")):
        return ("prox=True but neither l1 nor group_lasso is set, and only those have a proximal "
                "form; set l1=/group_lasso= for these parameters, or remove prox")
    return None


def check_options(opts: Mapping[str, object], shape: tuple[int, ...]) -> str | None:
    """The first problem with regularization ``opts`` for a parameter of (global) ``shape``, or None.

    Checks: strengths are finite numbers ≥ 0; ``prox`` is a bool; ``prox_scale`` is ``'adaptive'``
    or ``'lr'``; ``max_norm`` > 0; ``group_dim`` / ``max_norm_dim`` are ints in range for
    ``shape`` (checked only where their regularizer is set); group lasso needs ≥ 2 dims (on a 1-d
    tensor every element would be its own group, i.e. plain l1); max-norm needs ≥ 1 dim.
    ``prox=True`` set explicitly with neither ``l1`` nor ``group_lasso`` is an error (nothing would
    be proximal); ``prox=False`` or ``prox_scale`` alone are accepted. Keys that are absent or
    None are off and not checked. Other keys are ignored.

        >>> check_options({"l1": 1e-4}, (64, 32)) is None
        True
        >>> print(check_options({"group_lasso": 1e-3}, (64,)))  # doctest: +ELLIPSIS
        group_lasso needs a parameter with >= 2 dims to group its rows, but this one has shape (64,)...
    """
    problem = check_values(opts)
    if problem:
        return problem
    ndim = len(shape)
    if _set(opts, "group_lasso"):
        if ndim < 2:
            return (f"group_lasso needs a parameter with >= 2 dims to group its rows, but this one "
                    f"has shape {tuple(shape)} (each element would be its own group, which is l1); "
                    f"use l1= here, or exclude it from the rule (e.g. select 'ndim>=2')")
        d = opts.get("group_dim", 0)
        if not -ndim <= d < ndim:  # type: ignore[operator]
            return (f"group_dim={d} is out of range for shape {tuple(shape)}; use a dim in "
                    f"[{-ndim}, {ndim - 1}] (0 = output rows / channels)")
    if _set(opts, "max_norm"):
        if ndim < 1:
            return "max_norm needs a parameter with >= 1 dim, but this one is a scalar; " \
                   "exclude it from the rule"
        d = opts.get("max_norm_dim", 0)
        if not -ndim <= d < ndim:  # type: ignore[operator]
            return (f"max_norm_dim={d} is out of range for shape {tuple(shape)}; use a dim in "
                    f"[{-ndim}, {ndim - 1}] (0 = one norm per output row / channel)")
    return None
