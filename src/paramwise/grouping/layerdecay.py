"""Layer-wise learning-rate decay: one depth per tensor, found from the module tree.

How the depth of each tensor is found, and what the rate does with it, is in
:func:`layer_decay`'s docstring. Example (the exponents :math:`e = D - d` per entry)::

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    >>> layer_decay(0.5).exponents(Inventory.build(net))[0]
    [2, 2, 1, 1, 0, 0]

Resolved in one pass (a depth per tensor, one partition of the parameters), so the build stays
linear in the number of tensors whatever the depth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ParamwiseError
from ..options.keys import check_value
from ._regexguard import REF_LEN, check
from .inventory import Inventory
from .layertree import detect, group_matcher_ids
from .rules import Partition, Preset, Rule
from .selectors import Selector

__all__ = ["LayerDecay", "layer_decay"]


@dataclass
class LayerDecay(Preset):
    """What :func:`paramwise.layer_decay` returns: a preset (a rule generator) that a rules list
    holds and the build expands against the model."""

    rate: float
    depth: Callable[[str], int] | str | None = None
    min_scale: float = 0.0
    origin: str | None = None

    def with_origin(self, origin: str) -> LayerDecay:
        """This preset, said to come from ``origin`` (e.g. ``"rules[2]"``)."""
        return LayerDecay(self.rate, self.depth, self.min_scale, origin)

    def expand(self, inv: Inventory) -> list[Rule | Partition]:
        exps, top = self.exponents(inv)
        levels = sorted(set(exps), reverse=True)
        at = {e: k for k, e in enumerate(levels)}
        mults = [max(self.min_scale, self.rate ** e) for e in levels]
        texts = [f"layer_decay depth {top - e}/{top}" for e in levels]
        if all(type(m) is float and 0.0 <= m < math.inf for m in mults):  # what Rule() checks
            rules = [Rule.checked(_Depth(t), {"lr_mult": m}, label=t, origin=self.origin)
                     for t, m in zip(texts, mults)]
        else:  # a rate set on the preset by hand: the rule says what is wrong
            rules = [Rule(_Depth(t), origin=self.origin, lr_mult=m) for t, m in zip(texts, mults)]
        return [Partition(rules, [at[e] for e in exps])]

    def exponents(self, inv: Inventory) -> tuple[list[int], int]:
        """Per inventory entry the steps below the top ``e`` (a tied tensor's names share their
        first name's), and the deepest ``D``."""
        if callable(self.depth):
            per_name = _from_depths([int(self.depth(n)) for n in inv.names])
        elif isinstance(self.depth, str):
            per_name = _from_keys(inv, _regex_keys(self.depth, inv.names), self.depth)
        else:
            ids = group_matcher_ids(inv)
            layout = detect(inv) if ids is None else None
            per_name = _from_depths(ids) if ids is not None else \
                (layout.exps if layout is not None else None)
            if per_name is None:
                raise ParamwiseError(
                    "layer_decay found no blocks (no ModuleList/Sequential of blocks)",
                    fix="pass depth=r'blocks\\.(\\d+)\\.' (a regex capturing the block index) "
                    "or a callable name -> depth")
        first, unique = inv.first, inv.unique
        exps = [per_name[first[u]] for u in unique]
        return exps, max(exps, default=0)


def _from_depths(depths: list[int]) -> list[int]:
    top = max(depths, default=0)
    return [top - d for d in depths]


def _regex_keys(pattern: str, names: list[str]) -> list[tuple[int, ...] | None]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ParamwiseError(f"layer_decay depth {pattern!r} is not a valid regex ({e})",
                             fix=r"e.g. depth=r'blocks\.(\d+)\.'") from None
    longest = max(map(len, names), default=0)
    problem = check(rx, max(REF_LEN, longest), search=True)  # a config's regex must not hang
    if problem:
        raise ParamwiseError(f"layer_decay depth {pattern!r} is refused: {problem}",
                             fix=r"capture the index with a simple regex, e.g. "
                             r"r'blocks\.(\d+)\.'")
    out: list[tuple[int, ...] | None] = []
    for n in names:
        m = rx.search(n)
        if m is None:
            out.append(None)
            continue
        groups = [g for g in (m.groups() or (m.group(0),)) if g is not None]
        try:
            out.append(tuple(int(g) for g in groups))
        except ValueError:
            raise ParamwiseError(
                f"layer_decay depth {pattern!r} captured {groups} from {n!r}, not integers",
                fix=r"capture only the block indices, e.g. r'blocks\.(\d+)\.'") from None
    return out


def _from_keys(inv: Inventory, keys: list[tuple[int, ...] | None], pattern: str) -> list[int]:
    """Blocks ranked by their index tuple; unmatched names before the first block are depth 0,
    after it ``L + 1``; embeddings 0."""
    known = sorted({k for k in keys if k is not None})
    if not known:
        raise ParamwiseError(f"layer_decay found no blocks matching {pattern!r}",
                             fix="pass depth=r'blocks\\.(\\d+)\\.' (a regex capturing the block "
                             "index) or a callable name -> depth")
    rank = {k: r + 1 for r, k in enumerate(known)}
    top = len(rank) + 1
    depths, seen = [], False
    for k, roles in zip(keys, inv.roles):
        if k is not None:
            seen = True
            depths.append(rank[k])
        else:
            depths.append(0 if not seen or "embedding" in roles else top)
    return [top - d for d in depths]


class _Depth(Selector):
    """The selector of one level of the partition: it names the level in ``explain``; the
    plan reads the partition's levels, never this mask."""

    def __init__(self, text: str) -> None:
        self.text = text


def layer_decay(rate: float, *, depth: Callable[[str], int] | str | None = None,
                min_scale: float = 0.0) -> LayerDecay:
    """Layer-wise learning-rate decay: ``lr_mult = max(min_scale, rate ** (D - depth))`` per
    tensor, one depth per tensor found from the module tree.

    A parameter ``e`` steps below the top trains at ``lr * max(min_scale, rate ** e)``
    (BEiT/ELECTRA-style): the head at the base lr, the last block at ``rate``, the embeddings at
    ``rate ** D``. Depth ``d = D - e`` counts up from the input:

    - ``0``: what comes before the blocks (stem, patch/word embeddings, tokens; an ``embedding``
      tensor is depth 0 wherever it is registered);
    - ``1..L``: the repeated blocks, in order. On a hierarchical model (Swin, ConvNeXt, ResNet: a
      list of stages, each holding a list of blocks) blocks are numbered *across* stages, and a
      stage's own parameters outside its blocks (a downsampling layer) go with the nearest block
      of that stage: its first block when registered before them (timm, Hugging Face ConvNeXt),
      its last when registered after (Hugging Face / original Swin, as SimMIM's recipe counts);
    - ``L + 1``: what comes after (final norm, pooler, head), as BEiT's and MAE's recipes put the
      final norm (timm's ``group_matcher`` puts it with the last block; paramwise follows a
      model's ``group_matcher()`` exactly when it has one).

    Several towers (CLIP's text and vision encoders, T5's encoder and decoder: block lists with
    the same name in different subtrees) are numbered each on its own, top-aligned (EVA-CLIP): each
    tower's last block is one step below the top. Outside every tower, embeddings are the deepest
    and everything else (projections, ``logit_scale``) is top.

    How the depth is found, first that applies: ``depth=`` (a callable ``name -> int``, or a
    regex whose groups capture the indices: ``r"layers\\.(\\d+)\\.blocks\\.(\\d+)\\."`` numbers
    blocks across stages), the model's timm-style ``group_matcher()``, the module tree.

    The preset is a rule (it sets ``lr_mult``), so it composes with the others: a later rule's
    ``lr_mult`` multiplies it.

        >>> import paramwise, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
        >>> opt = paramwise.optimizer(net, "sgd", [paramwise.layer_decay(0.5)], lr=0.1)
        >>> [(g["param_names"], g["lr"]) for g in opt.param_groups]
        [(['0.weight', '0.bias'], 0.025), (['1.weight', '1.bias'], 0.05), (['2.weight', '2.bias'], 0.1)]
    """
    check_value("lr_mult", rate, where="layer_decay(rate)")
    if not 0 < float(rate) <= 1:
        raise ParamwiseError(f"layer_decay(rate={rate}) must lie in (0, 1]",
                             fix="typical values are 0.65-0.9")
    check_value("lr_mult", min_scale, where="layer_decay(min_scale)")
    if not 0 <= float(min_scale) <= 1:
        raise ParamwiseError(f"layer_decay(min_scale={min_scale}) must lie in [0, 1]",
                             fix="a floor on the multiplier, e.g. min_scale=0.01; 0 for none")
    if depth is not None and not (callable(depth) or isinstance(depth, str)):
        raise ParamwiseError(f"layer_decay(depth={depth!r}) is neither a regex nor a callable",
                             fix=r"pass depth=r'blocks\.(\d+)\.' or a callable name -> depth")
    return LayerDecay(float(rate), depth, float(min_scale))
