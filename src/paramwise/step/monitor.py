r"""What the configured regularization amounts to: :func:`penalty` and :func:`stats`.

``penalty(optimizer)`` is the differentiable sum, over every param group, of

.. math:: \tfrac{λ_2}{2}\|w\|^2 + λ_1\|w\|_1 + λ_g\sum_r\sqrt{m}\,\|w_r\| + \tfrac{λ_0}{2}\|w - w_0\|^2

(``l2``, ``l1``, ``group_lasso``, ``l2_to_init``; lowered ``l2`` included). Its gradient is what
the subgradient forms add, so ``loss + penalty(opt)`` without hooks trains the same objective.
``decoupled_decay`` has no penalty (it is not the gradient of one under adaptive optimizers) and
``max_norm`` is a constraint; neither is counted. ``stats(optimizer)`` reports, per group, that
value and what it did to the weights, with one device sync per call (and, for sharded
parameters, one ``all_reduce``, never a gather)::

    >>> opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(4, 3))],
    ...                         "group_lasso": 0.1}], lr=0.1)
    >>> stats(opt)[0]["zero_rows"], stats(opt)[0]["zero_fraction"]
    (4, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import regularizers as R
from ._chunks import chunk_limit, is_dtensor
from ._chunks import plain as _plain
from .hooks import handle_of

__all__ = ["penalty", "stats"]


def _group_penalty(group: dict[str, Any], anchors: dict[Tensor, Tensor] | None) -> Tensor | None:
    ps = list(group["params"])
    if not ps:
        return None

    def lam(k: str) -> float:
        return float(group[k]) if group.get(k) is not None else 0.0

    terms = []
    if lam("l2"):
        terms.append(R.l2_penalty(ps, lam("l2")))
    if lam("l1"):
        terms.append(R.l1_penalty(ps, lam("l1")))
    if lam("group_lasso"):
        d = int(group.get("group_dim", 0) or 0)
        terms.append(R.group_lasso_penalty(ps, lam("group_lasso"), [d % p.ndim for p in ps]))
    if lam("l2_to_init") and anchors is not None:
        have = [p for p in ps if p in anchors]
        terms.append(R.l2_to_init_penalty(have, [anchors[p] for p in have], lam("l2_to_init")))
    if not terms:
        return None
    return sum((_plain(t) for t in terms[1:]), _plain(terms[0]))


def penalty(optimizer: torch.optim.Optimizer) -> Tensor:
    """The differentiable total penalty of ``optimizer``'s regularization options (0-d tensor).

    On the first parameter's device and dtype; ``torch.zeros(())`` when nothing is configured.
    ``l2_to_init`` counts only when :func:`paramwise.step.hooks.attach` holds the anchors.

        >>> loss = criterion(model(x), y) + paramwise.penalty(opt)   # doctest: +SKIP
    """
    handle = handle_of(optimizer)
    anchors = handle.anchors if handle is not None else None
    total: Tensor | None = None
    for group in optimizer.param_groups:
        t = _group_penalty(group, anchors)
        if t is not None:
            total = t if total is None else total + t.to(total.device)
    return total if total is not None else torch.zeros(())


def stats(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, float | int]]:
    """Per param group (by index), what its regularization does; cheap enough to log often.

    Keys: ``penalty`` (that group's share of :func:`penalty`), ``numel``, ``zeros`` and
    ``zero_fraction`` (exact zeros), ``nonfinite`` (NaN/inf elements), ``norm`` (L2 norm of all
    the group's parameters); with ``group_lasso`` also ``rows`` and ``zero_rows`` (all-zero
    groups along ``group_dim``); with ``max_norm`` also ``max_row_norm``.

    Sums are taken in float64, a chunk of about :func:`paramwise.step._chunks.chunk_limit` elements
    at a time. DTensor parameters (FSDP2) are never gathered: each rank sums its own shard, and
    per-row sums are placed at the shard's global row offset, so rows split across ranks add up;
    one ``all_reduce`` per process group (one for FSDP2) then makes the numbers global. The
    only device sync is the one that returns the numbers.

        >>> for i, s in stats(opt).items():               # doctest: +SKIP
        ...     log(f"group{i}/zero_fraction", s["zero_fraction"])
    """
    handle = handle_of(optimizer)
    anchors = handle.anchors if handle is not None else None
    sums = _Sums()
    plans: list[tuple[int, int, dict[str, Callable[[Tensor], Tensor]]]] = []
    with torch.no_grad():
        for i, group in enumerate(optimizer.param_groups):
            ps = list(group["params"])
            if ps:
                plans.append((i, sum(p.numel() for p in ps), _plan_group(group, ps, anchors, sums)))
        if not plans:
            return {}
        total = sums.reduce()
        got = [(i, n, {k: f(total) for k, f in fns.items()}) for i, n, fns in plans]
        flat = iter(torch.stack([v.to(total.device, torch.float64) for _, _, vals in got
                                 for v in vals.values()]).tolist())
    out: dict[int, dict[str, float | int]] = {}
    for i, numel, vals in got:
        row: dict[str, float | int] = {k: next(flat) for k in vals}
        for k in ("zeros", "nonfinite", "rows", "zero_rows"):
            if k in row:
                row[k] = int(row[k])
        row["numel"] = numel
        row["zero_fraction"] = row["zeros"] / numel if numel else 0.0
        out[i] = row
    return out


# ------------------------------------------------------------------------- stats machinery
_F64 = torch.float64
_LOCAL = "local"


class _Sums:
    """Float64 partial sums in one flat vector. Entries from DTensor shards are summed over
    their process group's ranks by one ``all_reduce`` per group; entries from plain tensors
    stay this rank's own."""

    def __init__(self) -> None:
        self._parts: list[tuple[Tensor, object]] = []
        self._groups: dict[object, object] = {}
        self._size = 0

    def add(self, t: Tensor, where: object = _LOCAL, pg: object = None) -> slice:
        t = t.reshape(-1).to(_F64)
        self._parts.append((t, where))
        if where != _LOCAL:
            self._groups[where] = pg
        start, self._size = self._size, self._size + t.numel()
        return slice(start, self._size)

    def reduce(self) -> Tensor:
        import torch.distributed as dist

        parts = [t for t, _ in self._parts]
        for key, pg in self._groups.items():
            idx = [j for j, (_, w) in enumerate(self._parts) if w == key]
            dev = parts[idx[0]].device
            vec = torch.cat([parts[j].to(dev) for j in idx])
            dist.all_reduce(vec, group=pg)  # type: ignore[arg-type]
            for j, piece in zip(idx, vec.split([parts[j].numel() for j in idx])):
                parts[j] = piece
        if not parts:
            return torch.zeros(0, dtype=_F64)
        dev = parts[0].device
        return torch.cat([t.to(dev) for t in parts])


@dataclass
class _Local:
    """What this rank holds of one parameter: ``x`` (its shard, or the whole tensor), where its
    sums go (``_LOCAL`` or a process-group key), the shard's global offsets, and whether this
    rank counts it (one replica of each shard does)."""

    p: Tensor
    x: Tensor
    where: object = _LOCAL
    pg: object = None
    offsets: tuple[int, ...] | None = None
    own: bool = True

    def anchor(self, a: Tensor) -> Tensor:
        """``a`` (laid out like the parameter, or full) cut like ``x``."""
        if self.offsets is None:
            return _plain(a.detach())
        if is_dtensor(a):
            if a.placements != self.p.placements or a.device_mesh != self.p.device_mesh:  # type: ignore[attr-defined]
                a = a.redistribute(self.p.device_mesh, self.p.placements)  # type: ignore[attr-defined]
            return a.to_local().detach()  # type: ignore[attr-defined]
        return a.detach()[tuple(slice(o, o + n) for o, n in zip(self.offsets, self.x.shape))]


def _local(p: Tensor) -> _Local:
    """``p`` as this rank holds it. Shard/Replicate DTensors are read locally; other layouts
    (``Partial``, strided shards, meshes without a group covering them) are gathered."""
    if not is_dtensor(p):
        return _Local(p, p.detach())
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard

    mesh, pls = p.device_mesh, p.placements  # type: ignore[attr-defined]
    if all(type(pl) is Replicate for pl in pls):
        return _Local(p, p.to_local().detach())  # type: ignore[attr-defined]
    coord = mesh.get_coordinate()
    if coord is not None and all(type(pl) in (Shard, Replicate) for pl in pls):
        pg: object = None
        if mesh.ndim == 1:
            pg = mesh.get_group()
        elif mesh.size() == dist.get_world_size():
            pg = dist.group.WORLD
        if pg is not None:
            own = all(c == 0 for c, pl in zip(coord, pls) if type(pl) is Replicate)
            offsets = tuple(p.__create_chunk_list__()[0].offsets)  # type: ignore[attr-defined]
            return _Local(p, p.to_local().detach(), id(pg), pg, offsets, own)  # type: ignore[attr-defined]
    return _Local(p, p.full_tensor().detach())  # type: ignore[attr-defined]


def _pieces(x: Tensor, dim: int) -> list[Tensor]:
    """``x`` in float64, cut along ``dim`` into slices of about one chunk (whole rows)."""
    limit = chunk_limit(x.device)
    if x.ndim == 0 or x.numel() <= limit:
        return [x.to(_F64)]
    per = max(1, limit // max(1, x.numel() // max(x.shape[dim], 1)))
    return [s.to(_F64) for s in x.split(per, dim)]


def _elementwise(loc: _Local, anchor: Tensor | None) -> Tensor:
    """[exact zeros, non-finite, Σw², Σ|w|, Σ(w - w0)²] of this rank's part (float64)."""
    out = torch.zeros(5, dtype=_F64, device=loc.x.device)
    if not loc.own or loc.x.numel() == 0:
        return out
    xs = _pieces(loc.x, 0)
    anc = _pieces(loc.anchor(anchor).to(loc.x.device), 0) if anchor is not None else [None] * len(xs)
    for x, a in zip(xs, anc):
        terms = [(x == 0).sum(), (~torch.isfinite(x)).sum(), x.square().sum(), x.abs().sum(),
                 (x - a).square().sum() if a is not None else x.new_zeros(())]
        out += torch.stack([t.to(_F64) for t in terms])
    return out


def _row_sums(loc: _Local, dim: int) -> tuple[Tensor, Tensor]:
    """Σw² and the count of non-zeros of every row along ``dim`` (all global rows of a DTensor,
    zero where this rank holds nothing of a row); a 0-d/1-d tensor has one row per element."""
    x = loc.x.reshape(1) if loc.x.ndim == 0 else loc.x
    dim = dim % x.ndim
    other = [i for i in range(x.ndim) if i != dim]
    sq, nz = [], []
    for s in _pieces(x, dim):
        sq.append(s.square().sum(other) if other else s.square())
        nz.append((s != 0).sum(other).to(_F64) if other else (s != 0).to(_F64))
    rsq, rnz = torch.cat(sq), torch.cat(nz)
    if loc.offsets is None:
        return rsq, rnz
    rows = loc.p.shape[dim] if loc.p.ndim else 1
    start = loc.offsets[dim] if loc.p.ndim else 0
    full_sq, full_nz = (torch.zeros(rows, dtype=_F64, device=x.device) for _ in range(2))
    if loc.own:
        full_sq[start:start + rsq.numel()] = rsq
        full_nz[start:start + rnz.numel()] = rnz
    return full_sq, full_nz


def _plan_group(group: dict[str, Any], ps: list[Tensor], anchors: dict[Tensor, Tensor] | None,
                sums: _Sums) -> dict[str, Callable[[Tensor], Tensor]]:
    """Add one group's partial sums to ``sums``; return how to read its stats from the total."""

    def lam(k: str) -> float:
        return float(group[k]) if group.get(k) is not None else 0.0

    locs = [_local(p) for p in ps]
    use_anchor = bool(lam("l2_to_init")) and anchors is not None
    elem = [sums.add(_elementwise(loc, anchors.get(loc.p) if use_anchor else None),  # type: ignore[union-attr]
                     loc.where, loc.pg) for loc in locs]
    row_slices: dict[tuple[int, int], tuple[slice, slice]] = {}

    def rows_of(j: int, d: int) -> tuple[int, int]:
        key = (j, d % max(ps[j].ndim, 1))
        if key not in row_slices:
            rsq, rnz = _row_sums(locs[j], key[1])
            row_slices[key] = (sums.add(rsq, locs[j].where, locs[j].pg),
                               sums.add(rnz, locs[j].where, locs[j].pg))
        return key

    gl = group.get("group_lasso") is not None
    gd = int(group.get("group_dim", 0) or 0)
    gl_rows = [rows_of(j, gd) for j in range(len(ps))] if gl else []
    mn = group.get("max_norm") is not None
    md = int(group.get("max_norm_dim", 0) or 0)
    mn_rows = [rows_of(j, md) for j in range(len(ps)) if ps[j].numel()] if mn else []

    def col(total: Tensor, k: int) -> Tensor:
        return torch.stack([total[s][k] for s in elem]).sum()

    def pen(total: Tensor) -> Tensor:
        out = total.new_zeros(())
        if lam("l2"):
            out = out + lam("l2") / 2 * col(total, 2)
        if lam("l1"):
            out = out + lam("l1") * col(total, 3)
        if lam("group_lasso"):
            for j, d in gl_rows:
                p = ps[j]
                m = p.numel() // p.shape[d] if p.ndim and p.shape[d] else 1
                out = out + lam("group_lasso") * math.sqrt(m) * total[row_slices[j, d][0]].sqrt().sum()
        if use_anchor:
            out = out + lam("l2_to_init") / 2 * col(total, 4)
        return out

    fns: dict[str, Callable[[Tensor], Tensor]] = {
        "penalty": pen,
        "zeros": lambda t: col(t, 0),
        "nonfinite": lambda t: col(t, 1),
        "norm": lambda t: col(t, 2).sqrt(),
    }
    if gl:
        big = [(j, d) for j, d in gl_rows if ps[j].ndim >= 2]
        fns["rows"] = lambda t: t.new_tensor(float(sum(ps[j].shape[d] for j, d in big)))
        fns["zero_rows"] = lambda t: torch.stack(
            [(t[row_slices[k][1]] == 0).sum().to(_F64) for k in big]).sum() if big \
            else t.new_zeros(())
    if mn_rows:
        fns["max_row_norm"] = lambda t: torch.stack(
            [t[row_slices[k][0]].max() for k in mn_rows]).max().sqrt()
    return fns
