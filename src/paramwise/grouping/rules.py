"""Rules: a selector (*where*) and the options it sets (*what*), plus presets built from them.

Every matching rule applies, in order; a later rule's option overrides an earlier one's.
``lr_mult`` / ``weight_decay_mult`` multiply the resolved base value instead of replacing it,
and several multipliers on one parameter compose (their product is applied)::

    lr(p)           = (last rule's lr for p, else the default lr) * Π lr_mult of p's rules
    weight_decay(p) = (last weight_decay for p, else the default)  * Π weight_decay_mult

Example (the classic recipe: decay weights, not biases)::

    >>> rules = [Rule("bias", weight_decay=0.0)]
    >>> no_decay()
    Rule('bias | norm | embedding | gain', weight_decay=0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import ParamwiseError
from ..options.keys import check_value, resolve_optimizer
from .inventory import Inventory
from .selectors import Selector, SelectorLike, as_selector

__all__ = ["Rule", "no_decay", "Preset", "Partition", "RuleLike", "expand_rules"]


@dataclass(frozen=True, init=False)
class Rule:
    """One rule: *where* (``select``) and *what* (``options``).

    ``select`` is a selector string (the language is in :func:`paramwise.parse`), a
    :class:`paramwise.Selector`, or a callable ``(name, param, module) -> bool``. ``options`` are
    any keys of the optimizer (``lr``, ``weight_decay``, ``momentum``, ``betas`` ...) or of
    paramwise: the multipliers ``lr_mult`` and ``weight_decay_mult``, the regularizers (``l1``,
    ``l2``, ``group_lasso``, ``l2_to_init``, ``decoupled_decay``, ``max_norm`` and their
    settings), and ``optimizer`` (a class or name: these parameters go to another optimizer,
    see :class:`paramwise.Hybrid`). ``label`` names the rule in messages and in
    :func:`paramwise.explain` (default: its selector text); ``origin`` says where the rule was
    written (``"rules[2]"`` in a config file) and replaces ``"rule <index>"`` there.

    Every matching rule applies, in order; a later rule's option overrides an earlier one's.
    ``lr_mult`` and ``weight_decay_mult`` multiply the resolved base value instead, and several
    multipliers on one parameter compose::

        lr(p)           = (last rule's lr for p, else the default lr) * product of p's lr_mult
        weight_decay(p) = (last weight_decay for p, else the default) * product of weight_decay_mult

    Values are checked when the rule is made; keys, when it meets the optimizer class.

        >>> import paramwise
        >>> paramwise.Rule("module:backbone", lr_mult=0.1)
        Rule('module:backbone', lr_mult=0.1)
        >>> paramwise.Rule("bias | norm", weight_decay=0.0, label="no decay")
        Rule('no decay', weight_decay=0.0)
    """

    select: Selector
    options: dict[str, object] = field(hash=False)
    label: str
    origin: str | None

    def __init__(self, select: SelectorLike, *, label: str | None = None,
                 origin: str | None = None, **options: object):
        sel = as_selector(select)
        text = label or sel.text
        if not options:
            raise ParamwiseError(f"Rule({text!r}) sets no option",
                                 fix=f"add what it should set, e.g. Rule({text!r}, weight_decay=0.0)")
        for k, v in options.items():
            check_value(k, v, where=f"Rule({text!r})")
        if "optimizer" in options:  # a name or path becomes the class, checked once
            options["optimizer"] = resolve_optimizer(options["optimizer"])  # type: ignore[arg-type]
        object.__setattr__(self, "select", sel)
        object.__setattr__(self, "options", dict(options))
        object.__setattr__(self, "label", text)
        object.__setattr__(self, "origin", origin)

    @classmethod
    def checked(cls, select: Selector, options: dict[str, object], *, label: str,
                origin: str | None) -> Rule:
        """A rule from parts its maker has already checked (a preset's rule per level, whose
        values it computed): the same rule as ``Rule(select, label=label, origin=origin,
        **options)``, without checking each value again."""
        rule = object.__new__(cls)
        object.__setattr__(rule, "select", select)
        object.__setattr__(rule, "options", options)
        object.__setattr__(rule, "label", label)
        object.__setattr__(rule, "origin", origin)
        return rule

    def with_origin(self, origin: str) -> Rule:
        """This rule, said to come from ``origin`` (e.g. ``"rules[2]"``)."""
        return Rule(self.select, label=self.label, origin=origin, **self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v.__name__ if isinstance(v, type) else repr(v)}"
                         for k, v in self.options.items())
        return f"Rule({self.label!r}, {opts})"


class Preset:
    """A rule generator that needs the model (``layer_decay``): ``expand(inv)`` gives the rules
    and partitions it stands for; ``with_origin`` names it in messages."""

    origin: str | None

    def expand(self, inv: Inventory) -> list[Rule | Partition]:  # pragma: no cover - abstract
        raise NotImplementedError

    def with_origin(self, origin: str) -> Preset:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Partition:
    """Rules that split the parameters, each entry matched by at most one of them: entry ``i``
    gets ``rules[level[i]]`` (none when ``level[i] < 0``). One column for the plan however many
    rules, so a preset with a rule per depth costs one pass, not one per depth."""

    rules: list[Rule]
    level: list[int]


def no_decay(*, bias: bool = True, norm: bool = True, embedding: bool = True,
             gain: bool = True, key: str = "weight_decay") -> Rule:
    """The no-decay rule: ``key = 0`` for biases, norm-layer parameters, embeddings and gains.

    The roles, read from the module tree (the class of the module that owns a parameter, the
    attribute that holds it, its shape): ``bias``; ``norm`` (norm layers' scales and shifts;
    :func:`paramwise.register_norm` adds a class); ``embedding`` (``Embedding`` tables, learned
    positions and tokens, names a module's ``no_weight_decay()`` lists); ``gain`` (layer scales,
    PReLU slopes, ``(C, 1, 1)`` scales, CLIP's ``logit_scale``: at most one dimension larger than 1
    and no layer's weight). Decay pulls a gain towards 0, i.e. switches its branch off, which none
    of the recipes (timm, DeiT III, ConvNeXt, DINOv2) want. Each role can be switched off; ``key``
    picks the option zeroed (``"decoupled_decay"`` or ``"l2"`` when decay comes from a paramwise
    regularizer).

        >>> import paramwise
        >>> paramwise.no_decay()
        Rule('bias | norm | embedding | gain', weight_decay=0.0)
        >>> paramwise.no_decay(gain=False)
        Rule('bias | norm | embedding', weight_decay=0.0)
    """
    roles = [r for r, on in (("bias", bias), ("norm", norm), ("embedding", embedding),
                             ("gain", gain)) if on]
    if not roles:
        raise ParamwiseError("no_decay() with every role switched off selects nothing",
                             fix="keep at least one of bias, norm, embedding, gain")
    return Rule(" | ".join(roles), **{key: 0.0})


RuleLike = Rule | Preset


def expand_rules(rules: Iterable[RuleLike] | RuleLike, inv: Inventory) -> list[Rule | Partition]:
    """Flatten presets that depend on the model (``layer_decay``) into plain rules and
    partitions, in the user's order."""
    if isinstance(rules, (Rule, Preset)):
        rules = [rules]
    if isinstance(rules, (str, dict)) or not isinstance(rules, (Sequence, Iterable)):
        raise ParamwiseError(f"rules must be a list of paramwise.Rule, got {type(rules).__name__}",
                             fix="e.g. rules=[paramwise.Rule('bias', weight_decay=0.0)]")
    out: list[Rule | Partition] = []
    for i, r in enumerate(rules):
        # Messages name rules by the user's own index, also after presets expand.
        if isinstance(r, Rule):
            out.append(r if r.origin else r.with_origin(f"rule {i}"))
        elif isinstance(r, Preset):
            out.extend((r if r.origin else r.with_origin(f"rule {i}")).expand(inv))
        elif isinstance(r, nn.Module):
            raise ParamwiseError(f"rule {i} is a model", fix="pass the model as the first argument")
        else:
            raise ParamwiseError(f"rule {i} is a {type(r).__name__} ({r!r}), not a paramwise.Rule",
                                 fix="wrap it: paramwise.Rule('<selector>', option=value)")
    return out
