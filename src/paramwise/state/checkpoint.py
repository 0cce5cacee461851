"""Name-keyed optimizer checkpoints: state follows each parameter, options follow the rules.

Why not ``optimizer.state_dict()`` / ``optimizer.load_state_dict()``? torch matches saved state
to parameters *by position*: the k-th saved parameter id gets the k-th parameter of the current
groups, and every current group's options are *replaced* by the saved group's. Change the rules
between two runs (a new ``no_decay`` rule, a different ``lr_mult``, one more layer) and a resumed
run silently gives one parameter another's Adam moments, or keeps the old learning rates, or
fails with "a parameter group that doesn't match the size". paramwise groups carry
``param_names`` (canonical names, wrappers removed), so checkpoints can be keyed by name:

- :func:`state_dict` returns ``{"state": {name: {...}}, "param_groups": [{..., "params":
  [names]}]}``, the same layout as ``torch.distributed.checkpoint.state_dict
  .get_optimizer_state_dict`` (FQN-keyed; paramwise's canonical names *are* those FQNs), so
  either can be saved with ``torch.save`` or ``torch.distributed.checkpoint.save`` and either
  can be loaded by :func:`load_state_dict` or by ``set_optimizer_state_dict``.
- :func:`load_state_dict` moves each saved parameter's state to the parameter of that name,
  wherever its group is now; parameters the checkpoint does not know start fresh; saved names
  with no parameter are reported (a warning, and the returned :class:`LoadReport`). Group options
  stay those of the current optimizer, i.e. of the current rules; ``keep_saved_options=True``
  restores the saved options per parameter instead (regrouping if parameters moved), and a
  tuple of keys restores only those (e.g. ``("lr", "initial_lr")``).

Like torch's, loading shares tensors with the dict it was given (no copy). The checkpoint is
validated whole first (:mod:`paramwise.state.saved`); when that raises, nothing was loaded.

Example::

    >>> sd = paramwise.state_dict(opt)                                  # doctest: +SKIP
    >>> torch.save(sd, "optim.pt")                                      # doctest: +SKIP
    >>> opt = paramwise.optimizer(model, "adamw", new_rules, lr=3e-4)   # doctest: +SKIP
    >>> report = paramwise.load_state_dict(opt, torch.load("optim.pt")) # doctest: +SKIP
    >>> print(report)                                                   # doctest: +SKIP
    loaded state of 48 parameters (options from the current rules); 2 new (fresh state): ...

Sharded (FSDP2): build the optimizer *after* ``fully_shard``; save with
``dcp.save({"optim": paramwise.state_dict(opt)}, checkpoint_id=path)`` and resume, rules
changed or not, with :func:`paramwise.state.dcp.load_dcp` (it reads the checkpoint's metadata, loads
what the current parameters need, resharded, then calls :func:`load_state_dict`). A full (unsharded)
checkpoint, e.g. ``get_optimizer_state_dict(model, opt, options=StateDictOptions(
full_state_dict=True))`` loaded on every rank, is sharded locally to each parameter's placement.

LR schedulers: the scheduled ``lr`` is a group option, so by default it comes from the current
rules (the base lr). If the rules for ``lr`` did not change, pass
``keep_saved_options=("lr", "initial_lr")`` to resume the schedule where it stopped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import ParamwiseError, user_stacklevel
from ..grouping.groups import freeze
from ..options.keys import paramwise_keys
from .names import _group_names, _match
from .placement import match_layout
from .saved import ANCHORS_KEY, Saved, keep_keys, parse
from .saved import NOT_OPTIONS as _NOT_OPTIONS
from .statecheck import check_state, foreign_state

__all__ = ["LoadReport", "state_dict", "load_state_dict", "ANCHORS_KEY"]

def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and bool(torch.equal(a.detach().cpu(), b.detach().cpu())))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return a is b


@dataclass
class LoadReport:
    """What :func:`paramwise.load_state_dict` (and :func:`paramwise.load_dcp`) did, name by
    name; ``str()`` says it in one line.

    ``loaded``: parameters whose saved state (possibly empty) was restored; ``new``: current
    parameters absent from the checkpoint (fresh state); ``vanished``: saved names with no
    parameter now (state dropped); ``reshaped``: names whose saved state no longer fits the
    parameter's global shape, e.g. a resized layer (fresh state); ``moved``: names whose saved
    state another optimizer class kept (``"AdamW -> Muon"``: the split changed; fresh state,
    options not compared); ``changed``: per loaded
    parameter, the options whose value differs from the saved one, ``{key: (saved, now)}``;
    ``renamed``: saved name -> current name where only wrapper segments differed; ``options``:
    where the group options came from; ``regrouped``: whether the groups were rebuilt
    (``keep_saved_options`` with parameters that moved groups; build LR schedulers after it).
    """

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    changed: dict[str, dict[str, tuple[object, object]]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    options: str = "current rules"
    regrouped: bool = False

    @property
    def exact(self) -> bool:
        """True when checkpoint and optimizer hold the same parameters."""
        return not self.new and not self.vanished and not self.reshaped

    def __str__(self) -> str:
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f", ... (+{len(names) - 4})" if len(names) > 4 else "")

        out = [f"loaded state of {len(self.loaded)} parameters (options from the {self.options})"]
        if self.new:
            out.append(f"{len(self.new)} new (fresh state): {few(self.new)}")
        if self.vanished:
            out.append(f"{len(self.vanished)} vanished (state dropped): {few(self.vanished)}")
        if self.reshaped:
            out.append(f"{len(self.reshaped)} reshaped (fresh state): {few(self.reshaped)}")
        if self.moved:
            out.append(f"{len(self.moved)} moved to another optimizer (fresh state): "
                       + few([f"{n} ({c})" for n, c in self.moved.items()]))
        if self.renamed:
            out.append(f"{len(self.renamed)} renamed (wrapper segments dropped): "
                       + few([f"{s} -> {n}" for s, n in self.renamed.items()]))
        if self.changed:
            out.append(f"{len(self.changed)} with options changed since the checkpoint: "
                       + few([f"{n} ({', '.join(c)})" for n, c in self.changed.items()]))
        if self.regrouped:
            out.append("param groups rebuilt to restore the saved options")
        return "; ".join(out)


# ------------------------------------------------------------------------------- saving
def state_dict(optimizer: torch.optim.Optimizer, *, model: torch.nn.Module | None = None
               ) -> dict:
    """The optimizer's state keyed by canonical parameter names (FQNs), to save.

    Same layout as ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``:
    ``{"state": {name: {key: value}}, "param_groups": [{**options, "params": [names],
    "param_names": [names]}]}``, so it saves with ``torch.save`` or DCP and loads with
    :func:`paramwise.load_state_dict`, :func:`paramwise.load_dcp` or torch's
    ``set_optimizer_state_dict``. Tensors are the optimizer's own (DTensor shards under FSDP2),
    not copies. Names come from each group's ``param_names`` (every optimizer paramwise builds
    has them), or from ``model``'s module tree when given (any optimizer).

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> opt = paramwise.optimizer(model, "adamw", lr=1e-3)
        >>> model(torch.randn(2, 4)).sum().backward(); opt.step()
        >>> sd = paramwise.state_dict(opt)
        >>> sorted(sd["state"]), sorted(sd["state"]["0.weight"])
        (['0.bias', '0.weight', '1.bias', '1.weight'], ['exp_avg', 'exp_avg_sq', 'step'])
    """
    names = _group_names(optimizer, model)
    packed = optimizer.state_dict()  # runs the optimizer's state_dict hooks
    id_state = packed["state"]
    out_state: dict[str, object] = {}
    out_groups: list[dict] = []
    for g, gnames in zip(packed["param_groups"], names):
        for pid, n in zip(g["params"], gnames):
            if pid in id_state:
                out_state[n] = id_state[pid]
        opts = {k: v for k, v in g.items() if k not in _NOT_OPTIONS}
        out_groups.append({**opts, "params": list(gnames), "param_names": list(gnames)})
    out: dict = {"state": out_state, "param_groups": out_groups}
    anchors = packed.get(ANCHORS_KEY)
    if anchors:
        id_to_name = {pid: n for g, gn in zip(packed["param_groups"], names)
                      for pid, n in zip(g["params"], gn)}
        out[ANCHORS_KEY] = {id_to_name[int(i)]: a for i, a in anchors.items()}
    return out


# ------------------------------------------------------------------------------- loading
def load_state_dict(optimizer: torch.optim.Optimizer, state: Mapping, *,
                    keep_saved_options: bool | Iterable[str] = False, strict: bool = False,
                    model: torch.nn.Module | None = None) -> LoadReport:
    """Load a name-keyed (or ``param_names``-carrying) optimizer state into ``optimizer``.

    Each parameter gets the saved state of the parameter with its name, in whatever group it sits
    now; unknown parameters start fresh; saved names without a parameter are dropped with a warning.
    Options: the current groups' (i.e. the current rules'), unless ``keep_saved_options`` is True
    (all saved options, per parameter) or a collection of keys (only those). ``strict=True`` raises
    instead when any parameter is new or vanished. Saved names match current names exactly, or once
    wrapper segments are dropped (names a wrapped model saved load into the unwrapped one, and
    back). The checkpoint is validated whole first (structure, duplicate names, state shapes and
    keys against the optimizer that will read them): when it raises, nothing was loaded. ``model``
    is as in :func:`paramwise.state_dict`. Returns a :class:`paramwise.LoadReport`; new, vanished
    and reshaped parameters are also warned about. LR schedulers: the scheduled ``lr`` is a group
    option, so it comes from the current rules unless ``keep_saved_options=("lr", "initial_lr")``.

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> opt = paramwise.optimizer(model, "adamw", lr=1e-3)
        >>> model(torch.randn(2, 4)).sum().backward(); opt.step()
        >>> saved = paramwise.state_dict(opt)
        >>> new = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-3)
        >>> report = paramwise.load_state_dict(new, saved)      # the rules changed in between
        >>> report.exact, report.changed["0.bias"]
        (True, {'weight_decay': (0.01, 0.0)})
    """
    if not isinstance(strict, bool):
        got = f"the string {strict!r}" if isinstance(strict, str) else \
            f"{strict!r} ({type(strict).__name__})"
        raise ParamwiseError(f"strict must be True or False, not {got}",
                             fix="pass strict=True (refuse a checkpoint that does not hold the "
                             "same parameters) or strict=False (load what matches)")
    saved = parse(state)
    keep = keep_keys(keep_saved_options, saved)
    names = _group_names(optimizer, model)
    current = {n: (gi, p) for gi, (g, gn) in enumerate(zip(optimizer.param_groups, names))
               for n, p in zip(gn, g["params"])}
    report = LoadReport()
    match = _match(current, list(dict.fromkeys([*saved.group_of, *saved.state])),
                        report.renamed, report.vanished)

    def option(n: str, key: str) -> object:  # the group option in effect after loading
        sg = saved.group_of.get(match[n])
        opts = saved.groups[sg][0] if sg is not None else {}
        if keep is not None and key in opts and ("*" in keep or key in keep):
            return opts[key]
        return optimizer.param_groups[current[n][0]].get(key)

    report.moved = foreign_state(optimizer, current, match, saved)
    for n in report.moved:  # another optimizer's state (a changed split): fresh state
        del match[n]
    report.reshaped = check_state(optimizer, current, match, saved, option)
    for n in report.reshaped:
        del match[n]
    report.new = [n for n in current if n not in match and n not in report.reshaped
                  and n not in report.moved]
    report.loaded = [n for n in current if n in match]
    if strict and not report.exact:
        differ = ", ".join(f"{len(names)} {what} (e.g. {names[:3]})" for what, names in
                           (("new", report.new), ("vanished", report.vanished),
                            ("reshaped", report.reshaped)) if names)
        raise ParamwiseError(
            f"the checkpoint does not hold the same parameters as the optimizer: {differ}",
            fix="pass strict=False to load what matches")
    for n in report.loaded:  # options: compare with the saved ones
        sg = saved.group_of.get(match[n])
        if sg is None:
            continue
        saved_opts = saved.groups[sg][0]
        now = optimizer.param_groups[current[n][0]]
        diff = {k: (saved_opts.get(k, "<unset>"), now.get(k, "<unset>"))
                for k in dict.fromkeys([*saved_opts, *(k for k in now if k not in _NOT_OPTIONS)])
                if not _same(saved_opts.get(k, "<unset>"), now.get(k, "<unset>"))}
        if diff:
            report.changed[n] = diff

    # Everything is checked; the state laid out like the parameters, then the optimizer changes
    # (its groups are put back if torch's own load still raises).
    laid = {n: match_layout(p, saved.state[match[n]]) for n, (_, p) in current.items()
            if n in match and match[n] in saved.state}
    anchors = {n: match_layout(p, saved.anchors[match[n]]) for n, (_, p) in current.items()
               if n in match and match[n] in saved.anchors}
    first_list, first_dicts = optimizer.param_groups, list(optimizer.param_groups)
    backup = [dict(g) for g in first_dicts]
    try:
        if keep is not None:
            report.options = ("saved checkpoint" if keep == {"*"} else
                              f"current rules, with {', '.join(sorted(keep))} from the checkpoint")
            report.regrouped = _restore_options(optimizer, names, match, saved, keep)
            names = _group_names(optimizer, model) if report.regrouped else names
        _load_packed(optimizer, names, laid, anchors)
    except BaseException:
        for g, b in zip(first_dicts, backup):
            g.clear()
            g.update(b)
        first_list[:] = first_dicts
        optimizer.param_groups = first_list
        raise

    for names_, what in ((report.renamed, "saved names load under another name (wrapper "
                          "segments dropped; see report.renamed)"),
                         (report.vanished, "parameters in the checkpoint have no parameter of "
                          "that name in the optimizer; their state was dropped"),
                         (report.reshaped, "parameters changed shape since the checkpoint; "
                          "they start with fresh state")):
        if names_:
            shown = [f"{s} -> {n}" for s, n in names_.items()] if isinstance(names_, dict) \
                else names_
            warnings.warn(f"{len(names_)} {what}: {', '.join(shown[:5])}"
                          + (" ..." if len(names_) > 5 else ""), stacklevel=user_stacklevel())
    return report


def _load_packed(optimizer: torch.optim.Optimizer, names: list[list[str]], laid: dict,
                 anchors: dict) -> None:
    """Load by name through a positional torch state dict built for the current groups, so
    torch's own casting rules (dtype/device, the ``step`` exception) and load hooks apply."""
    pid = 0
    packed_groups, packed_state, packed_anchors = [], {}, {}
    for g, gn in zip(optimizer.param_groups, names):
        ids = []
        for n in gn:
            if n in laid:
                packed_state[pid] = laid[n]
            if n in anchors:
                packed_anchors[pid] = anchors[n]
            ids.append(pid)
            pid += 1
        packed_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    packed: dict = {"state": packed_state, "param_groups": packed_groups}
    if packed_anchors:  # read by paramwise.step.hooks' load pre-hook (l2_to_init anchors)
        packed[ANCHORS_KEY] = packed_anchors
    groups_list, group_dicts = optimizer.param_groups, list(optimizer.param_groups)
    optimizer.load_state_dict(packed)
    for old, new in zip(group_dicts, optimizer.param_groups):  # keep the caller's group dicts
        for k, v in new.items():
            old.setdefault(k, v)
    groups_list[:] = group_dicts
    optimizer.param_groups = groups_list


