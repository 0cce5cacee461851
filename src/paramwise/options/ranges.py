"""torch.optim's own value checks, applied to every param group.

torch's constructors range-check the values passed to them (the defaults) and never a param
group's own, so ``Rule("bias", betas=(0.9, 1.5))`` would build and train. paramwise checks each
group's values against the class its parameters go to: per key (:func:`range_problem`, e.g.
0 <= betas[i] < 1, lr >= 0) and, for the checks that involve several options at once
(nesterov needs momentum), by running torch's constructor on the group's options
(:func:`constructor_problem`).

    >>> import torch
    >>> range_problem("lr", -0.1, torch.optim.SGD)
    ('lr must be >= 0', 'e.g. lr=0.001, the default of SGD')
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch

from .keys import _torch_optimizers, optimizer_defaults, optimizer_keys

__all__ = ["torch_class", "range_problem", "constructor_problem"]


# ---------------------------------------------------------------- torch.optim's own value checks
# torch's constructors check these values, but only those passed to the constructor (its
# defaults), never a param group's own: paramwise checks every group's values the same way.
# key -> (test, what the value must be, an example); per class where one checks differently.
Range = tuple[Callable[[Any], bool], str, object]
_GE0: Callable[[Any], bool] = lambda v: v >= 0  # noqa: E731
_RANGES: dict[str, Range] = {
    "lr": (_GE0, ">= 0", 1e-3), "eps": (_GE0, ">= 0", 1e-8),
    "weight_decay": (_GE0, ">= 0", 0.01), "momentum": (_GE0, ">= 0", 0.9),
    "alpha": (_GE0, ">= 0", 0.99), "lr_decay": (_GE0, ">= 0", 0.0),
    "initial_accumulator_value": (_GE0, ">= 0", 0.0), "momentum_decay": (_GE0, ">= 0", 4e-3),
    "betas": (lambda v: all(0 <= b < 1 for b in v), "numbers, each >= 0 and < 1", (0.9, 0.999)),
}
# torch's optimizers unpack betas as a pair (others, e.g. Adan, take three)
_TORCH_BETAS: Range = (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                       "a pair of numbers, each >= 0 and < 1", (0.9, 0.999))
_CLASS_RANGES: dict[str, dict[str, Range]] = {
    "SparseAdam": {"lr": (lambda v: v > 0, "> 0", 1e-3), "eps": (lambda v: v > 0, "> 0", 1e-8)},
    "Adadelta": {"rho": (lambda v: 0 <= v <= 1, "in [0, 1]", 0.9)},
    "Rprop": {"etas": (lambda v: 0 < v[0] < 1 < v[1], "a pair (etaminus, etaplus) with "
                       "0 < etaminus < 1 < etaplus", (0.5, 1.2))},
    "Adafactor": {"eps": (lambda v: (v[0] is None or v[0] >= 0) and v[1] >= 0,
                          "a pair (eps1, eps2), eps1 None or >= 0 and eps2 >= 0", (None, 1e-3)),
                  "beta2_decay": (lambda v: v <= 0, "<= 0", -0.8),
                  "d": (lambda v: v >= 1, ">= 1", 1.0)},
    "Muon": {"adjust_lr_fn": (lambda v: v in (None, "original", "match_rms_adamw"),
                              "None, 'original' or 'match_rms_adamw'", "original")},
}


@cache
def torch_class(cls: type | None) -> type | None:
    """The ``torch.optim`` class whose constructor ``cls`` runs: itself, or the torch class a
    subclass inherits ``__init__`` from (``None`` for any other optimizer)."""
    torch_classes = set(_torch_optimizers().values())
    return next((b for b in (cls.__mro__ if cls is not None else ())
                 if b in torch_classes and b.__init__ is cls.__init__), None)  # type: ignore[misc]


@cache
def _ranges_for(cls: type | None) -> dict[str, Range]:
    """The checks of :data:`_RANGES` / :data:`_CLASS_RANGES` that apply to ``cls``'s options."""
    base = torch_class(cls)
    if base is None:  # any torch.optim optimizer: only checks no class makes an exception to
        return {} if cls is not None else {k: r for k, r in _RANGES.items()
                                           if not any(k in c for c in _CLASS_RANGES.values())}
    own = {"betas": _TORCH_BETAS, **_CLASS_RANGES.get(base.__name__, {})}
    return {k: own.get(k) or _RANGES[k] for k in optimizer_keys(base) or ()
            if k in own or k in _RANGES}


