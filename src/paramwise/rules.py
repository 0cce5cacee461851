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

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from .errors import ParamwiseError
from .inventory import Inventory
from .options import check_value
from .selectors import Selector, SelectorLike, as_selector

__all__ = ["Rule", "no_decay", "layer_decay", "LayerDecay", "RuleLike", "expand_rules"]


@dataclass(frozen=True, init=False)
class Rule:
    """One rule: ``Rule(select, **options)``.

    ``select`` is a selector string (see :mod:`paramwise.selectors`), a :class:`Selector`, or a
    callable ``(name, param, module) -> bool``. ``options`` are any keys of the optimizer
    (``lr``, ``weight_decay``, ``momentum``, ``betas`` ...) or of paramwise (``lr_mult``,
    ``weight_decay_mult``, the regularizers ``l1``, ``l2``, ...). ``label`` names the rule in
    messages and in :func:`paramwise.explain` (default: its selector text); ``origin`` says where
    the rule was written (``"rules[2]"`` in a config file) and replaces ``"rule <index>"`` there.

        >>> Rule("module:backbone", lr_mult=0.1)
        Rule('module:backbone', lr_mult=0.1)
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
        object.__setattr__(self, "select", sel)
        object.__setattr__(self, "options", dict(options))
        object.__setattr__(self, "label", text)
        object.__setattr__(self, "origin", origin)

    def with_origin(self, origin: str) -> Rule:
        """This rule, said to come from ``origin`` (e.g. ``"rules[2]"``)."""
        return Rule(self.select, label=self.label, origin=origin, **self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Rule({self.label!r}, {opts})"


class _MaskSelector(Selector):
    """A selector whose mask was computed up front (used by presets that read the whole tree)."""

    def __init__(self, mask: int, text: str) -> None:
        self._mask, self.text = mask, text

    def mask(self, inv: Inventory) -> int:
        return self._mask


@dataclass
class LayerDecay:
    """Layer-wise learning-rate decay: a rule *generator*, expanded against the model.

    Depth 0 holds what comes before the blocks (embeddings, stems), depths ``1..L`` the blocks
    (the numbered children of the model's largest ``ModuleList``/``Sequential``, ranked in
    order, so parameter-free entries such as activations leave no gaps), depth ``L+1`` what
    comes after (final norm, head). With ``D`` the deepest depth present (``L+1`` when there is
    a head), a parameter at depth ``d`` gets ``lr_mult = rate ** (D - d)``: the head trains at
    the base lr, the embeddings at ``rate ** D`` times it.
    ``depth`` overrides the detection: a callable ``name -> int`` or a regex whose first group
    captures the block index (``r"layers\\.(\\d+)\\."``; names that do not match are depth 0 if
    they come before the first match, else ``L+1``).
    """

    rate: float
    depth: Callable[[str], int] | str | None = None
    origin: str | None = None

    def with_origin(self, origin: str) -> LayerDecay:
        """This preset, said to come from ``origin`` (e.g. ``"rules[2]"``)."""
        return LayerDecay(self.rate, self.depth, origin)

    def expand(self, inv: Inventory) -> list[Rule]:
        depths = self.depths(inv)
        top = max(depths) if depths else 0
        by_depth: dict[int, list[bool]] = {}
        n = len(depths)
        for i, d in enumerate(depths):
            by_depth.setdefault(d, [False] * n)[i] = True
        from .inventory import bools_to_mask

        return [
            Rule(_MaskSelector(bools_to_mask(bits), f"layer_decay depth {d}/{top}"),
                 origin=self.origin, lr_mult=float(self.rate) ** (top - d))
            for d, bits in sorted(by_depth.items())
        ]

    def depths(self, inv: Inventory) -> list[int]:
        """Depth per inventory entry; every name of a tied tensor takes its first name's."""
        per_name = self._depths(inv)
        first, unique = inv.first, inv.unique
        return [per_name[first[unique[i]]] for i in range(len(per_name))]

    def _depths(self, inv: Inventory) -> list[int]:
        if callable(self.depth):
            return [int(self.depth(n)) for n in inv.names]
        if isinstance(self.depth, str):
            rx = re.compile(self.depth)
            idx = [(int(m.group(1)) if (m := rx.search(n)) else None) for n in inv.names]
        else:
            idx = self._detect(inv)
        known = [i for i in idx if i is not None]
        if not known:
            raise ParamwiseError(
                "layer_decay found no blocks" + (f" matching {self.depth!r}" if self.depth else
                                                 " (no ModuleList/Sequential of blocks)"),
                fix="pass depth=r'blocks\\.(\\d+)\\.' (a regex capturing the block index) or a "
                "callable name -> depth",
            )
        rank = {b: r + 1 for r, b in enumerate(sorted(set(known)))}
        out, seen_block = [], False
        for i in idx:
            if i is None:
                out.append(len(rank) + 1 if seen_block else 0)
            else:
                seen_block = True
                out.append(rank[i])
        # Embeddings are the bottom layer wherever they are registered.
        out = [0 if i is None and "embedding" in r else d
               for d, i, r in zip(out, idx, inv.roles)]
        return out

    def _detect(self, inv: Inventory) -> list[int | None]:
        # The blocks container: among module paths not inside a numbered entry themselves, the
        # one whose numbered children (ModuleList / Sequential entries) own parameters, with
        # the most such children; the shallowest on a tie (so a block's inner Sequential, or a
        # numbered entry's, never wins over the blocks).
        counts: dict[str, set[str]] = {}
        for name in inv.names:
            parts = name.split(".")
            for k in range(len(parts) - 1):
                if parts[k].isdigit():
                    counts.setdefault(".".join(parts[:k]), set()).add(parts[k])
        def nested(prefix: str) -> bool:
            return any(seg.isdigit() for seg in prefix.split(".")) if prefix else False

        pool = {p: k for p, k in counts.items() if not nested(p)} or counts
        best, best_n = None, 1
        for prefix, kids in sorted(pool.items(), key=lambda pk: pk[0].count(".") + bool(pk[0])):
            if len(kids) > best_n:
                best, best_n = prefix, len(kids)
        if best is None:
            return [None] * len(inv.names)
        head = f"{best}." if best else ""
        out: list[int | None] = []
        for name in inv.names:
            if name.startswith(head):
                rest = name[len(head):].split(".", 1)[0]
                out.append(int(rest) if rest.isdigit() else None)
            else:
                out.append(None)
        return out


