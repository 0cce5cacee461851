"""Checkpoint validation: a saved optimizer state is checked whole before anything is loaded.

:func:`paramwise.load_state_dict` (and :func:`paramwise.load_dcp`, which ends in it) call
:func:`parse` and :func:`check_state` before they touch the optimizer, so a malformed or
corrupt checkpoint raises a :class:`~paramwise.errors.ParamwiseError` naming the key path
(``checkpoint['state']['0.weight']['exp_avg_sq']``), the parameter and a fix, and the
optimizer's state and param groups stay as they were. Checked:

- **structure**: ``state`` a mapping of per-parameter dicts keyed by name (or by the integer
  ids its param groups list), ``param_groups`` a list of dicts whose ``params`` are all names or
  all ids (ids with ``param_names``), option keys strings;
- **duplicates**: a parameter listed in two saved groups (or twice in one), two state entries
  for one name;
- **state against the parameters**, for optimizers whose per-parameter state layout is known:
  torch's SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta, ASGD, Rprop,
  SparseAdam, Muon and Adafactor, and subclasses that keep their ``step``/``_init_group``;
  a wrapper holding such optimizers (``Hybrid``) is checked per group, by the part that owns
  it. Their elementwise buffers (``exp_avg``, ``momentum_buffer``, ...) must have the
  parameter's shape (Adafactor's factored ``row_var``/``col_var`` their reduced shapes), their
  scalars (``step``, ``mu_product``, ``eta``, ``mu``) one element, and a non-empty state must
  hold every key the next step reads under the options in effect (``max_exp_avg_sq`` with
  ``amsgrad=True``; RMSprop's ``momentum_buffer``/``grad_avg`` with ``momentum``/``centered``).
  When *no* buffer has the parameter's shape and the buffers agree with each other, the state
  belongs to a parameter that was resized since the save: it is reported as ``reshaped`` and
  the parameter starts fresh (as before); a state that half fits is corrupt and refused.
  Other optimizers (low-rank or quantized third-party states) are only checked for structure,
  plus the same ``reshaped`` rule: their state fits when it holds no tensor above 0-d or one of
  the parameter's shape (LBFGS's flat history and other Adafactors' factors always fit).

    >>> parse({"state": 5, "param_groups": []})
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: checkpoint['state'] is an int (5), expected a mapping {parameter name: {state key: value}}; pass paramwise.state_dict(opt) or optimizer.state_dict() as saved
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import ParamwiseError, did_you_mean, user_stacklevel

__all__ = ["ANCHORS_KEY", "NOT_OPTIONS", "Saved", "check_state", "keep_keys", "parse"]

#: Top-level key of the ``l2_to_init`` anchors (``{name: w0}``), beside ``state``/``param_groups``;
#: the same key under which :mod:`paramwise.step.hooks` puts them (by index) in ``opt.state_dict()``.
ANCHORS_KEY = "paramwise_anchors"
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


# ------------------------------------------------------------------ state against parameters
Shape = tuple[int, ...]


def _same(s: Shape) -> Shape:
    return s


def _rows(s: Shape) -> Shape | None:  # Adafactor's factored second moment, rows
    return (*s[:-1], 1) if len(s) > 1 else None


def _cols(s: Shape) -> Shape | None:
    return (*s[:-2], 1, s[-1]) if len(s) > 1 else None


def _unfactored(s: Shape) -> Shape | None:
    return s if len(s) <= 1 else None


_ADAM = {"exp_avg": _same, "exp_avg_sq": _same, "max_exp_avg_sq": _same}
#: torch.optim class name -> (buffers: key -> expected shape from the parameter's (None: not
#: kept at this dim), scalars, {buffer: the group option it needs}, buffers the step may lack)
_LAYOUTS: dict[str, tuple[dict[str, Callable[[Shape], Shape | None]], tuple[str, ...],
                          dict[str, str], frozenset[str]]] = {
    "SGD": ({"momentum_buffer": _same}, (), {}, frozenset({"momentum_buffer"})),
    "Adam": (_ADAM, ("step",), {"max_exp_avg_sq": "amsgrad"}, frozenset()),
    "AdamW": (_ADAM, ("step",), {"max_exp_avg_sq": "amsgrad"}, frozenset()),
    "Adamax": ({"exp_avg": _same, "exp_inf": _same}, ("step",), {}, frozenset()),
    "NAdam": ({"exp_avg": _same, "exp_avg_sq": _same}, ("step", "mu_product"), {}, frozenset()),
    "RAdam": ({"exp_avg": _same, "exp_avg_sq": _same}, ("step",), {}, frozenset()),
    "RMSprop": ({"square_avg": _same, "momentum_buffer": _same, "grad_avg": _same}, ("step",),
                {"momentum_buffer": "momentum", "grad_avg": "centered"}, frozenset()),
    "Adagrad": ({"sum": _same}, ("step",), {}, frozenset()),
    "Adadelta": ({"square_avg": _same, "acc_delta": _same}, ("step",), {}, frozenset()),
    "ASGD": ({"ax": _same}, ("step", "eta", "mu"), {}, frozenset()),
    "Rprop": ({"prev": _same, "step_size": _same}, ("step",), {}, frozenset()),
    "SparseAdam": ({"exp_avg": _same, "exp_avg_sq": _same}, ("step",), {}, frozenset()),
    "Muon": ({"momentum_buffer": _same}, (), {}, frozenset({"momentum_buffer"})),
    "Adafactor": ({"variance": _unfactored, "row_var": _rows, "col_var": _cols}, ("step",), {},
                  frozenset()),
}


def _own(fn: object) -> object:
    """A step function without torch's profiling wrapper (``Optimizer._patch_step_function``)."""
    while getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__  # type: ignore[attr-defined]
    return fn


