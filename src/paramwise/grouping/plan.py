"""Plan: apply the rules to the inventory, resolve every parameter's options, check them.

Resolution for one parameter, with ``R`` its matching rules in order::

    opts  = defaults, then each r in R overrides the keys it sets      (cascade)
    mults = Π over R of each ``<key>_mult``                             (compose)
    opts[key] = opts[key] * mults[key_mult]                             (concrete values)

Parameters whose rules match identically share one resolution, so a model of 100k tensors
with 20 rules resolves a handful of distinct option sets, not 100k. The plan checks, and raises
:class:`~paramwise.errors.ParamwiseError` for: unknown option keys (with the closest valid
key), bad values, multipliers without a base value, rules that match nothing (strict mode),
tied parameters that rules resolve differently, regularizer options a parameter cannot take,
and models with nothing to train.

    >>> import torch.nn as nn
    >>> plan = make_plan(nn.Linear(3, 2), [Rule("bias", weight_decay=0.0)], weight_decay=0.1)
    >>> [plan.options_of(i) for i in range(2)]
    [{'weight_decay': 0.1}, {'weight_decay': 0.0}]
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParamwiseError, user_stacklevel
from ..options import regularization as reg
from ..options.keys import (
    MULTIPLIERS,
    bool_problem,
    check_key,
    check_value,
    optimizer_defaults,
    sets,
)
from ..options.ranges import constructor_problem, range_problem
from .inventory import Inventory, bools_to_mask, mask_to_str
from .perclass import accepts, bool_options, check_key_any, class_name, wrong_class_fix
from .rules import Partition, Rule, RuleLike, expand_rules

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """The resolved plan for one model: rules, their masks, and options per parameter name."""

    inv: Inventory
    rules: list[Rule]
    masks: list[int | None]  # None: a level of a partition (layer_decay), matched by level
    defaults: dict[str, object]
    optim_cls: type | None
    include_frozen: bool
    entry_sig: list[int]  # entry -> index into ``resolved``
    resolved: list[dict[str, object]]
    sig_rules: list[tuple[int, ...]]  # resolution -> indices of its matching rules
    classes: list[type | None]  # resolution -> its optimizer class (``optimizer`` option)
    in_play: list[type | None]  # the default class, then those rules name, in order

    def class_of(self, entry: int) -> type | None:
        """The optimizer class entry ``entry`` goes to."""
        return self.classes[self.entry_sig[entry]]

    def options_of(self, entry: int) -> dict[str, object]:
        """Resolved options of entry ``entry`` (a parameter name)."""
        return self.resolved[self.entry_sig[entry]]

    def rules_of(self, entry: int) -> list[int]:
        """Indices of the rules that match entry ``entry``, in order."""
        return list(self.sig_rules[self.entry_sig[entry]])

    def included(self, u: int) -> bool:
        """Whether tensor ``u`` goes into a group (trainable, or frozen ones were asked for)."""
        return self.include_frozen or self.inv.trainable(self.inv.first[u])


def rule_ref(i: int, rule: Rule) -> str:
    """How messages name rule ``i``: its origin (``rules[2]`` in a config) or ``rule <i>``."""
    return rule.origin or f"rule {i}"


def _where(i: int, rule: Rule) -> str:
    label = rule.label if len(rule.label) <= 80 else rule.label[:60] + f"... ({len(rule.label):,} chars)"
    return f"{rule_ref(i, rule)} ({label!r})"


def _resolve(defaults: Mapping[str, object], rules: list[Rule], hit: tuple[int, ...]
             ) -> dict[str, object]:
    opts = dict(defaults)
    mults: dict[str, float] = {}
    set_by: dict[str, int] = {}
    for i in hit:
        for k, v in rules[i].options.items():
            if k in MULTIPLIERS:
                mults[k] = mults.get(k, 1.0) * float(v)  # type: ignore[arg-type]
                set_by[k] = i
            else:
                opts[k] = v
    for k, m in mults.items():
        base_key = MULTIPLIERS[k]
        if base_key not in opts:
            i = set_by[k]
            raise ParamwiseError(
                f"{_where(i, rules[i])} sets {k}={rules[i].options[k]} but no {base_key} is set "
                "to multiply",
                fix=f"pass {base_key}=... to paramwise.optimizer()/param_groups(), or set "
                f"{base_key} in a rule that matches these parameters",
            )
        base = opts[base_key]
        # A tensor lr (capturable/compiled optimizers) stays a tensor, a new one per group.
        if isinstance(base, torch.Tensor):
            opts[base_key] = base * m
            continue
        value = float(base) * m  # type: ignore[arg-type]
        factors = [rules[i].options[k] for i in hit if k in rules[i].options]
        if not math.isfinite(value) or (value == 0 and float(base) != 0  # type: ignore[arg-type]
                                        and all(float(f) != 0 for f in factors)):  # type: ignore[arg-type]
            what = "overflows to inf" if not math.isfinite(value) else "underflows to 0.0"
            who = ", ".join(_where(i, rules[i]) for i in hit if k in rules[i].options)
            raise ParamwiseError(
                f"{base_key} = {base} * {' * '.join(str(f) for f in factors)} {what} "
                f"(multipliers from {who})",
                fix=f"use multipliers whose product with {base_key} is a finite, nonzero float; "
                f"set {base_key}=0.0 directly if that is what you mean")
        opts[base_key] = value
    return opts


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building: the plan allocates many small objects next to a
    model of many modules, and generational passes over that heap double the build time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@gc_paused()
def make_plan(
    model: nn.Module | Inventory,
    rules: Iterable[RuleLike] | RuleLike = (),
    *,
    optimizer: type | None = None,
    strict: bool = True,
    include_frozen: bool = False,
    **defaults: object,
) -> Plan:
    """Resolve ``rules`` over ``model``; see the module docstring for the semantics."""
    inv = model if isinstance(model, Inventory) else Inventory.build(model)
    if inv.num_tensors == 0:
        raise ParamwiseError("the model has no parameters", fix="build the model before the "
                             "optimizer (lazy modules need one forward pass first)")
    columns = expand_rules(rules, inv)
    rule_list = [r for c in columns for r in (c.rules if isinstance(c, Partition) else (c,))]
    in_play = list(dict.fromkeys([optimizer, *(r.options["optimizer"] for r in rule_list
                                               if "optimizer" in r.options)]))
    multi = len(in_play) > 1

    def check(k: str, where: str) -> None:
        if multi:
            check_key_any(k, in_play, where=where)
        else:
            check_key(k, optimizer, where=where)

    for k, v in defaults.items():
        check(k, "the defaults")
        check_value(k, v, where="the defaults")
        if k in MULTIPLIERS:
            raise ParamwiseError(
                f"the defaults set {k}={v}, but a multiplier only scales what rules select",
                fix=f"pass {MULTIPLIERS[k]}=<value> directly, or use "
                f"Rule('all', {k}={v})")
        if k == "optimizer":
            raise ParamwiseError("the defaults set 'optimizer'",
                                 fix="pass the default optimizer as paramwise.optimizer()'s "
                                 "second argument, and per-parameter ones in rules")
    valid: set[str] = set()  # keys checked already (a preset's levels repeat the same key)
    for i, r in enumerate(rule_list):
        for k in r.options:
            if k not in valid:
                check(k, _where(i, r))
                valid.add(k)
    # Defaults go to every class in play that takes them.
    per_class = {c: ({k: v for k, v in defaults.items() if accepts(c, k)} if multi else defaults)
                 for c in in_play}

    n = len(inv)
    considered = [True] * n if include_frozen else [p.requires_grad for p in inv.params]
    if not any(considered):
        raise ParamwiseError(
            f"all {inv.num_tensors} parameter tensors of the model are frozen "
            "(requires_grad=False), so there is nothing to optimize",
            fix="unfreeze what should train (p.requires_grad_(True)), or pass include_frozen=True",
        )
    live = bools_to_mask(considered)
    masks: list[int | None] = []
    cols: list[object] = []  # per column, a value per entry: '0'/'1', or a rule index / -1
    col_rule: list[int | None] = []  # a mask column's rule index; None for a partition
    for c in columns:
        if isinstance(c, Partition):
            base = len(masks)
            masks.extend(None for _ in c.rules)
            cols.append([base + lv if lv >= 0 else -1 for lv in c.level])
            col_rule.append(None)
        else:
            try:
                masks.append(c.select.mask(inv))
            except ParamwiseError as e:  # name the rule whose selector failed
                i = len(masks)
                raise ParamwiseError(f"{_where(i, rule_list[i])}: {e.problem}", fix=e.fix,
                                     detail=e.detail) from e.__cause__
            cols.append(mask_to_str(masks[-1], n))
            col_rule.append(len(masks) - 1)
    _check_matches(inv, rule_list, masks, live, strict)

    # One resolution per distinct pattern of matching rules: each entry's pattern (its row
    # across the columns) numbered in order of first appearance, in one pass at C speed.
    sig_index: defaultdict[tuple, int] = defaultdict(itertools.count().__next__)
    rows = zip(*cols) if cols else itertools.repeat((), n)  # type: ignore[call-overload]
    entry_sig: list[int] = list(map(sig_index.__getitem__, rows))
    resolved: list[dict[str, object]] = []
    sig_rules: list[tuple[int, ...]] = []
    classes: list[type | None] = []
    for key in sig_index:  # in the order of their numbers
        hit = tuple(j if c == "1" else c for j, c in zip(col_rule, key)
                    if c == "1" or (j is None and c >= 0))
        sig_rules.append(hit)  # type: ignore[arg-type]
        cls = optimizer
        for j in hit:
            cls = rule_list[j].options.get("optimizer", cls)  # type: ignore[arg-type, assignment]
        classes.append(cls)
        opts = _resolve(per_class[cls], rule_list, hit)  # type: ignore[arg-type]
        opts.pop("optimizer", None)
        resolved.append(opts)

    plan = Plan(inv, rule_list, masks, dict(defaults), optimizer, include_frozen, entry_sig,
                resolved, sig_rules, classes, in_play)
    _check_per_class(plan)
    _check_tied(plan)
    _check_regularizers(plan)
    return plan


def _check_matches(inv: Inventory, rules: list[Rule], masks: list[int | None], live: int,
                   strict: bool) -> None:
    for i, (r, m) in enumerate(zip(rules, masks)):
        if m is None or m & live:
            continue
        if m:
            frozen = [inv.names[j] for j, c in enumerate(mask_to_str(m, len(inv))) if c == "1"]
            warnings.warn(f"{_where(i, r)} matched only frozen parameters (requires_grad=False), "
                          f"e.g. {frozen[0]!r}; it has no effect unless include_frozen=True",
                          stacklevel=user_stacklevel())
            continue
        msg = f"{_where(i, r)} matched no parameter ({r.select.describe_miss(inv)})"
        if strict:
            raise ParamwiseError(msg,
                                 fix="fix the selector, remove the rule, or pass strict=False to "
                                 "only warn")
        warnings.warn(msg, stacklevel=user_stacklevel())


def _diff(a: Mapping[str, object], b: Mapping[str, object]) -> tuple[str, list[str]]:
    def show(d: Mapping[str, object], k: str) -> str:
        return repr(d[k]) if k in d else "unset"

    keys = [k for k in dict.fromkeys([*a, *b]) if show(a, k) != show(b, k)]
    return ", ".join(f"{k}={show(a, k)} vs {show(b, k)}" for k in keys), keys


def _who(plan: Plan, s: int, k: str) -> str:
    """Who gave resolution ``s`` its option ``k``: the last matching rule that sets it (or its
    multiplier), else the defaults."""
    i = next((j for j in reversed(plan.sig_rules[s]) if k in plan.rules[j].options
              or f"{k}_mult" in plan.rules[j].options), None)
    return "the defaults" if i is None else _where(i, plan.rules[i])


def _names(plan: Plan, s: int) -> list[str]:
    return [plan.inv.names[e] for e, t in enumerate(plan.entry_sig) if t == s]


def _check_per_class(plan: Plan) -> None:
    """Every option a rule set must be taken by the class of the parameters it reached, a bool
    option of that class's signature must be a bool, and every group's values must pass the
    checks torch's constructor applies to its defaults (torch never checks a group's own)."""
    memo: set = set()  # option sets torch's constructor took
    taken: set[tuple[type | None, str]] = set()  # (class, key) pairs accepts() allowed
    for s, (opts, cls) in enumerate(zip(plan.resolved, plan.classes)):
        bools = bool_options(cls)
        for k, v in opts.items():
            problem = bool_problem(k, v) if k in bools else None
            if problem:
                raise ParamwiseError(f"{sets(_who(plan, s, k))} {k}={v!r} for {class_name(cls)}: "
                                     f"{problem}", fix=f"write {k}=True or {k}=False")
            if (cls, k) not in taken and not accepts(cls, k):
                names = _names(plan, s)
                i = next(j for j in reversed(plan.sig_rules[s]) if k in plan.rules[j].options)
                raise ParamwiseError(
                    f"{_where(i, plan.rules[i])} sets {k}, which {class_name(cls)} does not take, "
                    f"for {len(names)} parameters that go to {class_name(cls)} (e.g. "
                    f"{names[0]!r})", fix=wrong_class_fix(k, cls, plan.in_play))  # type: ignore[arg-type]
            taken.add((cls, k))
            bad = range_problem(k, v, cls)
            if bad:
                raise ParamwiseError(f"{sets(_who(plan, s, k))} {k}={v!r} for {class_name(cls)}, "
                                     f"but {bad[0]}", fix=bad[1])
        refused = constructor_problem(cls, opts, memo) if cls is not None else None
        if refused:
            k, msg = refused
            name, names = class_name(cls), _names(plan, s)
            at = f"{len(names)} parameter{'s' * (len(names) > 1)} of {name} (e.g. {names[0]!r})"
            if k is None:  # no one option alone: name everyone who set this group's options
                who = list(dict.fromkeys(_who(plan, s, o) for o in opts))
                verb = "gives" if who == [who[0]] != ["the defaults"] else "give"
                raise ParamwiseError(f"{' and '.join(who)} {verb} {at} options it refuses together: {msg}",
                                     fix=f"change the options {name} names; paramwise.report() "
                                     "shows each group's options")
            default = optimizer_defaults(cls).get(k)  # type: ignore[arg-type]
            raise ParamwiseError(
                f"{sets(_who(plan, s, k))} {k}={opts[k]!r} for {at}, which {name} refuses: {msg}",
                fix=f"set what {name} asks for, or drop {k} (its default: {k}={default!r}); "
                "paramwise.report() shows each group's options")


def _check_tied(plan: Plan) -> None:
    inv = plan.inv

    def refs(e: int, keys: list[str]) -> str:  # who set the differing keys of entry e
        hit = [rule_ref(i, plan.rules[i]) for i in plan.rules_of(e)
               if any(k in plan.rules[i].options or f"{k}_mult" in plan.rules[i].options
                      for k in keys)]
        return ", ".join(hit) if hit else "the defaults"

    tied = inv.tied()
    for u in sorted(tied):
        names = tied[u]
        if not plan.included(u):
            continue
        first = names[0]
        for other in names[1:]:
            if plan.entry_sig[other] == plan.entry_sig[first]:
                continue
            a, b = plan.options_of(first), plan.options_of(other)
            ca, cb = plan.class_of(first), plan.class_of(other)
            if a == b and ca is cb:
                continue
            if ca is not cb:
                a, b = {**a, "optimizer": class_name(ca)}, {**b, "optimizer": class_name(cb)}
            n1, n2 = inv.names[first], inv.names[other]
            diff, keys = _diff(a, b)
            raise ParamwiseError(
                f"{n1!r} and {n2!r} are the same (tied) tensor, but the rules give them different "
                f"options: {diff} (set by {refs(first, keys)} vs {refs(other, keys)})",
                fix=f"a tensor has one set of options: make the rules that differ select both "
                f"names (or neither), e.g. add '| {n2}' to their selectors, or set the option for "
                f"both last with Rule('{n1} | {n2}', ...)",
            )


def _check_regularizers(plan: Plan) -> None:
    keys = reg.REG_KEYS
    inv = plan.inv
    needs = [s for s, o in enumerate(plan.resolved) if keys & o.keys()]
    if not needs:
        return
    needs_set = set(needs)
    for u in range(inv.num_tensors):
        e = inv.first[u]
        s = plan.entry_sig[e]
        if s not in needs_set or not plan.included(u):
            continue
        opts = plan.resolved[s]
        problem = reg.check_options({k: v for k, v in opts.items() if k in keys}, inv.shape(e))
        if problem:
            setters = [i for i in plan.sig_rules[s] if keys & plan.rules[i].options.keys()]
            who = (", ".join(_where(i, plan.rules[i]) for i in setters) if setters
                   else "the defaults")
            raise ParamwiseError(f"{who}: for parameter {inv.names[e]!r} of shape "
                                 f"{tuple(inv.shape(e))}: {problem}")
