"""Groups: merge parameters with identical resolved options into the fewest param groups.

Groups are ordered by the first appearance of their parameters in ``model.named_parameters()``,
and each carries ``param_names`` (canonical names) beside ``params``, as torch accepts::

    [{'params': [w1, w2], 'param_names': ['0.weight', '2.weight'], 'weight_decay': 1e-05},
     {'params': [b1, b2], 'param_names': ['0.bias', '2.bias'], 'weight_decay': 0.0}]

Few groups keep the foreach/fused optimizer paths fast: they batch work per group.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import torch
from torch import nn

from .perclass import Member, check_constraints, constrained
from .plan import Plan, gc_paused, rule_ref

__all__ = ["build_groups", "groups_by_class", "freeze"]


def freeze(value: object) -> object:
    """A hashable stand-in for an option value (lists → tuples, tensors by identity)."""
    t = type(value)
    if t is float:  # the common cases first, as the general ones below would answer
        return ("num", value)
    if t is str:
        return ("str", value)
    if t is bool:
        return ("bool", value)
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
    return [g for _, gs in groups_by_class(plan) for g in gs]


def groups_by_class(plan: Plan) -> list[tuple[type | None, list[dict]]]:
    """The groups per optimizer class (``optimizer`` rules), classes in order of first
    appearance; one entry when a single optimizer is in play. Checks each class's constraints
    (Muon 2-D, LBFGS one group, SparseAdam sparse) before anything is built."""
    with gc_paused():
        parts = _build_groups(plan)
    if len(plan.in_play) > 1 or plan.optim_cls is not None:
        _constraints(plan, parts)
    return parts


def _build_groups(plan: Plan) -> list[tuple[type | None, list[dict]]]:
    inv = plan.inv
    key_of_sig = [(plan.classes[s], tuple(sorted((k, freeze(v)) for k, v in o.items())))
                  for s, o in enumerate(plan.resolved)]
    by_key: dict[tuple, dict] = {}
    per_class: dict[type | None, list[dict]] = {}
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
            per_class.setdefault(key[0], []).append(g)
        g["params"].append(p)
        g["param_names"].append(names[e])
    return list(per_class.items())


def _constraints(plan: Plan, parts: list[tuple[type | None, list[dict]]]) -> None:
    n_groups = {cls: len(gs) for cls, gs in parts}
    if not any(constrained(cls) for cls in n_groups):
        return
    inv = plan.inv
    groups_of = dict(parts)
    senders: dict[int, str] = {}

    def sender(e: int) -> str:  # the last rule that set this parameter's optimizer
        s = plan.entry_sig[e]
        got = senders.get(s)
        if got is None:
            setters = [i for i in plan.sig_rules[s] if "optimizer" in plan.rules[i].options]
            if setters:
                i = setters[-1]
                got = f"{rule_ref(i, plan.rules[i])} ({plan.rules[i].label!r})"
            else:
                cls = plan.optim_cls
                got = (f"the default optimizer ({cls.__name__})" if cls is not None
                       else "the default")
            senders[s] = got
        return got

    def members(cls: type, test: Callable[[int, nn.Module], bool]) -> list[Member]:
        """The parameters of ``cls`` that fail ``test``, in group order."""
        classes, sig, params = plan.classes, plan.entry_sig, inv.params
        index = {id(params[e]): e for e in inv.first if classes[sig[e]] is cls}
        ndims, modules = inv.ndims, inv.modules
        entries = [index[id(p)] for g in groups_of[cls] for p in g["params"]]
        return [(inv.names[e], inv.shape(e), modules[e], sender(e)) for e in entries
                if test(ndims[e], modules[e])]

    check_constraints(n_groups, members)
