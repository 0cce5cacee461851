"""Config files: build an optimizer from a dict, any Mapping (OmegaConf/Hydra) or a YAML file.

The shape mirrors the Python call ``paramwise.optimizer(model, optimizer, rules, **defaults)``::

    optimizer: adamw              # a torch.optim name, or an import path: mypkg.optim:Lion
    lr: 3.0e-4                    # every other top-level key is a default option
    weight_decay: 0.05
    rules:                        # applied in order, exactly like a list of paramwise.Rule
      - preset: no_decay          # presets: no_decay (bias/norm/embedding switches, key)
      - layer_decay: 0.75         #          layer_decay (rate, depth regex); short form
      - select: "module:head"     # a rule: a selector (string or list of strings, or-ed)
        lr_mult: 10               #         and the options it sets
    strict: true                  # optional: a rule that matches nothing is an error
    include_frozen: false         # optional: also group requires_grad=False parameters

``rules`` may also be a mapping from names to rules (order kept), which Hydra can override
one entry at a time (``optimizer.rules.head.lr_mult=5``) or switch off (``rules.head: null``).

Every check of the Python API applies; errors name the config, the rule (``rules[2]`` or
``rules.head``) and the key::

    >>> from_config(nn.Linear(2, 2), {"optimizer": "sgd", "lr": 0.1,
    ...             "rules": [{"select": "bias", "weight_deacy": 0.0}]})
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: config: rules[0] ('bias') sets unknown option 'weight_deacy' for SGD (did you mean 'weight_decay'?); use 'weight_decay'

YAML 1.1 reads ``1e-5`` (no dot) as a string; numeric strings in option values are read as
numbers, and whole numbers for real-valued options (``weight_decay: 0``) as floats, so a
config builds exactly the groups the equivalent Python rules build.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ._configload import _number, _plain, _short, load_config
from .api import optimizer as build
from .errors import ParamwiseError, closest, user_stacklevel
from .grouping.hidden import HiddenMatrices, hidden_matrices
from .grouping.layerdecay import LayerDecay, layer_decay
from .grouping.perclass import check_key_any
from .grouping.rules import Rule, no_decay
from .options.keys import MULTIPLIERS, check_key, check_value, known_keys, resolve_optimizer
from .options.regularization import REG_KEYS

__all__ = ["from_config", "load_config", "PRESETS", "TOP_LEVEL_KEYS"]

#: Top-level keys that are not optimizer options.
TOP_LEVEL_KEYS = ("optimizer", "rules", "strict", "include_frozen")

#: Preset name -> (factory, name of the argument a short form ``{name: value}`` fills).
PRESETS: dict[str, tuple[Callable[..., Rule | LayerDecay | HiddenMatrices], str | None]] = {
    "no_decay": (no_decay, None),
    "layer_decay": (layer_decay, "rate"),
    "hidden_matrices": (hidden_matrices, "optimizer"),
}

# Fixes the core words for Python callers, said the config's way.
_PY_TO_CFG = [
    (re.compile(r"pass (\w+)=\.\.\. to paramwise\.optimizer\(\)/param_groups\(\)"),
     r"add '\1: ...' at the top level of the config"),
    (re.compile(r"pass strict=False"), "set 'strict: false' in the config"),
    (re.compile(r"pass include_frozen=True"), "set 'include_frozen: true' in the config"),
    (re.compile(r"Rule\('([^']*)', \.\.\.\)"), r"{select: '\1', ...}"),
    (re.compile(r"\bthe defaults set\b"), "the top level sets"),
    (re.compile(r"\bthe defaults\b"), "the top level"),
]


# --------------------------------------------------------------------------------- values
def _options(raw: Mapping[str, object], cls: type | None | list[type | None], where: str
             ) -> dict[str, object]:
    out = {}
    for k, v in raw.items():
        v = _number(k, v, where)
        if k == "optimizer" and isinstance(v, str):  # resolved here: a config never imports
            v = _resolve_optimizer(v, where)
        if isinstance(cls, list):  # several optimizers in play: some class must take it
            check_key_any(k, cls, where=where)
        else:
            check_key(k, cls, where=where)
        check_value(k, v, where=where)
        out[k] = v
    return out


#: The modules a config being read may import (``from_config(..., allow_imports=...)``).
_ALLOWED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("allowed", default=())


def _may_import(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in _ALLOWED.get())


def _resolve_optimizer(name: object, src: str) -> type:
    if not isinstance(name, (str, type)):
        raise ParamwiseError(f"{src}: 'optimizer' is {_short(name)} ({type(name).__name__})",
                             fix="write e.g. optimizer: adamw")
    try:
        return resolve_optimizer(name, allow_import=_may_import)
    except ParamwiseError as e:
        raise _said(e, src) from None


# --------------------------------------------------------------------------------- rules
def _rule_entries(rules: object, src: str) -> list[tuple[str, object]]:
    """(location, entry) pairs from a list or a name → rule mapping (``null`` entries dropped)."""
    if rules is None:
        return []
    if isinstance(rules, list):
        return [(f"rules[{i}]", r) for i, r in enumerate(rules)]
    if isinstance(rules, dict):
        return [(f"rules.{k}", r) for k, r in rules.items() if r is not None]
    raise ParamwiseError(f"{src}: 'rules' is a {type(rules).__name__}, not a list",
                         fix="write rules as a list of mappings, e.g. "
                         "rules: [{select: bias, weight_decay: 0.0}]")


def _preset(name: str, args: object, where: str, short: bool) -> Rule | LayerDecay | HiddenMatrices:
    factory, first = PRESETS[name]
    params = inspect.signature(factory).parameters
    if isinstance(args, dict):
        kwargs = dict(args)
    elif short and first is not None:
        kwargs = {first: args}
    elif short and args is True:
        kwargs = {}
    else:
        form = (f"{{{name}: {{{first}: ...}}}} or {{{name}: <{first}>}}" if first
                else f"{{preset: {name}}} or {{{name}: {{bias: true, norm: false}}}}")
        raise ParamwiseError(f"{where} ({name}) has the value {_short(args)}", fix=f"write {form}")
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k in kwargs:
        if k not in params and not open_ended:
            hit = closest(k, params)
            raise ParamwiseError(
                f"{where} ({name}) has unknown key {k!r}"
                + (f" (did you mean {hit[0]!r}?)" if hit else ""),
                fix=f"{name} takes {', '.join(params)}")
        if k == "depth" and not isinstance(kwargs[k], str):
            raise ParamwiseError(f"{where} (layer_decay) key 'depth' is {_short(kwargs[k])}",
                                 fix=r"in a config, depth is a regex capturing the block "
                                 r"index, e.g. depth: 'blocks\.(\d+)\.'")
    for k in ("rate", "min_scale"):
        if k in kwargs:
            kwargs[k] = _number(k, kwargs[k], f"{where} ({name})")
    if name == "hidden_matrices":
        kwargs = {k: _number(k, v, f"{where} ({name})") for k, v in kwargs.items()}
        if isinstance(kwargs.get("optimizer"), str):
            kwargs["optimizer"] = _resolve_optimizer(kwargs["optimizer"], where)
    try:
        return factory(**kwargs).with_origin(where)
    except TypeError as e:
        raise ParamwiseError(f"{where} ({name}): {e}", fix=f"{name} takes {', '.join(params)}"
                             ) from None
    except ParamwiseError as e:
        raise _said(e, f"{where} ({name})") from None


def _rule(entry: object, where: str, cls: type | None | list[type | None]) -> Rule | LayerDecay | HiddenMatrices:
    if not isinstance(entry, dict):
        fix = "write a mapping: {select: '<selector>', <option>: <value>}"
        if isinstance(entry, str) and entry in PRESETS:
            fix = f"write {{preset: {entry}}}"
        raise ParamwiseError(f"{where} is {_short(entry)}, not a rule", fix=fix)
    if "preset" in entry:
        name, args = entry["preset"], {k: v for k, v in entry.items() if k != "preset"}
        if name not in PRESETS:
            raise ParamwiseError(f"{where} has unknown preset {name!r}"
                                 + (f" (did you mean {h[0]!r}?)"
                                    if (h := closest(str(name), PRESETS)) else ""),
                                 fix=f"presets are {', '.join(PRESETS)}")
        return _preset(name, args, where, short=False)
    if len(entry) == 1 and next(iter(entry)) in PRESETS:
        name = next(iter(entry))
        return _preset(name, entry[name], where, short=True)
    if "select" not in entry:
        hit = closest("select", entry, cutoff=0.5)
        if hit:
            fix = f"rename {hit[0]!r} to 'select'"
        else:
            fix = ("add select: '<selector>' (e.g. select: 'bias | norm'), or use a preset: "
                   f"{', '.join(f'{{preset: {p}}}' for p in PRESETS)}")
        raise ParamwiseError(f"{where} has no 'select' key (keys: {', '.join(entry)})", fix=fix)
    select = entry["select"]
    if isinstance(select, list) and select and all(isinstance(s, str) for s in select):
        select = " | ".join(f"({s})" for s in select)
    if not isinstance(select, str):
        raise ParamwiseError(f"{where} key 'select' is {_short(select)} ({type(select).__name__})",
                             fix="write a selector string such as 'bias | norm', or a list "
                             "of them")
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
        raise ParamwiseError(f"{where} key 'label' is {_short(label)}", fix="a label is a string")
    raw = {k: v for k, v in entry.items() if k not in ("select", "label")}
    text = label or select
    if not raw:
        raise ParamwiseError(f"{where} ({text!r}) sets no option",
                             fix="add the options it should set, e.g. weight_decay: 0.0")
    try:
        opts = _options(raw, cls, where=f"{where} ({text!r})")
        return Rule(select, label=label, origin=where, **opts)
    except ParamwiseError as e:
        if e.problem.startswith(("bad selector", "a selector", "a rule's selector")):
            raise _said(e, f"{where} key 'select'") from None
        raise


def _in_play(cls: type, rules: object, src: str) -> list[type | None]:
    """The default class, then those the rule entries name (``optimizer:`` in a rule, the
    ``hidden_matrices`` preset), so options are checked against every class in play."""
    out: list[type | None] = [cls]
    entries = rules if isinstance(rules, list) else \
        list(rules.values()) if isinstance(rules, dict) else []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = None
        if isinstance(entry.get("optimizer"), (str, type)) and "select" in entry:
            name = entry["optimizer"]
        elif entry.get("preset") == "hidden_matrices":
            name = entry.get("optimizer", "muon")
        elif "hidden_matrices" in entry and len(entry) == 1:
            args = entry["hidden_matrices"]
            name = args.get("optimizer", "muon") if isinstance(args, dict) else \
                args if isinstance(args, str) else "muon"
        if isinstance(name, (str, type)):
            try:
                found = resolve_optimizer(name, allow_import=_may_import)
            except ParamwiseError:
                continue  # reported where the rule is read, with its location
            if found not in out:
                out.append(found)
    return out


def _in_config_words(msg: str) -> str:
    """The core's words (rules already named by their ``origin``), with the fixes it gives
    Python callers said the config's way."""
    for rx, repl in _PY_TO_CFG:
        msg = rx.sub(repl, msg)
    return msg


