r"""Proximal maps and projections for schedule-free optimizers, on the weights the user evaluates.

Schedule-free SGD/AdamW/RAdam (``schedulefree`` 1.4's and pytorch-optimizer's) keep three
sequences. With momentum :math:`β` (``momentum`` or ``betas[0]``), the averaging weight
:math:`c_{t+1}` and the step :math:`γ_t` (times :math:`1/(\sqrt{\hat v}+ε)` for the adaptive
ones):

.. math::
    z_{t+1} = z_t - γ_t\,g(y_t), \qquad x_{t+1} = (1-c_{t+1})\,x_t + c_{t+1}\,z_{t+1},
    \qquad y_t = (1-β)\,z_t + β\,x_t .

The parameter holds :math:`y` in train mode (gradients are taken there) and :math:`x` after
``optimizer.eval()`` (``p ← lerp(p, z, 1-1/β)``: :math:`x = (y - (1-β)z)/β`; ``train()``
undoes it). :math:`x`, the average of the :math:`z`'s, is what the user evaluates and ships.

**What paramwise does after each step** (instead of mapping :math:`y`, where 78.8% exact zeros
in train mode became 0% after ``eval()``):

1. recover :math:`x = (y - (1-β)z)/β` from the parameter and ``state['z']``;
2. the proximal maps (l1, group lasso, elastic net) on :math:`z` with the step scale of the
   :math:`z` step (:mod:`paramwise.step.thirdparty`: :math:`γ_t`, or :math:`γ_t/(\sqrt{\hat
   v}+ε)`), then ``max_norm``'s projection of :math:`z`: proximal (projected) SGD/AdamW in the
   base sequence, so at a fixed point :math:`z^* = \operatorname{prox}(z^* - γ g(y^*))`, and
   since :math:`x^* = y^* = z^*` there, :math:`0 ∈ ∇f(z^*) + λ∂\|z^*\|_1`: the lasso's point;
3. :math:`x_i ← 0` wherever the map left :math:`z_i = 0` (a zero row of :math:`z` zeroes the
   row of :math:`x`), and ``max_norm``'s projection of :math:`x` (a no-op up to rounding once
   every :math:`z` is projected: :math:`x` averages them and :math:`c_1 = 1` forgets the
   start);
4. :math:`y ← y + β\,Δx + (1-β)\,Δz`, bit-identical where nothing was mapped, and exactly 0
   where :math:`x_i = z_i = 0`.

So the evaluation weights hold exact zeros: where :math:`x_i = z_i = 0`, also :math:`y_i = 0`,
and ``eval()``/``train()`` lerp between 0 and 0, so the zeros survive every switch; their rows
obey ``max_norm`` (after ``eval()`` up to one rounding of the lerp). The fixed point is the
lasso's, :math:`x` converging to it as the average of :math:`z`. Resetting :math:`x_i` when
:math:`z_i` hits 0 restarts that coordinate's average (the same fixed point). Gradient terms
(``l2``, ``prox=False``) are taken at :math:`y` with the gradient, as the theory has them;
``decoupled_decay`` still scales :math:`y` before the step.

Other schedule-free variants (``*Closure``, ``*Reference``, ``*Paper``, the wrappers, heavyball's
``SFAdamW``) keep their sequences differently: :func:`check` refuses maps and projections on
them. Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    >>> class SGDScheduleFree(torch.optim.SGD): ...
    >>> SGDScheduleFree.__module__ = "schedulefree.sgd_schedulefree"
    >>> maps_xyz(SGDScheduleFree([w], lr=0.1))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamwiseError
from . import regularizers as R
from ._chunks import Piece
from ._chunks import as_float as _num
from ._stepcfg import StepCfg, group_label, prox_
from .thirdparty import SCHEDULE_FREE, key
from .thirdparty import check as check_options

__all__ = ["maps_xyz", "momentum", "post_group_", "check", "check_all", "UNSUPPORTED"]

#: schedule-free classes whose sequences paramwise does not map: (key prefix, what to use).
UNSUPPORTED: tuple[str, ...] = (
    "schedulefree.adamw_schedulefree_closure:", "schedulefree.radam_schedulefree_closure:",
    "schedulefree.sgd_schedulefree_closure:", "schedulefree.adamw_schedulefree_reference:",
    "schedulefree.sgd_schedulefree_reference:", "schedulefree.adamw_schedulefree_paper:",
    "schedulefree.wrap_schedulefree:", "schedulefree.wrap_schedulefree_reference:",
    "pytorch_optimizer.optimizer.schedulefree:ScheduleFreeWrapper", "heavyball:SFAdamW",
)


def maps_xyz(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` is a schedule-free optimizer whose x/y/z paramwise maps."""
    return key(type(opt)) in SCHEDULE_FREE


