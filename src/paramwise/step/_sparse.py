r"""Regularization of parameters whose gradient is sparse: lazily, on the rows it holds.

torch's optimizers for sparse gradients (``SparseAdam``; ``SGD`` and ``Adagrad`` given one)
update only the rows (entries) the gradient holds — for ``nn.Embedding(sparse=True)`` the
embeddings looked up in this batch — and leave every other row, and its moments, as they are.
The step hooks do the same: for such a parameter every regularizer acts on those rows only,
with the step scale the optimizer used for them.

* Before the step the gradient is coalesced (as the optimizers do) and the gradient terms go
  into its values (``l2``, ``l1``/``group_lasso`` with ``prox=False``, ``l2_to_init``);
  ``decoupled_decay`` scales those rows by :math:`1 - \mathrm{lr}\,λ`.
* After the step the proximal maps and ``max_norm``'s projection run on those rows, with
  :math:`s` per element (``prox_scale="adaptive"``):

  =============== ======================================================================
  SparseAdam      :math:`s = \mathrm{lr}\sqrt{1-β_2^t}/(\sqrt{v}+ε)` (its update is
                  :math:`s\,m/(1-β_1^t)`: ε is added before the bias correction, unlike
                  Adam's)
  Adagrad         :math:`s = \mathrm{lr}_t/(\sqrt{G}+ε)` (:func:`paramwise.step.prox.decayed_lr`)
  SGD             :math:`\mathrm{lr}(1-d)/(1-μ)`, one number
  other           a rule registered with :func:`paramwise.step.prox.register_scaling`, evaluated
                  on the whole tensor and read at the rows; none: ``lr`` (with its warning)
  =============== ======================================================================

**The math.** Write :math:`T_r` for the steps whose gradient holds row :math:`r`. Row
:math:`r` then follows exactly the proximal iteration the dense optimizer would follow if
only the steps in :math:`T_r` existed (:math:`w_r ← \operatorname{prox}_{s_rλ}(w_r - s_r
\hat g_r)`), so its fixed points are the regularized problem's (for l1, :math:`0 ∈ ∇_r f +
λ∂\|w_r\|_1`, as in :mod:`paramwise.step.prox`), and a row never looked up is never changed. As
with SparseAdam's moments, a row is regularized as often as it is looked up: one seen in a
fraction :math:`q` of the steps is shrunk :math:`q` times as often as under a dense step
(the lazy convention of TensorFlow's ``LazyAdam`` and of FTRL's lazy l1). Group lasso and
``max_norm`` need whole rows: rows along dim 0 (``group_dim=0`` / ``max_norm_dim=0``) of a
gradient sparse along dim 0 only (:func:`paramwise.step.stepcheck.check_sparse` refuses others
before the step). SGD with momentum moves rows whose buffer is nonzero even without a
gradient; they get their maps at the steps they have one.

Example::

    >>> from paramwise import attach
    >>> emb = torch.nn.Embedding(5, 2, sparse=True)
    >>> opt = torch.optim.SparseAdam([{"params": [emb.weight], "l1": 1e3}], lr=0.1)
    >>> handle = attach(opt)
    >>> emb(torch.tensor([1, 3])).sum().backward()
    >>> before = emb.weight.detach().clone(); opt.step()    # rows 1 and 3 only
    >>> emb.weight[[1, 3]].abs().max().item(), torch.equal(emb.weight[[0, 2, 4]], before[[0, 2, 4]])
    (0.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import regularizers as R
from ._chunks import Piece
from ._chunks import as_float as _num
from ._stepcfg import StepCfg, prox_
from .prox import decayed_lr, per_element, scaling_for, warn_unknown

__all__ = ["pre_sparse_", "post_sparse_", "sparse_scale"]

#: ``anchor(param, take) -> w0``, as in :mod:`paramwise.step._groupstep`.
Anchor = Callable[[Tensor, bool], Tensor]


def _rows(g: Tensor) -> tuple[Tensor, ...]:
    """The index of the rows (entries) a coalesced sparse gradient holds, for ``w[ix]``."""
    return tuple(g._indices())


def pre_sparse_(ps: Sequence[Tensor], cfg: StepCfg, k: float, anchor: Anchor,
                decay: bool = True) -> None:
    """The gradient terms (times ``k``: the sign under maximize, a grad scale) on the rows
    each parameter's sparse gradient holds, then ``decoupled_decay`` of those rows; each
    gradient is replaced by its coalesced form."""
    for p in ps:
        g = p.grad
        if not g.is_coalesced():  # type: ignore[union-attr]
            g = p.grad = g.coalesce()  # type: ignore[union-attr]
        vals = g._values()  # type: ignore[union-attr]
        if vals.numel() == 0:
            continue
        ix = _rows(g)  # type: ignore[arg-type]
        w = p.detach()[ix]
        if cfg.l2_grad:
            R.add_l2_grad_([vals], [w], k * cfg.l2_grad)
        if cfg.l2_to_init:
            R.add_l2_to_init_grad_([vals], [w], [anchor(p, cfg.lr != 0)[ix]], k * cfg.l2_to_init)
        if cfg.l1_grad:
            R.add_l1_grad_([vals], [w], k * cfg.l1_grad)
        if cfg.group_grad:
            R.add_group_lasso_grad_([vals], [w], k * cfg.group_grad, [0])
        if decay and cfg.decay and cfg.lr != 0:
            p.detach().index_put_(ix, w.mul_(1 - cfg.lr * cfg.decay))


def post_sparse_(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, ps: Sequence[Tensor],
                 *, prox: bool, project: bool) -> None:
    """After the step: the proximal maps (if ``prox``) and the max-norm projection (if
    ``project``) of the rows each parameter's sparse gradient holds, written back."""
    for p in ps:
        g = p.grad.coalesce()  # type: ignore[union-attr]
        if g._nnz() == 0:
            continue
        ix = _rows(g)
        w = p.detach()[ix]
        if prox:
            s = sparse_scale(opt, group, cfg, p, ix)
            prox_([w], s if isinstance(s, float) else [s], cfg, cfg.group_on, [0], False,
                  [None])
        if project:
            R.project_max_norm_([w], cfg.max_norm, [0])  # type: ignore[arg-type]
        p.detach().index_put_(ix, w)


def sparse_scale(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, p: Tensor,
                 ix: tuple[Tensor, ...]) -> float | Tensor:
    """The step scale :math:`s` at rows ``ix`` of ``p`` (see the module docstring): one
    number, or a tensor shaped like ``p[ix]``."""
    if not cfg.adaptive:
        return cfg.lr
    cls, st = type(opt), opt.state.get(p, {})
    if cls is torch.optim.SparseAdam and "exp_avg_sq" in st:
        bc2 = 1 - _num(group["betas"][1]) ** _num(st["step"])
        return (cfg.lr * math.sqrt(bc2)) / (st["exp_avg_sq"][ix].sqrt() + _num(group["eps"]))
    if cls is torch.optim.Adagrad and "sum" in st:
        clr = decayed_lr(cfg.lr, _num(st["step"]), _num(group.get("lr_decay", 0.0)))
        return clr / (st["sum"][ix].sqrt() + _num(group["eps"]))
    rule = scaling_for(cls)
    if rule is None:
        warn_unknown(cls)
        return cfg.lr
    if not per_element(cls):
        return float(rule(group, cfg.lr, [], opt.state, foreach=False))
    s = rule(group, cfg.lr, [Piece(p)], opt.state, foreach=False)
    return float(s) if isinstance(s, (int, float)) else s[0][ix]
