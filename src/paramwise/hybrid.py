"""One ``torch.optim.Optimizer`` made of several: Muon for the hidden matrices, AdamW for the rest.

The class and how it steps, saves and loads are in :class:`Hybrid`'s docstring.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any

import torch

from .errors import ParamwiseError
from .grouping.groups import freeze  # equal options, as groups are merged
from .options.keys import resolve_optimizer
from .step.anchors import ANCHORS_KEY  # the step hooks' key: per-part anchors, by index

__all__ = ["Hybrid"]


class _State(MutableMapping):
    """``hybrid.state``: each parameter's state lives in the part that owns the parameter."""

    def __init__(self, hybrid: Hybrid) -> None:
        self._h = hybrid
        self._owners: dict[int, torch.optim.Optimizer] = {}
        self._sizes: tuple[int, ...] = ()

    def _owner(self, p: object) -> torch.optim.Optimizer:
        o = self._owners.get(id(p))
        if o is None:
            sizes = tuple(len(g["params"]) for q in self._h.optimizers for g in q.param_groups)
            if sizes != self._sizes:  # groups added or changed since the map was made
                self._sizes = sizes
                self._owners = {id(q): o for o in self._h.optimizers for g in o.param_groups
                                for q in g["params"]}
                o = self._owners.get(id(p))
            if o is None:
                raise KeyError(p)
        return o

    def get(self, p: object, default: Any = None) -> Any:
        """Like ``dict.get`` on torch's state: no entry is created for a missing parameter."""
        try:
            return self._owner(p).state.get(p, default)
        except KeyError:
            return default

    def __getitem__(self, p: object) -> Any:
        return self._owner(p).state[p]

    def __setitem__(self, p: object, value: Any) -> None:
        self._owner(p).state[p] = value

    def __delitem__(self, p: object) -> None:
        del self._owner(p).state[p]

    def __iter__(self) -> Iterator:
        for o in self._h.optimizers:
            yield from o.state

    def __len__(self) -> int:
        return sum(len(o.state) for o in self._h.optimizers)

    def __contains__(self, p: object) -> bool:
        return any(p in o.state for o in self._h.optimizers)


def _shown(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}, not an instance"
    if isinstance(obj, torch.optim.Optimizer):
        return f"one {type(obj).__name__}, not a list of them"
    return f"a {type(obj).__name__} ({reprlib.repr(obj)})"


def _check_disjoint(parts: list[torch.optim.Optimizer]) -> None:
    """Every parameter in one part only; else name it (by its name where a group has
    ``param_names``, else by its shape) and the two parts."""
    def name(k: int, gi: int, pi: int) -> str | None:
        names = parts[k].param_groups[gi].get("param_names") or ()
        return names[pi] if pi < len(names) else None

    seen: dict[int, tuple[int, int, int]] = {}
    for k, o in enumerate(parts):
        for gi, g in enumerate(o.param_groups):
            for pi, p in enumerate(g["params"]):
                first = seen.setdefault(id(p), (k, gi, pi))
                if first[0] == k:
                    continue
                known = name(*first) or name(k, gi, pi)
                where = [f"part {j} ({type(parts[j]).__name__}, param group {h})"
                         for j, h, _ in (first, (k, gi, pi))]
                raise ParamwiseError(
                    f"parameter {repr(known) if known else 'of shape ' + str(tuple(p.shape))} "
                    f"is in two of the optimizers: {where[0]} and {where[1]}",
                    fix="give every parameter to exactly one optimizer: build each one over its "
                    "own parameters")