def _said(e: ParamwiseError, src: str) -> ParamwiseError:
    """``e`` said from ``src`` (the file, a rule) in the config's words, its problem, fix and
    detail kept apart."""
    return ParamwiseError(f"{src}: {_in_config_words(e.problem)}", detail=e.detail,
                          fix=_in_config_words(e.fix) if e.fix else None)


# --------------------------------------------------------------------------------- face
def from_config(model: nn.Module, cfg: Mapping | str | os.PathLike, *,
                allow_imports: Iterable[str] = (), **overrides: object) -> torch.optim.Optimizer:
    """Build the optimizer a config describes: the YAML (or dict) form of
    ``paramwise.optimizer(model, optimizer, rules, **defaults)``::

        optimizer: adamw              # a torch.optim name, or an import path: mypkg.optim:Lion
        lr: 3.0e-4                    # every other top-level key is a default option
        weight_decay: 0.05
        rules:                        # applied in order, exactly like a list of paramwise.Rule
          - preset: no_decay          # presets: no_decay, layer_decay, hidden_matrices
          - layer_decay: 0.75         # a preset's short form
          - select: "module:head"     # a rule: a selector (string or list of strings, or-ed)
            lr_mult: 10               #         and the options it sets
        strict: true                  # optional: a rule that matches nothing is an error
        include_frozen: false         # optional: also group requires_grad=False parameters

    ``rules`` may also be a mapping from names to rules (order kept), which Hydra can override
    one entry at a time (``optimizer.rules.head.lr_mult=5``) or switch off
    (``rules.head: null``). Every check of the Python API applies; errors name the config, the
    rule (``rules[2]`` or ``rules.head``) and the key.

    ``cfg`` is a dict, any Mapping (an OmegaConf ``DictConfig`` included) or a path to a YAML
    file. ``overrides`` replace top-level keys (``from_config(model, "optim.yaml", lr=1e-3)``).
    Returns the plain ``torch.optim`` optimizer, exactly as :func:`paramwise.optimizer` would.

    Nothing in a config runs code: an optimizer given as an import path (``mypkg.optim:Lion``)
    is looked up among the modules already imported, and a module that is not is imported only
    when ``allow_imports`` names it (or a package above it); ``type:`` selectors match the
    classes in the model, never by importing. YAML is read with a safe loader that refuses
    duplicate keys; aliases are shared, never expanded.

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> opt = paramwise.from_config(model, {"optimizer": "adamw", "lr": 3e-4,
        ...                                     "weight_decay": 0.05,
        ...                                     "rules": [{"preset": "no_decay"}]})
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.05, 0.0]
    """
    if not isinstance(model, nn.Module):
        raise ParamwiseError(f"from_config(model, cfg) takes the model first, got "
                             f"{type(model).__name__}", fix="call from_config(model, cfg)")
    if isinstance(allow_imports, str) or not all(isinstance(a, str) for a in allow_imports):
        raise ParamwiseError(f"allow_imports={allow_imports!r}",
                             fix="pass a list of module names, e.g. allow_imports=['mypkg']")
    token = _ALLOWED.set(tuple(allow_imports))
    try:
        return _from_config(model, cfg, overrides)
    finally:
        _ALLOWED.reset(token)