def range_problem(key: str, value: object, cls: type | None) -> tuple[str, str] | None:
    """``(what is wrong, the fix)`` when ``value`` fails the check ``cls``'s constructor applies
    to ``key`` (``cls`` None: the check every torch.optim optimizer taking ``key`` agrees on).
    ``None`` when it passes, or when ``cls`` is not a torch.optim optimizer.

        >>> range_problem("betas", (0.9, 1.5), torch.optim.Adam)
        ('betas must be a pair of numbers, each >= 0 and < 1', 'e.g. betas=(0.9, 0.999), the default of Adam')
    """
    entry = _ranges_for(cls).get(key)
    if entry is None:
        return None
    test, must, example = entry
    try:
        ok = bool(test(value))
    except (TypeError, ValueError, IndexError, RuntimeError):
        ok = False
    if ok:
        return None
    base = torch_class(cls)
    defaults = optimizer_defaults(base) if base is not None else {}
    if key in defaults and test(defaults[key]):
        return f"{key} must be {must}", \
            f"e.g. {key}={defaults[key]!r}, the default of {base.__name__}"  # type: ignore[union-attr]
    return f"{key} must be {must}", f"e.g. {key}={example!r}" + (
        "" if base is not None else " (torch.optim's check; for another optimizer, pass "
        "optimizer=ThatClass)")


#: Options torch's constructors check by range only (the table above) when they are plain
#: floats: groups that differ only in those share one run of the constructor's checks.
_RANGE_ONLY = frozenset({"lr", "eps", "weight_decay", "betas", "alpha", "lr_decay", "rho",
                         "initial_accumulator_value", "momentum_decay"})


def _memo_key(key: str, value: object) -> object:
    if key in _RANGE_ONLY and (type(value) is float or type(value) is tuple
                               and all(type(x) is float for x in value)):  # type: ignore[union-attr]
        return key, "floats"
    try:
        hash(value)
    except TypeError:
        return key, repr(value)
    return key, value


def constructor_problem(cls: type, options: dict[str, object], memo: set | None = None
                        ) -> tuple[str | None, str] | None:
    """torch's constructor of ``cls`` run on one group's ``options`` (as if they were its
    defaults), on a placeholder parameter: ``None`` when it takes them, else ``(the option that
    alone is refused or None, torch's message)``. Only for torch.optim optimizers (another
    class's constructor may need more than options, or do more than check them). ``memo``
    remembers the option sets taken, for groups whose values passed :func:`range_problem`."""
    base = torch_class(cls)
    if base is None:
        return None
    accepted = optimizer_keys(base) or frozenset()
    own = {k: v for k, v in options.items() if k in accepted}
    if own.get("nesterov") and "momentum" in own and not own["momentum"]:
        # a group set to momentum=0: torch's SGD step skips the momentum branch (and with it
        # nesterov), so such a group under nesterov defaults trains as torch would train it
        own = {k: v for k, v in own.items() if k != "nesterov"}
    seen = (cls, *(_memo_key(k, own[k]) for k in sorted(own)))
    if memo is not None and seen in memo:
        return None

    def refused(opts: dict[str, object]) -> str | None:
        # torch's own constructor (the base class's, not a subclass's overrides, which may
        # refuse the placeholder itself, e.g. a dtype check in add_param_group)
        try:
            base([torch.zeros(1, 1, device="cpu", requires_grad=True)], **opts)
        except (TypeError, ValueError) as e:  # not RuntimeError: a device the placeholder lacks
            return str(e)
        return None

    msg = refused(own)
    if msg is not None and refused({}) is not None:
        msg = None  # the constructor refuses the placeholder whatever the options: no opinion
    if msg is None:
        if memo is not None:
            memo.add(seen)
        return None
    return next((k for k in own if refused({k: own[k]})), None), msg
