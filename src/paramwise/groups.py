"""Groups: merge parameters with identical resolved options into the fewest param groups.

Groups are ordered by the first appearance of their parameters in ``model.named_parameters()``,
and each carries ``param_names`` (canonical names) beside ``params``, as torch accepts::

    [{'params': [w1, w2], 'param_names': ['0.weight', '2.weight'], 'weight_decay': 1e-05},
     {'params': [b1, b2], 'param_names': ['0.bias', '2.bias'], 'weight_decay': 0.0}]

Few groups keep the foreach/fused optimizer paths fast: they batch work per group.
"""

from __future__ import annotations

from numbers import Real

import torch

from .plan import Plan, gc_paused

__all__ = ["build_groups", "freeze"]


def freeze(value: object) -> object:
    """A hashable stand-in for an option value (lists → tuples, tensors by identity)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    # Equal numbers (0 and 0.0) share a group; bools stay apart from 0/1.
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Real):
        return ("num", float(value))
    return (type(value).__name__, value)


def build_groups(plan: Plan) -> list[dict]:
    """One group per distinct resolved option set, in order of first appearance."""
    with gc_paused():
        return _build_groups(plan)


def _build_groups(plan: Plan) -> list[dict]:
    inv = plan.inv
    key_of_sig = [tuple(sorted((k, freeze(v)) for k, v in o.items())) for o in plan.resolved]
    by_key: dict[tuple, dict] = {}
    groups: list[dict] = []
    trainable_only = not plan.include_frozen
    params, names, entry_sig = inv.params, inv.names, plan.entry_sig
    for e in inv.first:
        p = params[e]
        if trainable_only and not p.requires_grad:
            continue
        s = entry_sig[e]
        key = key_of_sig[s]
        g = by_key.get(key)
        if g is None:
            g = by_key[key] = {"params": [], "param_names": [], **plan.resolved[s]}
            groups.append(g)
        g["params"].append(p)
        g["param_names"].append(names[e])
    return groups