def layout_name(cls: type) -> str | None:
    """The torch.optim class whose state layout ``cls`` keeps, or None (unknown layout).

        >>> layout_name(torch.optim.AdamW), layout_name(torch.optim.LBFGS)
        ('AdamW', None)
    """
    known = next((c for c in cls.__mro__ if c.__name__ in _LAYOUTS
                  and getattr(torch.optim, c.__name__, None) is c), None)
    if known is None:
        return None
    for sub in cls.__mro__[:cls.__mro__.index(known)]:  # a subclass with its own step
        if "_init_group" in sub.__dict__ or (
                "step" in sub.__dict__ and _own(sub.__dict__["step"]) is not _own(known.step)):
            return None
    return known.__name__


def _group_classes(optimizer: torch.optim.Optimizer) -> list[type]:
    """Per param group, the class of the optimizer that steps it: a wrapper's part holding the
    very group dict (``Hybrid.optimizers``), else the optimizer's own class."""
    owner: dict[int, type] = {}
    for attr, v in getattr(optimizer, "__dict__", {}).items():
        if attr in ("state", "param_groups", "defaults"):
            continue
        items = v if isinstance(v, (list, tuple)) else v.values() if isinstance(v, dict) else (v,)
        for o in items:
            if isinstance(o, torch.optim.Optimizer) and o is not optimizer:
                for g in o.param_groups:
                    owner.setdefault(id(g), type(o))
    return [owner.get(id(g), type(optimizer)) for g in optimizer.param_groups]


def _scalar(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, torch.Tensor) and v.numel() == 1)


def _fits_any(cls: type, param: torch.Tensor, st: Mapping) -> bool:
    """Unknown layouts: the state fits when it holds no tensor above 0-d or one of the
    parameter's shape; always for factored (transformers' Adafactor) and flat (LBFGS) ones."""
    if any(c.__name__ in ("Adafactor", "LBFGS") for c in cls.__mro__):
        return True
    shapes = [tuple(v.shape) for v in st.values() if isinstance(v, torch.Tensor) and v.dim()]
    return not shapes or tuple(param.shape) in shapes


def foreign_state(optimizer: torch.optim.Optimizer, params: Mapping[str, tuple[int, torch.Tensor]],
                  match: Mapping[str, str], saved: Saved) -> dict[str, str]:
    """Current name -> ``"AdamW -> Muon"`` for saved states kept by another optimizer class than
    the one the parameter goes to now (a changed split): their keys are not the current
    layout's. Those parameters start fresh. Only known (torch) layouts are compared."""
    classes = _group_classes(optimizer)
    out: dict[str, str] = {}
    for n, s in match.items():
        st = saved.state.get(s)
        gi = params[n][0]
        kind = layout_name(classes[gi])
        if not st or kind is None or not isinstance(st, Mapping):
            continue
        buffers, scalars, _, _ = _LAYOUTS[kind]
        keys = set(st)
        if keys <= set(buffers) | set(scalars):
            continue
        was = next((k for k, (b, sc, _, _) in _LAYOUTS.items() if keys <= set(b) | set(sc)),
                   "another optimizer")
        out[n] = f"{was} -> {classes[gi].__name__}"
    return out


