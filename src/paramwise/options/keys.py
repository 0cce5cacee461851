"""Option keys: which keys exist, which optimizer accepts which, and what values are valid.

Known keys for an optimizer are its constructor's keyword arguments (minus ``params``) plus
paramwise's own (:data:`MULTIPLIERS` and the regularization keys of
:mod:`paramwise.options.regularization`). Without an optimizer, keys are checked against the union of
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
import sys
from collections.abc import Callable
from functools import cache
from numbers import Real

import torch

from ..errors import ParamwiseError, closest
from .regularization import REG_KEYS

__all__ = [
    "MULTIPLIERS",
    "resolve_optimizer",
    "optimizer_keys",
    "optimizer_defaults",
    "known_keys",
    "check_key",
    "check_value",
    "sets",
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


#: Who may be imported to resolve an optimizer path: ``True`` (Python callers), or a
#: predicate on the module name (config files: only what the caller allowed).
ImportPolicy = bool | Callable[[str], bool]


def _import(path: str, allow: ImportPolicy = True) -> object:
    mod_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if mod_name not in sys.modules and not (allow is True or (callable(allow) and allow(mod_name))):
        top = mod_name.split(".")[0]
        raise ParamwiseError(
            f"optimizer {path!r} lives in module {mod_name!r}, which is not imported, and a "
            "config file never imports a module (its import-time code would run)",
            fix=f"import {mod_name} in your script before building, or allow it: "
            f"from_config(..., allow_imports=['{top}']) / paramwise inspect --allow-import {top}")
    try:
        mod = sys.modules.get(mod_name) or importlib.import_module(mod_name)
        if allow is not True and not (callable(allow) and allow(mod_name)):
            # no module __getattr__ either: a lazy package would import a submodule
            return inspect.getattr_static(mod, attr)
        return getattr(mod, attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ParamwiseError(f"optimizer {path!r} cannot be imported ({type(e).__name__}: {e})",
                             fix="use a torch.optim name (adamw, sgd, ...) or an import path "
                             "such as torch.optim.AdamW or mypkg.optim:Lion") from None


def resolve_optimizer(optim: str | type, *, allow_import: ImportPolicy = True) -> type:
    """A ``torch.optim.Optimizer`` subclass from itself, a case-insensitive name (``"adamw"``) or
    an import path (``"torch.optim.AdamW"``, ``"mypkg.optim:Lion"``). ``allow_import`` (a bool
    or a predicate on the module name) says whether a module not yet imported may be."""
    if isinstance(optim, str) and (":" in optim or "." in optim):
        optim = _import(optim, allow_import)  # type: ignore[assignment]
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


def sets(where: str) -> str:
    """``where`` with the verb that agrees with it: ``"the defaults set"``, ``"rule 0 ('bias')
    sets"``."""
    return f"{where} set" if where.endswith("the defaults") else f"{where} sets"


def check_key(key: str, cls: type | None, *, where: str) -> None:
    """Raise if ``key`` is not an option of ``cls`` (or of any torch optimizer when ``cls`` is None)."""
    if not isinstance(key, str):
        raise ParamwiseError(f"{where} has option key {key!r} ({type(key).__name__}), not a "
                             "string", fix="option keys are option names, e.g. {'lr': 0.1}")
    if key in ("params", "param_names"):
        raise ParamwiseError(f"{sets(where)} {key!r}", fix="rules select parameters with their "
                             f"selector, and paramwise fills {key!r} itself; remove the option")
    valid = known_keys(cls)
    if valid is None or key in valid:
        return
    # a multiplier is no fix when its base key is what the optimizer lacks (LBFGS, Rprop)
    hit = closest(key, [k for k in valid if MULTIPLIERS.get(k) not in (key,)
                        and (k not in MULTIPLIERS or MULTIPLIERS[k] in valid)])
    if key == "weight_decay" and cls is not None:
        raise ParamwiseError(
            f"{sets(where)} weight_decay, but {cls.__name__} has no weight decay",
            fix="use paramwise's own: l2=... (coupled) or decoupled_decay=..., e.g. "
            "no_decay(key='l2') with l2=... as a default")
    owner = cls.__name__ if cls is not None else "any torch.optim optimizer"
    fix = (f"valid options for {owner} include {', '.join(sorted(valid - paramwise_keys())[:8])}"
           if not hit else f"use {hit[0]!r}")
    if cls is None:
        fix += ("; if it is an option of a third-party optimizer, pass optimizer=ThatClass so "
                "paramwise checks against its signature")
    raise ParamwiseError(
        f"{sets(where)} unknown option {key!r} for {owner}"
        + (f" (did you mean {hit[0]!r}?)" if hit else ""),
        fix=fix,
    )


@cache
def bool_keys() -> frozenset[str]:
    """Options whose default is a bool in some ``torch.optim`` optimizer (``maximize``,
    ``amsgrad``, ``nesterov``, ``foreach`` ...), plus paramwise's ``prox``: their values must be
    real bools or ``None`` (torch's "use the default"), never strings such as ``"False"``
    (which Python takes as true)."""
    keys = {"prox", "foreach", "fused"}
    for cls in _torch_optimizers().values():
        keys |= {k for k, v in optimizer_defaults(cls).items() if isinstance(v, bool)}
    return frozenset(keys)


def bool_problem(key: str, value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return None
    shown = f"the string {value!r}" if isinstance(value, str) else \
        f"{value!r} ({type(value).__name__})"
    return f"{key} must be True or False, not {shown}"


def _is_real(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype.is_floating_point
    return isinstance(value, Real)


def check_value(key: str, value: object, *, where: str) -> None:
    """Reject wrong types, negative or non-finite values for numeric core options."""
    if key in bool_keys():
        problem = bool_problem(key, value)
        if problem:
            raise ParamwiseError(f"{sets(where)} {key}={value!r}: {problem}",
                                 fix=f"write {key}=True or {key}=False (in YAML: {key}: true, "
                                 "unquoted)")
    if key == "optimizer":
        try:
            resolve_optimizer(value)  # type: ignore[arg-type]
        except ParamwiseError as e:
            raise ParamwiseError(f"{sets(where)} optimizer={value!r}: {e.problem}", fix=e.fix
                                 ) from None
    elif key == "eps" and isinstance(value, (tuple, list)):  # Adafactor's (eps1, eps2)
        if not all(e is None or (_is_real(e) and 0 <= float(e) < math.inf) for e in value):
            raise ParamwiseError(f"{sets(where)} eps={value!r}", fix="eps is a number >= 0, or "
                                 "for Adafactor a pair (eps1, eps2) of numbers >= 0 (eps1 may "
                                 "be None), e.g. eps=(None, 0.001)")
    elif key in REAL_KEYS:
        if not _is_real(value):
            raise ParamwiseError(f"{sets(where)} {key}={value!r} ({type(value).__name__})",
                                 fix=f"{key} must be a real number, e.g. {key}=0.01")
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v) or v < 0:
            raise ParamwiseError(f"{sets(where)} {key}={v}",
                                 fix=f"{key} must be finite and >= 0")
    elif key == "betas" and not (  # a pair for torch's optimizers (checked per class), three
        isinstance(value, (tuple, list)) and len(value) >= 2 and all(map(_is_real, value))
    ):                              # for some others' (pytorch-optimizer's Adan, AdEMAMix)
        raise ParamwiseError(f"{sets(where)} betas={value!r}",
                             fix="betas must be a tuple of numbers, two (three for some "
                             "optimizers, e.g. Adan), e.g. betas=(0.9, 0.999)")
