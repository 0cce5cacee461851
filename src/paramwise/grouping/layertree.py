"""Where the repeated blocks are: depths for ``layer_decay`` read from the module tree.

Two readers, each returning per inventory entry the steps below the top (``e``; see
:mod:`paramwise.grouping.layerdecay` for the convention):

- :func:`group_matcher_ids`: a timm model's own declaration, ``model.group_matcher()``;
- :func:`detect`: the module tree. The *blocks* are the numbered children of the list with the
  most of them (on a tie, the one holding the most tensors, then the shallowest). When each of its entries is a *stage* holding a list of
  composite blocks of one class (``layers.i.blocks.j``, ``stages.i.layers.j``, ``blocks.i.j``),
  blocks are numbered across the stages. A list whose entries differ in class (T5's
  ``block.i.layer.k``: attention, then feed-forward) or are single layers (an MLP's
  ``Sequential``) is part of a block, not a stage. Lists of the same name in other subtrees
  are further towers, numbered each on its own.

Both work per module path (a block's tensors share a few dozen paths), in one pass over the
entries: the cost is linear in the number of tensors and independent of the depth.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> detect(Inventory.build(net)).exps
    [1, 1, 0, 0]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ParamwiseError
from .inventory import Inventory

__all__ = ["Layout", "detect", "group_matcher_ids"]

_PREV = 99999.0  # timm's MATCH_PREV_GROUP: "the same layer as the group before"


@dataclass
class _Path:
    """What one module path says: its outer list and entry, and an inner list and entry."""

    outer: str | None = None
    i: str = ""
    inner: str | None = None  # relative path from the entry to an inner list ("" = the entry)
    j: str = ""


@dataclass
class _Tower:
    container: str
    root: str
    stages: dict[str, str] = field(default_factory=dict)  # stage index -> its inner list path


def _parse(path: str) -> _Path:
    parts = path.split(".") if path else []
    out = _Path()
    for k, seg in enumerate(parts):
        if seg.isdigit():
            if out.outer is None:
                out.outer, out.i, k0 = ".".join(parts[:k]), seg, k
            else:
                if k - k0 <= 2:
                    out.inner, out.j = ".".join(parts[k0 + 1:k]), seg
                break
    return out


@dataclass
class Layout:
    """What :func:`detect` found: per entry the steps below the top, and whether the entry lies
    inside a block (a stage's own downsampling counts as inside)."""

    exps: list[int]
    in_block: list[bool]
    leaf_blocks: bool = False  # every block is a single layer (a Sequential of Linear layers)


def detect(inv: Inventory) -> Layout | None:
    """Per entry the steps below the top, from the module tree; None without blocks. Read once
    per inventory (``layer_decay`` and ``hidden_matrices`` in one build share it)."""
    return inv.cached_mask(("layout",), lambda: _detect(inv))  # type: ignore[return-value]


def _detect(inv: Inventory) -> Layout | None:
    paths: dict[str, _Path] = {}
    per_entry: list[_Path] = []
    kids: dict[str, dict[str, None]] = {}
    size: dict[str | None, int] = {}
    for m in inv.module_names:
        p = paths.get(m)
        if p is None:
            p = paths[m] = _parse(m)
            if p.outer is not None:
                kids.setdefault(p.outer, {})[p.i] = None
        size[p.outer] = size.get(p.outer, 0) + 1
        per_entry.append(p)
    # The most entries; on a tie the most tensors, then the shallowest, then the first.
    ranked = sorted(kids.items(), key=lambda ck: (-len(ck[1]), -size[ck[0]],
                                                 ck[0].count(".") + bool(ck[0])))
    if not ranked or len(ranked[0][1]) < 2:
        return None
    best = ranked[0][0]
    towers = _towers(best, kids)
    for t in towers:
        t.stages = _stages(inv, t.container, kids[t.container], paths)
    return _assign(inv, towers, per_entry)


def _towers(best: str, kids: dict[str, dict[str, None]]) -> list[_Tower]:
    last = best.rsplit(".", 1)[-1]
    found = [c for c, ks in kids.items() if len(ks) > 1 and c.rsplit(".", 1)[-1] == last]
    if not best or len(found) < 2:
        return [_Tower(best, "")]
    split = [c.split(".") for c in found]
    common = 0
    while all(len(s) > common + 1 and s[common] == split[0][common] for s in split):
        common += 1
    roots = [".".join(s[:common + 1]) for s in split]
    if len(set(roots)) < len(roots):
        return [_Tower(best, "")]
    return [_Tower(c, r) for c, r in zip(found, roots)]


def _stages(inv: Inventory, container: str, entries: dict[str, None],
            paths: dict[str, _Path]) -> dict[str, str]:
    """Stage index -> the path of its list of blocks, when the container holds stages."""
    inner: dict[str, dict[str, dict[str, None]]] = {}
    for p in paths.values():
        if p.outer == container and p.inner is not None:
            inner.setdefault(p.i, {}).setdefault(p.inner, {})[p.j] = None
    found: dict[str, str] = {}
    rels, blocks = set(), 0
    for i, by_rel in inner.items():
        best: tuple[str, int] | None = None
        for rel, js in by_rel.items():
            base = ".".join(s for s in (container, i, rel) if s)
            mods = [inv.module_at.get(f"{base}.{j}") for j in js]
            if any(m is None or next(m.children(), None) is None for m in mods):
                continue  # single layers (an MLP's Sequential, a downsampling), not blocks
            if len({type(m) for m in mods}) > 1:
                continue  # sublayers of one block (T5: attention, then feed-forward)
            if best is None or len(js) > best[1]:
                best = (rel, len(js))
        if best is not None:
            found[i] = ".".join(s for s in (container, i, best[0]) if s)
            blocks += best[1]
            rels.add(best[0])
    if len(found) < 2 or len(rels) > 1 or blocks <= len(found) or 2 * len(found) < len(entries):
        return {}
    return found


def _assign(inv: Inventory, towers: list[_Tower], per_entry: list[_Path]) -> Layout:
    n = len(per_entry)
    tower_of: list[int] = [-1] * n
    key: list[tuple[int, ...] | None] = [None] * n
    stage_of: list[str | None] = [None] * n
    ranks: list[dict[tuple[int, ...], int]] = []
    names, mods = inv.names, inv.module_names
    for t_idx, t in enumerate(towers):
        keys: set[tuple[int, ...]] = set()
        head = t.root + "." if t.root else ""
        for e in range(n):
            if tower_of[e] >= 0 or not names[e].startswith(head):
                continue
            tower_of[e] = t_idx
            p = per_entry[e]
            if p.outer != t.container:
                continue
            if not t.stages:
                key[e] = (int(p.i),)
            else:
                base = t.stages.get(p.i)
                m = mods[e]
                if base is None:
                    key[e] = (int(p.i), -1)  # a stage without a list of blocks: one block
                elif m.startswith(base + ".") and p.inner is not None:
                    key[e] = (int(p.i), int(p.j))
                else:
                    stage_of[e] = p.i  # the stage's own (downsampling): nearest block
            if key[e] is not None:
                keys.add(key[e])  # type: ignore[arg-type]
        ranks.append({k: r + 1 for r, k in enumerate(sorted(keys))})
    tops = [len(r) + 1 for r in ranks]
    deepest = max(tops)
    exps = [0] * n
    seen = [False] * len(towers)
    last_in_stage: dict[tuple[int, str], int] = {}
    pending: dict[tuple[int, str], list[int]] = {}
    roles = inv.roles
    for e in range(n):
        t = tower_of[e]
        if t < 0:  # outside every tower: embeddings deepest, the rest at the top
            exps[e] = deepest if "embedding" in roles[e] else 0
            continue
        k = key[e]
        if k is not None:
            d = ranks[t][k]
            seen[t] = True
            s = (t, per_entry[e].i)
            last_in_stage[s] = d
            for w in pending.pop(s, ()):
                exps[w] = tops[t] - d
        elif stage_of[e] is not None:
            s = (t, stage_of[e])  # type: ignore[assignment]
            if s in last_in_stage:
                d = last_in_stage[s]
            else:
                pending.setdefault(s, []).append(e)
                continue
        else:
            d = 0 if not seen[t] or "embedding" in roles[e] else tops[t]
        exps[e] = tops[t] - d
    for waiting in pending.values():  # a stage with no block at all: the tower's top
        for w in waiting:
            exps[w] = 0
    low = min(exps)  # no head: the last block is the top
    inside = [k is not None or s is not None for k, s in zip(key, stage_of)]
    leaf = all(mods[e] == ".".join(x for x in (per_entry[e].outer, per_entry[e].i) if x)
               for e in range(n) if key[e] is not None)
    return Layout([x - low for x in exps] if low else exps, inside, leaf)


def group_matcher_ids(inv: Inventory) -> list[int] | None:
    """Per entry the layer id from a timm model's ``group_matcher(coarse=False)``; None when
    the model declares none. timm's grouping: each name gets the ordinal tuple of the first
    spec that matches it (``inf`` when none does), tuples are ranked, and a tuple ending in
    ``99999`` joins the layer before it."""
    gm = next((getattr(m, "group_matcher", None) for m in inv.roots
               if callable(getattr(m, "group_matcher", None))), None)
    if gm is None:
        return None
    try:
        spec = gm(coarse=False)
    except TypeError:
        spec = gm()
    ordinal = _ordinal_fn(spec)
    keys = [ordinal(n) for n in inv.names]
    ids: dict[tuple[float, ...], int] = {}
    lid = -1
    for k in sorted(set(keys)):
        if lid < 0 or k[-1] != _PREV:
            lid += 1
        ids[k] = lid
    return [ids[k] for k in keys]


def _ordinal_fn(spec: object):
    if callable(spec):
        def call(name: str) -> tuple[float, ...]:
            got = spec(name)
            return tuple(map(float, got)) if isinstance(got, (tuple, list)) else (float(got),)
        return call
    if not isinstance(spec, dict):
        raise ParamwiseError(f"the model's group_matcher() returned {type(spec).__name__}",
                             fix="return timm's dict of regexes, or pass layer_decay(depth=...)")
    compiled = []
    for ordinal, sub in enumerate(spec.values()):
        if sub is None:
            continue
        for rx, suffix in (sub if isinstance(sub, (list, tuple)) else [(sub, None)]):
            compiled.append((re.compile(rx), (ordinal,), suffix))

    def match(name: str) -> tuple[float, ...]:
        for rx, prefix, suffix in compiled:
            m = rx.match(name)
            if m:
                parts = (prefix, m.groups(), suffix)
                return tuple(float(x) for part in parts if part for x in part)
        return (float("inf"),)
    return match
