"""A saved checkpoint read by parameter name, its structure checked whole before anything loads.

:func:`paramwise.load_state_dict` (and :func:`paramwise.load_dcp`, which ends in it) call
:func:`parse`, then the checks of :mod:`paramwise.state.statecheck`, before they touch the
optimizer, so a malformed or corrupt checkpoint raises a
:class:`~paramwise.errors.ParamwiseError` naming the key path
(``checkpoint['state']['0.weight']['exp_avg_sq']``), the parameter and a fix, and the
optimizer's state and param groups stay as they were. Checked here:

- **structure**: ``state`` a mapping of per-parameter dicts keyed by name (or by the integer
  ids its param groups list), ``param_groups`` a list of dicts whose ``params`` are all names or
  all ids (ids with ``param_names``), option keys strings;
- **duplicates**: a parameter listed in two saved groups (or twice in one), two state entries
  for one name.

    >>> parse({"state": 5, "param_groups": []})
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: checkpoint['state'] is an int (5), expected a mapping {parameter name: {state key: value}}; pass paramwise.state_dict(opt) or optimizer.state_dict() as saved
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import ParamwiseError, did_you_mean, user_stacklevel
from ..step.anchors import ANCHORS_KEY

__all__ = ["ANCHORS_KEY", "NOT_OPTIONS", "Saved", "keep_keys", "parse"]

# ANCHORS_KEY: the top-level key of the ``l2_to_init`` anchors (``{name: w0}``), beside
# ``state``/``param_groups``; the key under which the step hooks put them (by index) in
# ``opt.state_dict()`` (paramwise.step.anchors).
NOT_OPTIONS = ("params", "param_names")
_RESAVE = "pass paramwise.state_dict(opt) or optimizer.state_dict() as saved"
_CORRUPT = ("the checkpoint is corrupt or was edited: re-save it from the run that wrote it, or "
            "delete this entry (del ckpt['state'][{key!r}]) so the parameter starts fresh")


def _what(v: object) -> str:
    text = repr(v)
    return f"a{'n' if type(v).__name__[0] in 'aeiou' else ''} {type(v).__name__}" + (
        f" ({text})" if len(text) <= 40 else "")


def _path(*keys: object) -> str:
    return "checkpoint" + "".join(f"[{k!r}]" for k in keys)


@dataclass
class Saved:
    """A parsed checkpoint: ``groups`` as (options, names), ``state`` and ``anchors`` by name,
    ``key`` the key each name's state has in the checkpoint (a name or an integer id),
    ``group_of`` each listed name's group index."""

    groups: list[tuple[dict, list[str]]] = field(default_factory=list)
    group_of: dict[str, int] = field(default_factory=dict)
    state: dict[str, Mapping] = field(default_factory=dict)
    anchors: dict[str, object] = field(default_factory=dict)
    key: dict[str, object] = field(default_factory=dict)


def parse(state: object) -> Saved:
    """Validate a checkpoint's structure and read it by parameter name (see the module doc)."""
    if not isinstance(state, Mapping) or "state" not in state or "param_groups" not in state:
        keys = list(state)[:3] if isinstance(state, Mapping) else type(state).__name__
        raise ParamwiseError(
            f"expected an optimizer state dict with 'state' and 'param_groups', got {keys}",
            fix="pass paramwise.state_dict(opt), optimizer.state_dict() of a paramwise "
            "optimizer, or get_optimizer_state_dict(...) without flatten_optimizer_state_dict")
    raw_state, raw_groups = state["state"], state["param_groups"]
    if not isinstance(raw_state, Mapping):
        raise ParamwiseError(f"{_path('state')} is {_what(raw_state)}, expected a mapping "
                             "{parameter name: {state key: value}}", fix=_RESAVE)
    if not isinstance(raw_groups, (list, tuple)):
        raise ParamwiseError(f"{_path('param_groups')} is {_what(raw_groups)}, expected a list "
                             "of group dicts", fix=_RESAVE)
    out = Saved()
    id_to_name: dict[int, str] = {}
    group_of = out.group_of
    for gi, g in enumerate(raw_groups):
        names = _group(gi, g, id_to_name)
        for n in names:
            if n in group_of:
                where = (f"twice in saved param group {gi}" if group_of[n] == gi else
                         f"in saved param groups {group_of[n]} and {gi}")
                raise ParamwiseError(
                    f"parameter {n!r} is listed {where}; a parameter belongs to one group",
                    fix="this checkpoint was edited or merged by hand: remove the parameter "
                    "from all but one group (or re-save it with paramwise.state_dict(opt))")
            group_of[n] = gi
        out.groups.append(({k: v for k, v in g.items() if k not in NOT_OPTIONS}, names))
    for k, v in raw_state.items():
        n = _name(("state", k), k, id_to_name)
        if n in out.state:
            raise ParamwiseError(
                f"{_path('state', k)} and {_path('state', out.key[n])} are both the state of "
                f"parameter {n!r}", fix="keep one of the two entries")
        if not isinstance(v, Mapping) or not all(isinstance(sk, str) for sk in v):
            bad = v if not isinstance(v, Mapping) else next(sk for sk in v if not isinstance(sk, str))
            raise ParamwiseError(
                f"{_path('state', k)} (parameter {n!r}) is {_what(v)}, expected a dict "
                "{state key: value} such as {'step': ..., 'exp_avg': ...}" if bad is v else
                f"{_path('state', k)} (parameter {n!r}) has the key {bad!r}; state keys are "
                "strings such as 'step' or 'exp_avg'", fix=_RESAVE)
        out.state[n], out.key[n] = v, k
    anchors = state.get(ANCHORS_KEY) or {}
    if not isinstance(anchors, Mapping):
        raise ParamwiseError(f"{_path(ANCHORS_KEY)} is {_what(anchors)}, expected a mapping "
                             "{parameter name: tensor} (the l2_to_init anchors)", fix=_RESAVE)
    for k, a in anchors.items():
        n = _name((ANCHORS_KEY, k), k, id_to_name)
        if not isinstance(a, torch.Tensor):
            raise ParamwiseError(f"{_path(ANCHORS_KEY, k)} (the l2_to_init anchor of {n!r}) is "
                                 f"{_what(a)}, expected a tensor", fix=_RESAVE)
        out.anchors[n] = a
    return out