class Hybrid(torch.optim.Optimizer):
    """Several optimizers stepped as one ``torch.optim.Optimizer``.

    :func:`paramwise.optimizer` returns a Hybrid when the rules send parameters to more
    than one optimizer class. It *is* a ``torch.optim.Optimizer``, built from one plain instance per
    class (``hybrid.optimizers``, in order of first appearance; the default optimizer's first), and
    its ``param_groups`` list holds those instances' own group dicts (the same objects), so
    whatever a scheduler, a gradient clipper, ``GradScaler`` or Lightning does to a group reaches
    the optimizer that owns it. A step is

    .. math::  \\mathrm{loss} = \\mathrm{closure}()\\ (\\text{once}),\\quad
               \\text{then } o.\\mathrm{step}() \\text{ for each part } o,

    so every part updates its own parameters by its own rule, with its own state and its own
    regularizer hooks (step scales and lowering per class). ``zero_grad`` and ``state`` delegate;
    ``state_dict()`` is torch's format over every group (indices across parts, in
    ``param_groups`` order) and round-trips through ``torch.save``; ``add_param_group`` adds to the
    default part unless the group names another (``{"params": ..., "optimizer": "muon"}``;
    with ``"param_names"`` too when the groups carry them, as torch requires).

        >>> import torch, paramwise
        >>> a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
        >>> opt = paramwise.Hybrid([torch.optim.SGD([a], lr=0.1), torch.optim.Adam([b], lr=0.1)])
        >>> [type(o).__name__ for o in opt.optimizers], len(opt.param_groups)
        (['SGD', 'Adam'], 2)

    Torch's ``OneCycleLR`` cycles ``momentum`` *or* ``betas`` in every group, which no mix of
    Muon (``momentum``) and AdamW (``betas``) has: use ``cycle_momentum=False`` there (``defaults``
    holds only the options every part shares, so torch says so at construction).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        fix = "pass a list of the optimizers built for each part, e.g. Hybrid([sgd, adamw])"
        if isinstance(optimizers, (torch.optim.Optimizer, str)) or \
                not isinstance(optimizers, Iterable):
            raise ParamwiseError(f"Hybrid needs a list of torch.optim.Optimizer instances, got "
                                 f"{_shown(optimizers)}", fix=fix)
        parts = list(optimizers)
        bad = [(i, o) for i, o in enumerate(parts) if not isinstance(o, torch.optim.Optimizer)]
        if not parts or bad:
            got = "an empty list" if not parts else f"item {bad[0][0]}: {_shown(bad[0][1])}"
            if bad and isinstance(bad[0][1], type):
                fix = f"build it first, e.g. {bad[0][1].__name__}(params, lr=...)"
            raise ParamwiseError(f"Hybrid needs a list of torch.optim.Optimizer instances, got "
                                 f"{got}", fix=fix)
        if any(isinstance(o, Hybrid) for o in parts):
            raise ParamwiseError("a Hybrid cannot hold another Hybrid",
                                 fix="pass the parts' optimizers (hybrid.optimizers)")
        _check_disjoint(parts)
        # torch's own set-up (hooks, step patching) on a placeholder, then the real groups.
        super().__init__([torch.zeros(0, requires_grad=True)], {})
        self.optimizers = parts
        self.param_groups = [g for o in parts for g in o.param_groups]
        self.state = _State(self)  # type: ignore[assignment]
        shared = set.intersection(*(set(o.defaults) for o in parts))
        self.defaults = {k: parts[0].defaults[k] for k in sorted(shared)
                         if all(freeze(o.defaults[k]) == freeze(parts[0].defaults[k]) for o in parts)}

    def __repr__(self) -> str:
        return "Hybrid(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"

    def __getstate__(self) -> dict:
        # the parts (torch pickles each as defaults, state, param_groups) and the defaults;
        # hooks and a scheduler's step wrapper stay behind, as torch's own __getstate__ does
        return {"optimizers": self.optimizers, "defaults": self.defaults}

    def __setstate__(self, state: dict) -> None:
        self.optimizers = state["optimizers"]
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        super().__setstate__({"defaults": state["defaults"]})  # torch's hook dicts, step patch
        self.state = _State(self)  # type: ignore[assignment]

    def part(self, cls: type | str) -> torch.optim.Optimizer:
        """The part of class ``cls`` (a class or a name such as ``"muon"``)."""
        want = resolve_optimizer(cls)
        for o in self.optimizers:
            if type(o) is want:
                return o
        raise ParamwiseError(f"this Hybrid has no {want.__name__} part",
                             fix=f"its parts are {', '.join(type(o).__name__ for o in self.optimizers)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Call ``closure`` once (with grad enabled), then step every part."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every part's gradients (``None`` them, by default, as torch does)."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the part its ``"optimizer"`` entry names (a class or name), else to
        the default part (the first)."""
        if not hasattr(self, "optimizers"):  # torch's __init__ adding the placeholder
            super().add_param_group(param_group)
            return
        group = dict(param_group)
        target = self.part(group.pop("optimizer")) if "optimizer" in group else \
            self.optimizers[0]
        target.add_param_group(group)
        self.param_groups.insert(self._end_of(target), target.param_groups[-1])

    def _end_of(self, target: torch.optim.Optimizer) -> int:
        n = 0
        for o in self.optimizers:
            n += len(o.param_groups)
            if o is target:
                return n - 1
        raise AssertionError  # pragma: no cover

    # ------------------------------------------------------------------------ state dicts
    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch's format over every group: ``state`` and ``param_groups`` indexed across the
        parts in ``param_groups`` order; the parts' own extras (paramwise's anchors) merged."""
        for pre in self._optimizer_state_dict_pre_hooks.values():
            pre(self)
        state: dict[int, Any] = {}
        groups: list[dict] = []
        anchors: dict[int, Any] = {}
        extras: list[dict] = []
        offset = 0
        for o in self.optimizers:
            sd = o.state_dict()
            order = [i for g in sd["param_groups"] for i in g["params"]]
            local = {pid: offset + k for k, pid in enumerate(dict.fromkeys(order))}
            state.update({local[k]: v for k, v in sd["state"].items()})
            groups.extend({**g, "params": [local[i] for i in g["params"]]}
                          for g in sd["param_groups"])
            for i, a in (sd.get(ANCHORS_KEY) or {}).items():
                anchors[offset + int(i)] = a
            extras.append({k: v for k, v in sd.items()
                           if k not in ("state", "param_groups", ANCHORS_KEY)})
            offset += len(local)
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        if anchors:
            out[ANCHORS_KEY] = anchors
        if any(extras):
            out["paramwise_parts"] = extras
        for post in self._optimizer_state_dict_post_hooks.values():
            got = post(self, out)
            if got is not None:
                out = got
        return out

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Split a state dict of :meth:`state_dict`'s format over the parts (by group count)
        and load each; the group dicts stay the same objects."""
        sd = dict(state_dict)
        for pre in self._optimizer_load_state_dict_pre_hooks.values():
            got = pre(self, sd)
            if got is not None:
                sd = got
        saved = sd.get("param_groups")
        counts = [len(o.param_groups) for o in self.optimizers]
        if not isinstance(saved, list) or len(saved) != sum(counts):
            raise ParamwiseError(
                f"the state dict has {len(saved) if isinstance(saved, list) else 'no'} param "
                f"groups, this {self!r} has {sum(counts)} ({', '.join(map(str, counts))} per "
                "part)", fix="load a state dict saved from the same rules, or load by name with "
                "paramwise.load_state_dict(opt, paramwise.state_dict(old_opt))")
        parts_extra = sd.get("paramwise_parts")
        if parts_extra is not None and (not isinstance(parts_extra, list)
                                        or len(parts_extra) != len(self.optimizers)):
            raise ParamwiseError(
                f"the state dict's 'paramwise_parts' holds "
                f"{len(parts_extra) if isinstance(parts_extra, list) else 'no list of'} entries, "
                f"this {self!r} has {len(self.optimizers)} parts",
                fix="load a state dict saved from the same rules")
        start = 0
        for o, n in zip(self.optimizers, counts):  # every part's sizes before any part loads
            for j, (g, s) in enumerate(zip(o.param_groups, saved[start:start + n])):
                if not isinstance(s, dict) or len(s.get("params", ())) != len(g["params"]):
                    raise ParamwiseError(
                        f"saved param group {start + j} does not fit group {j} of the "
                        f"{type(o).__name__} part ({len(g['params'])} parameters)",
                        fix="load a state dict saved from the same rules, or load by name with "
                        "paramwise.load_state_dict(opt, paramwise.state_dict(old_opt))")
            start += n
        anchors = sd.get(ANCHORS_KEY) or {}
        extras = sd.get("paramwise_parts") or [{} for _ in self.optimizers]
        start = 0
        for o, n, extra in zip(self.optimizers, counts, extras):
            mine = saved[start:start + n]
            start += n
            order = list(dict.fromkeys(i for g in mine for i in g["params"]))
            local = {pid: k for k, pid in enumerate(order)}
            part: dict[str, Any] = {
                **extra,
                "state": {local[k]: v for k, v in sd.get("state", {}).items() if k in local},
                "param_groups": [{**g, "params": [local[i] for i in g["params"]]} for g in mine]}
            mine_anchors = {local[int(i)]: a for i, a in anchors.items() if int(i) in local}
            if mine_anchors:
                part[ANCHORS_KEY] = mine_anchors
            kept = list(o.param_groups)
            o.load_state_dict(part)
            for old, new in zip(kept, o.param_groups):  # keep the group dicts everyone holds
                old.clear()
                old.update(new)
            o.param_groups[:] = kept
        for post in self._optimizer_load_state_dict_post_hooks.values():
            post(self)

