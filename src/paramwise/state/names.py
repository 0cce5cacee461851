"""Which saved entry is which parameter: the canonical names of an optimizer's parameters, and
the match between the names a checkpoint holds and those the optimizer has now.

Names come from each group's ``param_names`` (what :func:`paramwise.param_groups` writes) or,
with ``model=``, from the module tree. A saved name matches a current one exactly, or once
wrapper segments (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``, ...) are dropped
from both::

    >>> _loose("module._orig_mod.blocks.0.attn.weight")
    'blocks.0.attn.weight'
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ParamwiseError
from ..grouping.inventory import Inventory
from ..grouping.roles import WRAPPER_ATTRS
from .saved import _what


def _loose(name: str) -> str:
    """``name`` without wrapper segments: how a name saved from a wrapped model by code that
    did not canonicalise it (e.g. a plain optimizer's ``param_names``) is matched."""
    parts = [s for s in name.split(".") if s not in WRAPPER_ATTRS]
    while len(parts) > 1 and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _group_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None
                 ) -> list[list[str]]:
    """Canonical names of every group's parameters, from the module tree or ``param_names``."""
    if not isinstance(getattr(optimizer, "param_groups", None), list):
        raise ParamwiseError(f"expected a torch.optim.Optimizer, got {_what(optimizer)}",
                             fix="pass the optimizer first, e.g. load_state_dict(opt, state)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ParamwiseError(f"model= expects the nn.Module the optimizer was built for, got "
                             f"{_what(model)}", fix="pass model=the_model, or leave it out")
    by_id: dict[int, str] | None = None
    if model is not None:
        inv = Inventory.build(model)
        by_id = {}
        for e in inv.first:
            by_id.setdefault(id(inv.params[e]), inv.names[e])
    out: list[list[str]] = []
    for gi, g in enumerate(optimizer.param_groups):
        if by_id is not None:
            missing = [p for p in g["params"] if id(p) not in by_id]
            if missing:
                raise ParamwiseError(f"param group {gi} holds a tensor of shape "
                                     f"{tuple(missing[0].shape)} that is not a parameter of the "
                                     "model passed as model=",
                                     fix="pass the model this optimizer was built for")
            out.append([by_id[id(p)] for p in g["params"]])
        elif "param_names" in g and len(g["param_names"]) == len(g["params"]):
            out.append([str(n) for n in g["param_names"]])
        else:
            raise ParamwiseError(
                f"param group {gi} of this {type(optimizer).__name__} has no 'param_names', so "
                "its parameters cannot be keyed by name",
                fix="build the optimizer with paramwise.optimizer()/param_groups(), or pass "
                "model=the_model so names come from the module tree")
    seen: dict[str, int] = {}
    for gi, names in enumerate(out):
        for n in names:
            if n in seen:
                raise ParamwiseError(
                    f"the name {n!r} appears twice in the optimizer's param_names (param "
                    f"groups {seen[n]} and {gi})", fix="every parameter needs its own name; "
                    "rebuild the groups with paramwise.param_groups()")
            seen[n] = gi
    return out


def _match(current: Mapping[str, object], saved_names: list[str], renamed: dict[str, str],
                vanished: list[str]) -> dict[str, str]:
    """Current name -> saved name: exact names, then names equal without wrapper segments
    (recorded in ``renamed``, saved name -> current name); saved names matching nothing are
    appended to ``vanished``."""
    match = {s: s for s in saved_names if s in current}
    loose_current: dict[str, list[str]] = {}
    for n in current:
        loose_current.setdefault(_loose(n), []).append(n)
    renamed_to: set[str] = set()
    for s in (s for s in saved_names if s not in current):
        hits = [n for n in loose_current.get(_loose(s), []) if n not in match or n in renamed_to]
        if len(hits) == 1 and hits[0] in renamed_to:
            raise ParamwiseError(
                f"the saved names {match[hits[0]]!r} and {s!r} both load as parameter "
                f"{hits[0]!r} once wrapper segments are dropped",
                fix="keep one of the two in the checkpoint (paramwise.state_dict(opt) saves "
                "canonical names)")
        if len(hits) == 1:
            match[hits[0]] = s
            renamed[s] = hits[0]
            renamed_to.add(hits[0])
        else:
            vanished.append(s)
    return match
