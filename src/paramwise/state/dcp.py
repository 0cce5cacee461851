"""Sharded checkpoints: name-keyed loading from ``torch.distributed.checkpoint`` (DCP).

Under FSDP2 each rank holds shards (DTensors); DCP saves them once, globally, and reshards on
load. Save with the name-keyed dict of :func:`paramwise.state.checkpoint.state_dict` (it has
``get_optimizer_state_dict``'s layout, so either works)::

    dcp.save({"model": get_model_state_dict(model), "optim": paramwise.state_dict(opt)},
             checkpoint_id=path)

and resume, after building the sharded model and *then* the optimizer with the current rules::

    dcp.load({"model": (msd := get_model_state_dict(model))}, checkpoint_id=path)
    set_model_state_dict(model, msd)
    report = paramwise.load_dcp(opt, path)

Loading into a template built from the *current* optimizer would not do: DCP reads into the
template's keys, so after a change of rules its param groups would be half old, half new, and
parameters added since the save would be missing from the checkpoint. :func:`load_dcp` builds the
template from the checkpoint's metadata instead (only what exists on both sides), then hands the
result to :func:`paramwise.state.checkpoint.load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import ParamwiseError
from .checkpoint import LoadReport, load_state_dict
from .names import _group_names, _loose
from .saved import ANCHORS_KEY

__all__ = ["load_dcp"]


def load_dcp(optimizer: torch.optim.Optimizer, checkpoint_id: object, *, key: str = "optim",
             storage_reader: object | None = None, keep_saved_options: bool | Iterable[str] = False,
             strict: bool = False, model: torch.nn.Module | None = None) -> LoadReport:
    """Load ``state[key]`` of a ``torch.distributed.checkpoint`` (DCP) checkpoint by name.

    The checkpoint was saved as ``dcp.save({key: paramwise.state_dict(opt), ...},
    checkpoint_id=path)`` (or with ``get_optimizer_state_dict``'s output). Every rank calls
    this after building its (sharded) model and optimizer. The load template is built from the
    checkpoint's metadata and the *current* parameters: state tensors of parameters that still
    exist are read straight into tensors laid out like them (DCP reshards), saved param groups
    are read whole, nothing else is touched; then :func:`paramwise.load_state_dict` does the
    rest (the arguments after ``key`` are its own).

        >>> import tempfile, torch, torch.distributed.checkpoint as dcp, paramwise
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = paramwise.optimizer(model, "adamw", lr=1e-3)
        >>> model(torch.randn(3, 4)).sum().backward(); opt.step()
        >>> with tempfile.TemporaryDirectory() as path:
        ...     _ = dcp.save({"optim": paramwise.state_dict(opt)}, checkpoint_id=path)
        ...     report = paramwise.load_dcp(opt, path)
        >>> report.exact
        True
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not isinstance(key, str):
        raise ParamwiseError(f"key={key!r} is not a string",
                             fix="pass key= the name used in dcp.save({key: ...}), or '' when "
                             "the optimizer's dict was saved at the top level")
    reader = storage_reader if storage_reader is not None else dcp.FileSystemReader(
        checkpoint_id)  # type: ignore[arg-type]
    entries = reader.read_metadata().state_dict_metadata  # type: ignore[attr-defined]
    names = _group_names(optimizer, model)
    params = {n: p for g, gn in zip(optimizer.param_groups, names) for n, p in zip(gn, g["params"])}
    by_loose: dict[str, str] = {}
    for n in params:
        by_loose.setdefault(_loose(n), n)
    head = f"{key}." if key else ""
    groups: dict[int, dict[str, None] | None] = {}
    tstate: dict[str, object] = {}
    anchors: dict[str, object] = {}
    whole: dict[str, None] = {}  # a section saved as one object (not a mapping): read as is
    for fqn, md in entries.items():
        if not fqn.startswith(head):
            continue
        rest = fqn[len(head):]
        if rest in ("state", "param_groups", ANCHORS_KEY):
            whole[rest] = None
            continue
        if rest.startswith("param_groups."):
            idx, _, opt_key = rest[len("param_groups."):].partition(".")
            if not idx.isdigit():
                raise ParamwiseError(f"checkpoint {checkpoint_id!r} has the entry {fqn!r}; "
                                     "param groups are numbered (param_groups.0.lr, ...)",
                                     fix="save the optimizer with dcp.save({key: "
                                     "paramwise.state_dict(opt)}, checkpoint_id=...)")
            if opt_key:
                g = groups.setdefault(int(idx), {})
                if g is not None:
                    g[opt_key] = None
            else:
                groups[int(idx)] = None  # not a dict: read whole, parse() says what it is
            continue
        section = next((s for s in ("state.", f"{ANCHORS_KEY}.") if rest.startswith(s)), None)
        if section is None:
            continue
        body = rest[len(section):]
        if section != "state.":
            body += ".anchor"
        saved_name, _, skey = body.rpartition(".")
        p = params.get(saved_name)
        if p is None:
            p = params.get(by_loose.get(_loose(saved_name), ""))
        if p is None and section == "state." and (body in params or _loose(body) in by_loose):
            saved_name, skey = body, ""  # a parameter's state that is not a dict
            p = torch.empty(0)
        if p is None:
            continue  # vanished: never read
        if isinstance(md, TensorStorageMetadata):
            dtype = md.properties.dtype
            if tuple(md.size) == tuple(p.shape):
                value: object = torch.empty_like(p, dtype=dtype, requires_grad=False)
            else:
                value = torch.empty(tuple(md.size), dtype=dtype)
        else:
            value = None
        if section == "state." and not skey:
            tstate[saved_name] = value  # read as saved; parse() says what it is
        elif section == "state.":
            st = tstate.setdefault(saved_name, {})
            if isinstance(st, dict):
                st[skey] = value
        else:
            anchors[saved_name] = value
    if not groups and "param_groups" not in whole:
        raise ParamwiseError(f"checkpoint {checkpoint_id!r} has no optimizer under key {key!r}",
                             fix="pass key= the name used in dcp.save({key: ...})")
    template: dict = {"state": tstate, "param_groups": [
        groups.get(i, {}) for i in range(max(groups) + 1)] if groups else None}
    if anchors:
        template[ANCHORS_KEY] = anchors
    template.update(whole)
    dcp.load({key: template} if key else template, checkpoint_id=checkpoint_id,
             storage_reader=reader)  # type: ignore[arg-type]
    return load_state_dict(optimizer, template, keep_saved_options=keep_saved_options,
                           strict=strict, model=model)
