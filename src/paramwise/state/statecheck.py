"""The saved state against the current parameters, checked before anything loads.

:func:`paramwise.load_state_dict` calls :func:`foreign_state` and :func:`check_state` after
:func:`~paramwise.state.saved.parse` has read the checkpoint and before it touches the
optimizer, so a state that the next step would trip on raises a
:class:`~paramwise.errors.ParamwiseError` naming the key path, the parameter and a fix.

Known layouts: torch's SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta,
ASGD, Rprop, SparseAdam, Muon and Adafactor, and subclasses that keep their
``step``/``_init_group``; a wrapper holding such optimizers (``Hybrid``) is checked per group,
by the part that owns it. Their elementwise buffers (``exp_avg``, ``momentum_buffer``, ...) must have the
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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..errors import ParamwiseError
from .saved import _CORRUPT, ANCHORS_KEY, Saved, _path, _what

__all__ = ["check_state", "foreign_state", "layout_name"]


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