def check_state(optimizer: torch.optim.Optimizer, params: Mapping[str, tuple[int, torch.Tensor]],
                match: Mapping[str, str], saved: Saved,
                option: Callable[[str, str], object]) -> list[str]:
    """Check every matched parameter's saved state (see the module doc); return the current
    names whose state is that of a resized parameter (they start fresh).

    ``params``: current name -> (group index, parameter); ``match``: current name -> saved
    name; ``option(name, key)``: the group option ``key`` in effect for ``name`` after loading.
    """
    classes = _group_classes(optimizer)
    kinds = [layout_name(c) for c in classes]
    reshaped: list[str] = []
    for n, s in match.items():
        gi, p = params[n]
        st, anchor, kind = saved.state.get(s), saved.anchors.get(s), kinds[gi]
        resized = bool(st) and (not _fits_any(classes[gi], p, st) if kind is None else
                                _check_known(kind, n, tuple(p.shape), st, saved.key[s], option))
        if not resized and anchor is not None and anchor.shape != p.shape:
            if st:
                raise ParamwiseError(
                    f"{_path(ANCHORS_KEY)}: the l2_to_init anchor of {n!r} has shape "
                    f"{tuple(anchor.shape)}, but the parameter and its saved state have shape "
                    f"{tuple(p.shape)}", fix=_CORRUPT.format(key=saved.key[s]))
            resized = True
        if resized:
            reshaped.append(n)
    return reshaped


def _check_known(kind: str, n: str, shape: Shape, st: Mapping, key: object,
                 option: Callable[[str, str], object]) -> bool:
    """Validate one state of a known layout; True when it is a resized parameter's."""
    buffers, scalars, needs, optional = _LAYOUTS[kind]
    who = f"parameter {n!r}, shape {shape}"
    for k in scalars:
        if k in st and not _scalar(st[k]):
            got = f"a tensor of shape {tuple(st[k].shape)}" if isinstance(st[k], torch.Tensor) \
                else _what(st[k])
            raise ParamwiseError(f"{_path('state', key, k)} ({who}) is {got}, expected a number "
                                 f"or a one-element tensor ({kind} keeps {k!r} as a scalar)",
                                 fix=_CORRUPT.format(key=key))
    fit, off = [], []
    for k, want_of in buffers.items():
        v = st.get(k)
        if k not in st or (v is None and kind == "SGD"):
            continue
        want = want_of(shape)
        if not isinstance(v, torch.Tensor):
            raise ParamwiseError(f"{_path('state', key, k)} ({who}) is {_what(v)}, expected a "
                                 f"tensor" + (f" of shape {want}" if want is not None else ""),
                                 fix=_CORRUPT.format(key=key))
        if want is not None:
            (fit if tuple(v.shape) == want else off).append(k)
    if off:
        same_fit = [k for k in fit if buffers[k] is _same]
        same_off = {tuple(st[k].shape): k for k in off if buffers[k] is _same}
        if same_fit or len(same_off) > 1:
            k = off[0]
            why = (f"the saved {same_fit[0]!r} has the parameter's shape" if same_fit else
                   " and ".join(f"{k2!r} has shape {s2}" for s2, k2 in same_off.items()))
            raise ParamwiseError(
                f"{_path('state', key, k)} has shape {tuple(st[k].shape)}, but {kind} keeps "
                f"{k!r} in shape {buffers[k](shape)} for {who} ({why}); the next step would fail "
                "inside torch", fix=_CORRUPT.format(key=key))
        return True  # the state of a parameter of another shape
    for k in (*scalars, *buffers):
        if k in st or k in optional or (k in buffers and buffers[k](shape) is None):
            continue
        flag = needs.get(k)
        if flag is not None and not option(n, flag):
            continue
        because = f" ({flag}={option(n, flag)!r} in its group)" if flag else ""
        raise ParamwiseError(
            f"{_path('state', key)} ({who}) has no {k!r}, which {kind}'s next step reads"
            f"{because}, so it would fail inside torch",
            fix=(f"the checkpoint was saved with {flag} off: load with keep_saved_options="
                 f"({flag!r},), or give the state a {k!r}, or delete this entry (del "
                 f"ckpt['state'][{key!r}]) so the parameter starts fresh") if flag else
            _CORRUPT.format(key=key))
    return False