def layer_decay(rate: float, *, depth: Callable[[str], int] | str | None = None) -> LayerDecay:
    """Per-depth ``lr_mult = rate ** (D - depth)`` (BEiT/ELECTRA-style); see :class:`LayerDecay`.

        >>> rules = [no_decay(), layer_decay(0.75)]
    """
    check_value("lr_mult", rate, where="layer_decay(rate)")
    if not 0 < float(rate) <= 1:
        raise ParamwiseError(f"layer_decay(rate={rate}) must lie in (0, 1]",
                             fix="typical values are 0.65-0.9")
    return LayerDecay(float(rate), depth)


def no_decay(*, bias: bool = True, norm: bool = True, embedding: bool = True,
             gain: bool = True, key: str = "weight_decay") -> Rule:
    """The no-decay rule: ``key = 0`` for biases, norm-layer parameters, embeddings and gains.

    The roles (see :mod:`paramwise.inventory`): ``bias``; ``norm`` (norm layers' scales and
    shifts); ``embedding`` (``Embedding`` tables, learned positions and tokens, names a module's
    ``no_weight_decay()`` lists); ``gain`` (layer scales, PReLU slopes, ``(C, 1, 1)`` scales,
    CLIP's ``logit_scale``: at most one dimension larger than 1 and no layer's weight). Decay
    pulls a gain towards 0, i.e. switches its branch off, which none of the recipes (timm,
    DeiT III, ConvNeXt, DINOv2) want. Each role can be switched off; ``key`` picks the option
    zeroed (``"decoupled_decay"`` or ``"l2"`` when decay comes from a paramwise regularizer).

        >>> no_decay(gain=False)
        Rule('bias | norm | embedding', weight_decay=0.0)
    """
    roles = [r for r, on in (("bias", bias), ("norm", norm), ("embedding", embedding),
                             ("gain", gain)) if on]
    if not roles:
        raise ParamwiseError("no_decay() with every role switched off selects nothing",
                             fix="keep at least one of bias, norm, embedding, gain")
    return Rule(" | ".join(roles), **{key: 0.0})


RuleLike = Rule | LayerDecay


def expand_rules(rules: Iterable[RuleLike] | RuleLike, inv: Inventory) -> list[Rule]:
    """Flatten presets that depend on the model (``layer_decay``) into plain rules."""
    if isinstance(rules, (Rule, LayerDecay)):
        rules = [rules]
    if isinstance(rules, (str, dict)) or not isinstance(rules, (Sequence, Iterable)):
        raise ParamwiseError(f"rules must be a list of paramwise.Rule, got {type(rules).__name__}",
                             fix="e.g. rules=[paramwise.Rule('bias', weight_decay=0.0)]")
    out: list[Rule] = []
    for i, r in enumerate(rules):
        # Messages name rules by the user's own index, also after presets expand.
        if isinstance(r, Rule):
            out.append(r if r.origin else r.with_origin(f"rule {i}"))
        elif isinstance(r, LayerDecay):
            out.extend((r if r.origin else r.with_origin(f"rule {i}")).expand(inv))
        elif isinstance(r, nn.Module):
            raise ParamwiseError(f"rule {i} is a model", fix="pass the model as the first argument")
        else:
            raise ParamwiseError(f"rule {i} is a {type(r).__name__} ({r!r}), not a paramwise.Rule",
                                 fix="wrap it: paramwise.Rule('<selector>', option=value)")
    return out