def _from_config(model: nn.Module, cfg: Mapping | str | os.PathLike,
                 overrides: dict[str, object]) -> torch.optim.Optimizer:
    data, src = load_config(cfg)
    data.update(_plain(overrides, "overrides"))  # type: ignore[arg-type]
    if "optimizer" not in data:
        hit = closest("optimizer", data, cutoff=0.7)
        raise ParamwiseError(f"{src} has no 'optimizer' key"
                             + (f" (did you mean to write 'optimizer' for {hit[0]!r}?)"
                                if hit else ""),
                             fix="add e.g. 'optimizer: adamw' (any torch.optim name or an "
                             "import path)")
    cls = _resolve_optimizer(data["optimizer"], src)
    in_play = _in_play(cls, data.get("rules"), src)
    check_as: type | None | list[type | None] = in_play if len(in_play) > 1 else cls

    valids = [known_keys(c) for c in in_play]
    valid = None if any(v is None for v in valids) else frozenset().union(*valids)
    owners = " / ".join(c.__name__ for c in in_play if c is not None)
    for key in data:
        if key in TOP_LEVEL_KEYS or valid is None or key in valid:
            continue
        # what a top-level key may be: multipliers belong in rules, 'optimizer' is listed once
        own = sorted(valid - REG_KEYS - MULTIPLIERS.keys() - {"optimizer", "param_names"})
        hit = closest(key, [*TOP_LEVEL_KEYS, *own, *REG_KEYS])
        raise ParamwiseError(
            f"{src}: unknown top-level key {key!r}" + (f" (did you mean {hit[0]!r}?)" if hit else ""),
            fix=f"top-level keys are {', '.join(TOP_LEVEL_KEYS)}, {owners}'s options "
            f"({', '.join(own)}) and paramwise's regularizers ({', '.join(sorted(REG_KEYS))})")
    flags = {}
    for flag in ("strict", "include_frozen"):
        if flag in data:
            if not isinstance(data[flag], bool):
                raise ParamwiseError(f"{src}: {flag!r} is {_short(data[flag])}",
                                     fix=f"write {flag}: true or {flag}: false")
            flags[flag] = data[flag]
    defaults = {k: v for k, v in data.items() if k not in TOP_LEVEL_KEYS}
    defaults = _options(defaults, check_as, where=f"{src}: the top level")

    rules = []
    for where, entry in _rule_entries(data.get("rules"), src):
        try:
            rules.append(_rule(entry, where, check_as))
        except ParamwiseError as e:
            raise _said(e, src) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = build(model, cls, rules, **flags, **defaults)
        except ParamwiseError as e:
            raise _said(e, src) from None
    for w in caught:  # the plan's warnings, in the config's words
        warnings.warn(f"{src}: {_in_config_words(str(w.message))}", w.category,
                      stacklevel=user_stacklevel())
    return opt