def _restore_options(optimizer, names, match, saved: Saved, keep) -> bool:
    """Put saved options back per parameter; rebuild the groups if they no longer agree."""
    own = paramwise_keys() | {"paramwise_lowered"}
    pieces: dict[object, dict] = {}
    per_group_keys: list[set] = []
    parts = getattr(optimizer, "optimizers", None)  # a Hybrid: regroup within each part
    part_of = {id(g): i for i, o in enumerate(parts) for g in o.param_groups} if parts else {}
    for g, gn in zip(optimizer.param_groups, names):
        base = {k: v for k, v in g.items() if k not in _NOT_OPTIONS}
        keys = set()
        for n, p in zip(gn, g["params"]):
            opts = dict(base)
            sg = saved.group_of.get(match.get(n, ""))
            if sg is not None:
                so = saved.groups[sg][0]
                if "*" in keep:  # paramwise options the checkpoint lacks are off, as saved
                    opts = {k: v for k, v in opts.items() if k in so or k not in own}
                opts.update({k: v for k, v in so.items() if "*" in keep or k in keep})
            key = (part_of.get(id(g), 0), tuple(sorted((k, freeze(v)) for k, v in opts.items())))
            keys.add(key)
            piece = pieces.setdefault(key, {"params": [], "param_names": [], **opts})
            piece["params"].append(p)
            piece["param_names"].append(n)
        per_group_keys.append(keys)
    if all(len(k) == 1 for k in per_group_keys):  # no group has to split: update in place
        for g, keys in zip(optimizer.param_groups, per_group_keys):
            opts = {k: v for k, v in pieces[next(iter(keys))].items() if k not in _NOT_OPTIONS}
            for k in [k for k in g if k not in _NOT_OPTIONS and k not in opts]:
                del g[k]
            g.update(opts)
        return False
    if parts:
        for i, o in enumerate(parts):
            o.param_groups = [v for k, v in pieces.items() if k[0] == i]  # type: ignore[index]
        optimizer.param_groups = [g for o in parts for g in o.param_groups]
    else:
        optimizer.param_groups = list(pieces.values())
    return True

