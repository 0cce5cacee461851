"""Option keys: which keys exist, which optimizer accepts which, and what values are valid.

Known keys for an optimizer are its constructor's keyword arguments (minus ``params``) plus
paramwise's own (:data:`MULTIPLIERS` and the regularization keys of
:mod:`paramwise.regoptions`). Without an optimizer, keys are checked against the union of
every ``torch.optim`` optimizer's arguments, so a typo such as ``weight_deacy`` is caught either way.

    >>> resolve_optimizer("adamw").__name__
    'AdamW'
    >>> check_key("weight_deacy", torch.optim.SGD, where="rule 0 ('bias')")
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: rule 0 ('bias') sets unknown option 'weight_deacy' for SGD (did you mean 'weight_decay'?); ...
"""

from __future__ import annotations

import importlib
import inspect
import math
from functools import cache
from numbers import Real

import torch

from .errors import ParamwiseError, closest
from .regoptions import REG_KEYS

__all__ = [
    "MULTIPLIERS",
    "resolve_optimizer",
    "optimizer_keys",
    "optimizer_defaults",
    "known_keys",
    "check_key",
    "check_value",
]

#: ``<key>_mult`` options: they multiply the resolved value of ``<key>`` (and compose).
MULTIPLIERS: dict[str, str] = {"lr_mult": "lr", "weight_decay_mult": "weight_decay"}

#: Core options whose values must be finite, non-negative real numbers.
REAL_KEYS = frozenset({"lr", "weight_decay", "lr_mult", "weight_decay_mult", "momentum", "dampening",
           "eps", "alpha", "lr_decay", "rho", "initial_accumulator_value"})


def _reg_keys() -> frozenset[str]:
    return frozenset(REG_KEYS)


def paramwise_keys() -> frozenset[str]:
    """Keys paramwise itself understands (multipliers, regularizers, ``optimizer``)."""
    return frozenset(MULTIPLIERS) | _reg_keys() | {"optimizer"}


@cache
def _torch_optimizers() -> dict[str, type]:
    out: dict[str, type] = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and \
                obj is not torch.optim.Optimizer:
            out[name.lower()] = obj
    return out


def _import(path: str) -> object:
    mod_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ParamwiseError(f"optimizer {path!r} cannot be imported ({type(e).__name__}: {e})",
                             fix="use a torch.optim name (adamw, sgd, ...) or an import path "
                             "such as torch.optim.AdamW or mypkg.optim:Lion") from None


def resolve_optimizer(optim: str | type) -> type:
    """A ``torch.optim.Optimizer`` subclass from itself, a case-insensitive name (``"adamw"``) or
    an import path (``"torch.optim.AdamW"``, ``"mypkg.optim:Lion"``)."""
    if isinstance(optim, str) and (":" in optim or "." in optim):
        optim = _import(optim)  # type: ignore[assignment]
    if isinstance(optim, type):
        if issubclass(optim, torch.optim.Optimizer):
            return optim
        raise ParamwiseError(f"{optim.__name__} is not a torch.optim.Optimizer subclass",
                             fix="pass e.g. torch.optim.AdamW or 'adamw'")
    if isinstance(optim, str):
        table = _torch_optimizers()
        key = optim.lower().replace("_", "").replace("-", "")
        if key in table:
            return table[key]
        hit = closest(key, table)
        raise ParamwiseError(
            f"unknown optimizer {optim!r}" + (f" (did you mean {hit[0]!r}?)" if hit else ""),
            fix=f"use one of {', '.join(sorted(table))}, or pass the class itself",
        )
    if isinstance(optim, torch.optim.Optimizer):
        raise ParamwiseError("got an optimizer instance where a class or name was expected",
                             fix=f"pass type(optimizer), i.e. {type(optim).__name__}")
    raise ParamwiseError(f"expected an optimizer class or name, got {type(optim).__name__}",
                         fix="pass e.g. torch.optim.SGD or 'sgd'")


@cache
def optimizer_keys(cls: type) -> frozenset[str] | None:
    """The option keys ``cls`` accepts, or ``None`` when its ``__init__`` takes ``**kwargs``."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return None
    keys = set()
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if name not in ("self", "params") and p.kind is not inspect.Parameter.VAR_POSITIONAL:
            keys.add(name)
    return frozenset(keys)


@cache
def optimizer_defaults(cls: type) -> dict[str, object]:
    """The default values of ``cls``'s constructor options (those that have one)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return {}
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "params") and p.default is not p.empty}


@cache
def _all_torch_keys() -> frozenset[str]:
    keys: set[str] = set()
    for cls in _torch_optimizers().values():
        keys |= optimizer_keys(cls) or set()
    return frozenset(keys)


def known_keys(cls: type | None) -> frozenset[str] | None:
    """Every key valid in a group for ``cls`` (``None``: anything goes)."""
    own = _all_torch_keys() if cls is None else optimizer_keys(cls)
    if own is None:
        return None
    return own | paramwise_keys()


def check_key(key: str, cls: type | None, *, where: str) -> None:
    """Raise if ``key`` is not an option of ``cls`` (or of any torch optimizer when ``cls`` is None)."""
    if not isinstance(key, str):
        raise ParamwiseError(f"{where} has a non-string option key {key!r}")
    if key in ("params", "param_names"):
        raise ParamwiseError(f"{where} sets {key!r}", fix="rules select parameters with their "
                             f"selector, and paramwise fills {key!r} itself; remove the option")
    valid = known_keys(cls)
    if valid is None or key in valid:
        return
    hit = closest(key, valid)
    owner = cls.__name__ if cls is not None else "any torch.optim optimizer"
    fix = (f"valid options for {owner} include {', '.join(sorted(valid - paramwise_keys())[:8])}"
           if not hit else f"use {hit[0]!r}")
    if cls is None:
        fix += ("; if it is an option of a third-party optimizer, pass optimizer=ThatClass so "
                "paramwise checks against its signature")
    raise ParamwiseError(
        f"{where} sets unknown option {key!r} for {owner}"
        + (f" (did you mean {hit[0]!r}?)" if hit else ""),
        fix=fix,
    )


def _is_real(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype.is_floating_point
    return isinstance(value, Real)


def check_value(key: str, value: object, *, where: str) -> None:
    """Reject wrong types, negative or non-finite values for numeric core options."""
    if key == "optimizer":
        try:
            resolve_optimizer(value)  # type: ignore[arg-type]
        except ParamwiseError as e:
            raise ParamwiseError(f"{where} sets optimizer={value!r}: {e.problem}", fix=e.fix
                                 ) from None
    elif key in REAL_KEYS:
        if not _is_real(value):
            raise ParamwiseError(f"{where} sets {key}={value!r} ({type(value).__name__})",
                                 fix=f"{key} must be a real number, e.g. {key}=0.01")
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v) or v < 0:
            raise ParamwiseError(f"{where} sets {key}={v}",
                                 fix=f"{key} must be finite and >= 0")
    elif key == "betas" and not (
        isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_real, value))
    ):
        raise ParamwiseError(f"{where} sets betas={value!r}",
                                 fix="betas must be a pair of numbers, e.g. betas=(0.9, 0.999)")