def keep_keys(keep: object, saved: Saved) -> frozenset[str] | None:
    """``keep_saved_options`` as keys: None (none), {"*"} (all) or the given names; a name no
    saved group has is an error when it looks like a typo of one that does, else a warning."""
    if keep is False or keep is None:
        return None
    if keep is True:
        return frozenset({"*"})
    items = [keep] if isinstance(keep, str) else list(keep) if isinstance(keep, Iterable) \
        and not isinstance(keep, (bytes, Mapping)) else None
    if not items or not all(isinstance(k, str) for k in items):
        raise ParamwiseError(f"keep_saved_options={keep!r} is not True, False or option names",
                             fix="pass True (all saved options), False (none) or names such as "
                             "('lr', 'initial_lr')")
    have = {k for opts, _ in saved.groups for k in opts}
    for k in sorted(set(items) - have):
        if hint := did_you_mean(k, have):
            raise ParamwiseError(f"keep_saved_options names {k!r}, which no saved param group "
                                 f"has{hint}", fix="pass option names as the checkpoint has them")
        warnings.warn(f"keep_saved_options: no saved param group has {k!r}; it keeps the current "
                      "rules' value", stacklevel=user_stacklevel())
    return frozenset(items)


def _group(gi: int, g: object, id_to_name: dict[int, str]) -> list[str]:
    """One saved group's parameter names (validated); integer ids are recorded."""
    where = _path("param_groups", gi)
    if not isinstance(g, Mapping):
        raise ParamwiseError(f"{where} is {_what(g)}, expected a dict with 'params' and the "
                             "group's options", fix=_RESAVE)
    bad_key = next((k for k in g if not isinstance(k, str)), None)
    if bad_key is not None:
        raise ParamwiseError(f"{where} has the option key {bad_key!r}; option names are strings",
                             fix=_RESAVE)
    if "params" not in g:
        raise ParamwiseError(f"{where} has no 'params' (keys: {sorted(g)[:6]})",
                             fix="every saved group lists its parameters under 'params'; " + _RESAVE)
    params = g["params"]
    if not isinstance(params, (list, tuple)):
        raise ParamwiseError(f"{where}['params'] is {_what(params)}, expected a list of "
                             "parameter names (or integer ids)", fix=_RESAVE)
    kinds = {str if isinstance(p, str) else int if _is_int(p) else None for p in params}
    if None in kinds or len(kinds) > 1:
        i = next(i for i, p in enumerate(params) if not isinstance(p, str) and not _is_int(p)) \
            if None in kinds else 0
        raise ParamwiseError(
            f"{where}['params'] holds {_what(params[i])} at position {i}" if None in kinds
            else f"{where}['params'] mixes names and integer ids",
            fix="'params' lists either parameter names or torch's integer ids; " + _RESAVE)
    if kinds != {int}:
        return list(params)
    names = g.get("param_names")
    if names is None or not isinstance(names, (list, tuple)) or len(names) != len(params):
        raise ParamwiseError(
            f"saved param group {gi} lists parameters by position without 'param_names', so they "
            "cannot be matched by name" if names is None else
            f"{where}['param_names'] is {_what(names)}, expected {len(params)} names, one per "
            "entry of 'params'",
            fix="save with paramwise.state_dict(opt) (or from an optimizer whose groups carry "
            "param_names); to load it positionally use optimizer.load_state_dict()")
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise ParamwiseError(f"{where}['param_names'] holds {_what(bad)}; names are strings",
                             fix=_RESAVE)
    for pid, n in zip(params, names):
        if id_to_name.setdefault(pid, n) != n:
            raise ParamwiseError(
                f"parameter id {pid} is named {id_to_name[pid]!r} in one saved group and {n!r} "
                f"in group {gi}", fix="ids are unique across groups; " + _RESAVE)
    return list(names)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name(path: tuple, key: object, id_to_name: dict[int, str]) -> str:
    if isinstance(key, str):
        return key
    if _is_int(key) and key in id_to_name:
        return id_to_name[key]
    raise ParamwiseError(
        f"{_path(*path)}: the key {key!r} is " + ("an id that no saved param group lists"
                                                  if _is_int(key) else "neither a name nor an id"),
        fix="state is keyed by the parameter names or ids in 'param_groups'; " + _RESAVE)