def momentum(group: Mapping[str, Any]) -> float:
    """:math:`β`, the interpolation of :math:`y` between :math:`z` and :math:`x`."""
    return _num(group["momentum"] if "momentum" in group else group["betas"][0])


def _unsupported(opt: torch.optim.Optimizer) -> bool:
    k = key(type(opt))
    return any(k.startswith(u) or k == u for u in UNSUPPORTED)


def check(opt: torch.optim.Optimizer, label: str, group: Mapping[str, Any], cfg: StepCfg,
          more: str, stepping: bool = False) -> None:
    """Refuse proximal maps and ``max_norm`` on a schedule-free variant whose sequences
    paramwise does not map, and (``stepping``) a step in eval mode (``optimizer.eval()`` was
    called, so the parameters hold :math:`x`)."""
    if not cfg.post:
        return
    name = type(opt).__name__
    if _unsupported(opt):
        raise ParamwiseError(
            f"{label}: {name} is schedule-free, and paramwise maps the weights you evaluate "
            f"(x, the average of the z's) only for the classes whose x/y/z layout it knows, so "
            f"l1/group_lasso's proximal maps and max_norm would act on the wrong weights",
            fix="use schedulefree.SGDScheduleFree / AdamWScheduleFree / RAdamScheduleFree (or "
                "pytorch_optimizer's ScheduleFreeSGD / ScheduleFreeAdamW / ScheduleFreeRAdam), "
                "or prox=False and no max_norm for these parameters" + more)
    if maps_xyz(opt) and not 0 < momentum(group) < 1:
        raise ParamwiseError(
            f"{label}: {name} with momentum {momentum(group):g} keeps no x apart from y and "
            f"z, so paramwise cannot map the weights you evaluate",
            fix="use a momentum strictly between 0 and 1 (0.9 is the default)" + more)
    if stepping and maps_xyz(opt) and group.get("train_mode") is False:
        raise ParamwiseError(
            f"{label}: {name} is in eval mode (optimizer.eval() was called), so its "
            f"parameters hold x, not the y its step expects",
            fix="call optimizer.train() before step()" + more)


def check_all(opt: torch.optim.Optimizer, cfgs: list[tuple[dict, StepCfg]], more: str,
              stepping: bool = False) -> None:
    """The refusals of third-party optimizers' options (:func:`paramwise.step.thirdparty.check`) and
    of schedule-free layouts (:func:`check`) for every regularized group, before anything
    changes."""
    if type(opt).__module__.startswith("torch."):
        return  # torch's own optimizers: none is schedule-free or has a third-party rule
    index = {id(g): k for k, g in enumerate(opt.param_groups)}
    for group, cfg in cfgs:
        i = index[id(group)]
        label = group_label(i, group)
        check_options(opt, i, group, label, cfg.prox_on and cfg.adaptive and cfg.lr != 0, more)
        check(opt, label, group, cfg, more, stepping)


def post_group_(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, params: list[Tensor],
                scale: Any) -> None:
    """Steps 1–4 of the module docstring for ``params`` (those the step moved) of one group;
    ``scale``: the :math:`z` step's rule (:data:`paramwise.step.prox.Scaling`), or None for
    :math:`s = \\mathrm{lr}`."""
    beta = momentum(group)
    for p in params:
        st = opt.state.get(p, {})
        z = st.get("z")
        if not isinstance(z, Tensor) or z.shape != p.shape:
            continue
        y = p.detach()
        x = torch.lerp(y, z, 1 - 1 / beta)               # as eval() computes it
        z0, x0 = z.clone(), x.clone()
        if cfg.prox_on:
            s = scale(group, cfg.lr, [Piece(p)], opt.state, foreach=False) if scale else cfg.lr
            dims = [cfg.group_dim % p.ndim] if cfg.group_on else []
            prox_([z], s, cfg, cfg.group_on, dims, False, [None])
            x.masked_fill_(z == 0, 0.0)
        if cfg.max_norm is not None:
            d = [cfg.max_norm_dim % max(p.ndim, 1)]
            R.project_max_norm_([z], cfg.max_norm, d)
            R.project_max_norm_([x], cfg.max_norm, d)
        xz, zz = x == 0, z == 0
        x.sub_(x0).mul_(beta).add_(z.sub(z0), alpha=1 - beta)   # β·Δx + (1-β)·Δz
        y.add_(x)                            # + 0 where nothing was mapped: y unchanged
        if cfg.prox_on:
            y.masked_fill_(xz & zz, 0.0)     # exactly 0 where x and z are
