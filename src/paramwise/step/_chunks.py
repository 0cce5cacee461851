"""Splitting lists of tensors into pieces and batches, so temporaries stay one chunk in size
(and the small numeric helpers the step hooks share: :func:`as_float`, :func:`power`).

A :class:`Piece` is a slice of one tensor along one dimension (``tensor.narrow(dim, start,
length)``) or the whole tensor. Slicing along a dimension keeps every slice along the *other*
dimensions whole, so a piece cut along a group dimension holds whole groups (rows, channels)::

    >>> import torch
    >>> w = torch.zeros(10, 4)
    >>> [[(pc.start, pc.length) for pc in b] for b in batches([w], [0], limit=16)]
    [[(0, 4)], [(4, 4)], [(8, 2)]]

The same piece can view the parameter, its gradient and its optimizer state alike
(``piece.view(state["exp_avg_sq"])``), so multi-tensor math can run on batches of pieces.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Piece", "batches", "is_dtensor", "plain", "DEFAULT_LIMITS", "chunk_limit", "as_float",
           "power"]

#: Elements per batch, by device type: small on CPU (the batch's temporaries stay in cache), large
#: on accelerators (few kernel launches, bounded extra memory). Measured by
#: ``benchmarks/bench_regularizers.py``.
DEFAULT_LIMITS: dict[str, int] = {"cpu": 1 << 18, "default": 1 << 24}


def chunk_limit(device: torch.device) -> int:
    """How many elements one batch may hold on ``device``. Unlimited while ``torch.compile``
    traces: inductor fuses the pointwise chain into one loop with no full-size temporaries, and
    every cut would be one more kernel."""
    if torch.compiler.is_compiling():
        return sys.maxsize
    return DEFAULT_LIMITS.get(device.type, DEFAULT_LIMITS["default"])


def as_float(x: object) -> float:
    """A group option (a number or a 1-element tensor, e.g. a tensor lr) as a Python float."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)  # type: ignore[arg-type]


def power(base: float, step: float | torch.Tensor) -> float | torch.Tensor:
    r"""``base ** step``; for a traced step tensor as :math:`e^{t \ln β}`, which inductor
    evaluates once per loop instead of a scalar ``pow`` per vector of the fused kernel (about
    a third of a compiled Adam l1 prox on CPU)."""
    if isinstance(step, torch.Tensor):
        return torch.exp(step * math.log(base)) if base > 0 else torch.zeros_like(step)
    return base ** step


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (without importing the distributed stack:
    if its module was never imported, no tensor can be one)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def plain(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value as a plain (replicated, differentiable) tensor; others as is."""
    return t.full_tensor() if is_dtensor(t) else t


@dataclass(frozen=True, eq=False)
class Piece:
    """``param.narrow(dim, start, length)``, or all of ``param`` when ``length`` is None."""

    param: torch.Tensor
    dim: int = 0
    start: int = 0
    length: int | None = None

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """The same slice of ``t`` (a tensor shaped like ``param``: its grad, its state)."""
        return t if self.length is None else t.narrow(self.dim, self.start, self.length)

    @property
    def numel(self) -> int:
        p = self.param
        if self.length is None:
            return p.numel()
        return p.numel() // p.shape[self.dim] * self.length


def batches(params: Sequence[torch.Tensor], dims: Sequence[int], limit: int
            ) -> Iterator[list[Piece]]:
    """Batches of pieces of ``params`` holding about ``limit`` elements each.

    Small tensors are packed together; a tensor larger than ``limit`` is cut along its own
    ``dims[i]`` into slices of whole rows (a single row larger than ``limit`` stays whole). Empty
    tensors are left out. DTensors are never cut (their slicing would need communication).
    """
    batch: list[Piece] = []
    size = 0
    for p, d in zip(params, dims):
        n = p.numel()
        if n == 0:
            continue
        if n <= limit or p.ndim == 0 or is_dtensor(p):
            pieces = [Piece(p, d)]
        else:
            rows = p.shape[d]
            per = max(1, limit // (n // rows))
            pieces = [Piece(p, d, a, min(per, rows - a)) for a in range(0, rows, per)]
        for pc in pieces:
            batch.append(pc)
            size += pc.numel
            if size >= limit:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
