r"""What one param group asks of a step: its regularization options resolved once per step
(:class:`StepCfg`), and the proximal maps they select.

The step hooks (:mod:`paramwise.step.hooks`) read a :class:`StepCfg` from every group at every step,
so option changes (a scheduler's ``lr``, a strength set by hand) apply at once. Which options
run where follows from the cascade of keys:

* gradient terms (before the step): ``l2`` when no proximal map runs, ``l1`` / ``group_lasso``
  with ``prox=False``, ``l2_to_init``; ``decoupled_decay`` scales the weights there too;
* proximal maps (after the step, or fused into the optimizer's update): ``l1`` and
  ``group_lasso``, with ``l2`` folded in (elastic net: :math:`w ← S(w, sλ_1)/(1 + sλ_2)`);
* options lowered into the optimizer's own (``paramwise_lowered``) are skipped.

Example::

    >>> cfg = StepCfg.read(0, {"lr": 0.1, "l1": 1e-3, "l2": 1e-2})
    >>> (cfg.l1_prox, cfg.l2_fold, cfg.l2_grad, cfg.prox_on)
    (0.001, 0.01, 0.0, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import ParamwiseError
from ..options.regularization import REG_KEYS, check_values
from . import regularizers as R
from ._chunks import as_float as _num
from ._chunks import is_dtensor
from .lowering import LOWERED_KEY

__all__ = ["StepCfg", "group_label", "buckets", "split", "prox_", "prox_scaled_"]


def group_label(i: int, group: Mapping[str, Any]) -> str:
    names = group.get("param_names")
    if names:
        shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
        return f"param group {i} ({shown})"
    return f"param group {i}"


@dataclass
class StepCfg:
    """One group's regularization for this step, resolved from its options."""

    lr: float
    sign: float           # -1 under maximize=True: gradient terms are subtracted
    l2_grad: float        # coupled l2 added to the gradient by the hook
    l1_grad: float
    group_grad: float
    l2_to_init: float
    decay: float
    l1_prox: float
    group_prox: float
    l2_fold: float        # l2 folded into the proximal map (elastic net)
    prox_on: bool
    group_on: bool        # group lasso's prox runs (rows are the chunking unit)
    adaptive: bool
    group_dim: int
    max_norm: float | None
    max_norm_dim: int

    @property
    def pre(self) -> bool:
        return bool(self.l2_grad or self.l1_grad or self.group_grad or self.l2_to_init
                    or self.decay)

    @property
    def post(self) -> bool:
        return self.prox_on or self.max_norm is not None

    @classmethod
    def read(cls, i: int, group: Mapping[str, Any],
             outcome: str = "step() was not run") -> StepCfg | None:
        """The step's view of param group ``i``; None when it asks for no regularizer. A bad
        value raises, its fix ending with ``outcome`` (what did not happen because of it)."""
        if not REG_KEYS.intersection(group):
            return None
        problem = check_values(group)
        if problem:
            raise ParamwiseError(f"{group_label(i, group)}: {problem}",
                                 fix=f"fix the value in optimizer.param_groups ({outcome})")

        def f(k: str) -> float:
            return float(group[k]) if group.get(k) is not None else 0.0

        lowered = " ".join(group.get(LOWERED_KEY, ()))
        l2 = 0.0 if "l2->" in lowered else f("l2")
        has_l1, has_gl = group.get("l1") is not None, group.get("group_lasso") is not None
        prox = group.get("prox", True) is not False and (has_l1 or has_gl)
        return cls(
            lr=_num(group["lr"]), sign=-1.0 if group.get("maximize", False) else 1.0,
            l2_grad=0.0 if prox else l2,
            l1_grad=0.0 if prox else f("l1"), group_grad=0.0 if prox else f("group_lasso"),
            l2_to_init=f("l2_to_init"),
            decay=0.0 if "decoupled_decay->" in lowered else f("decoupled_decay"),
            l1_prox=f("l1") if prox else 0.0, group_prox=f("group_lasso") if prox else 0.0,
            l2_fold=l2 if prox else 0.0,
            prox_on=prox and (f("l1") > 0 or f("group_lasso") > 0 or l2 > 0),
            group_on=prox and has_gl,
            adaptive=group.get("prox_scale", "adaptive") == "adaptive",
            group_dim=int(group.get("group_dim", 0) or 0),
            max_norm=float(group["max_norm"]) if group.get("max_norm") is not None else None,
            max_norm_dim=int(group.get("max_norm_dim", 0) or 0),
        )


def buckets(items: Iterable[tuple[Tensor, ...]]) -> dict[tuple, list[list[Tensor]]]:
    """Group tuples (param, grad, ...) by param device, dtypes and DTensor-ness."""
    out: dict[tuple, list[list[Tensor]]] = {}
    for tup in items:
        p = tup[0]
        key = (p.device, *(t.dtype for t in tup), is_dtensor(p))
        cols = out.setdefault(key, [[] for _ in tup])
        for col, t in zip(cols, tup):
            col.append(t)
    return out


def split(work: Tensor, ws: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Two sets of scratch tensors shaped like ``ws``, both views of ``work`` (one chunk)."""
    half = work.numel() // 2
    ds, xs, o = [], [], 0
    for w in ws:
        m = w.numel()
        ds.append(work[o:o + m].view(w.shape))
        xs.append(work[half + o:half + o + m].view(w.shape))
        o += m
    return ds, xs


def prox_(ws: list[Tensor], s: R.Scale, cfg: StepCfg, gl: bool, dims: Sequence[int],
          fe: bool, prev: Sequence[Tensor | None]) -> None:
    """``cfg``'s proximal maps with step scale ``s`` (a number or per-element tensors): l1 (with
    l2 folded in, unless group lasso follows), then group lasso (with l2)."""
    if cfg.l1_prox > 0 or not gl:
        R.prox_l1_(ws, s, cfg.l1_prox, 0.0 if gl else cfg.l2_fold, foreach=fe)
    if gl:
        R.prox_group_lasso_(ws, s, cfg.group_prox, dims, cfg.l2_fold, rho=prev)


def prox_scaled_(ws: list[Tensor], ds: list[Tensor], ks: list[float], xs: list[Tensor],
                 cfg: StepCfg, gl: bool, dims: Sequence[int],
                 prev: Sequence[Tensor | None], wake: Sequence[bool],
                 tails: Sequence[R.Tail] = ()) -> None:
    """:func:`prox_` with the scale given as :math:`s = k/d` (``ds`` and ``xs`` are scratch);
    ``tails``, the optimizer's last operation not yet applied (``ds`` then holds
    :math:`-d/a`), go into the first map."""
    if cfg.l1_prox > 0 or not gl:
        R.prox_l1_scaled_(ws, ds, ks, cfg.l1_prox, 0.0 if gl else cfg.l2_fold, xs, tails)
        if gl and tails:          # (sparse group lasso) group lasso's map takes d itself
            for d, (_, a) in zip(ds, tails):
                d.mul_(-a)
        tails = ()
    if gl:
        R.prox_group_lasso_scaled_(ws, ds, ks, cfg.group_prox, dims, cfg.l2_fold,
                                   prev, xs, wake, tails)  # type: ignore[arg-type]
