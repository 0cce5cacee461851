r"""One param group's share of a step, read from its :class:`~paramwise.step._stepcfg.StepCfg`:
the gradient terms before the optimizer's update (:func:`pre_group_`), the proximal maps and
the max-norm projection after it (:func:`post_group_`), or all of them in one pass with the
update itself (:func:`fused_group_`, :mod:`paramwise.step.fused.update`). :mod:`paramwise.step.hooks` decides
when each runs; this module decides what runs, in which batches and with which step scale.

Per element, for a group with ``lr`` :math:`η` and step scale :math:`s` (:mod:`paramwise.step.prox`):

.. math::
    g &← g + λ_2 w + λ_1 \operatorname{sign}(w) + λ_0 (w - w_0) + λ_g \sqrt{m}\,w_r/\|w_r\|
        \quad\text{(gradient forms)}, \qquad w ← (1 - ηλ_d)\,w \\
    w &← \operatorname{prox}_{s(λ_1\|\cdot\|_1 + λ_g\sum_r\sqrt m\|\cdot_r\|
        + \frac{λ_2}{2}\|\cdot\|^2)}(w), \qquad w_r ← w_r \min(1, c/\|w_r\|)

Example (a group with an l1 gradient term; the hooks pass their own ``foreach`` and anchors)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0])); w.grad = torch.zeros(3)
    >>> group = {"params": [w], "lr": 0.1, "l1": 0.5, "prox": False}
    >>> with torch.no_grad():
    ...     pre_group_(group, StepCfg.read(0, group), 1.0, lambda d, dt: False, None)
    >>> w.grad.tolist()
    [0.5, -0.5, 0.0]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor

from . import regularizers as R
from ._chunks import Piece, batches, chunk_limit
from ._rows import any_zero_row, inverse_radius
from ._sparse import post_sparse_, pre_sparse_
from ._stepcfg import StepCfg, buckets, prox_, prox_scaled_, split
from .fused.update import fusable, update_
from .prox import Denominator, Scaling, denominator_for, per_element, scaling_for, warn_unknown
from .schedfree import maps_xyz
from .schedfree import post_group_ as sf_post_group_
from .thirdparty import GRAPH_READERS, key

__all__ = ["Foreach", "Anchor", "terms_", "pre_group_", "wants_fusion", "fusable_params",
           "fused_group_", "capture_rows", "post_group_", "reads_graph", "decay_later",
           "decay_now_", "with_grad"]

#: ``foreach(device, is_dtensor) -> bool``: whether a bucket takes the multi-tensor path.
Foreach = Callable[[torch.device, bool], bool]
#: ``anchor(param, take) -> w0``: ``l2_to_init``'s anchor (see :class:`paramwise.step.hooks.Handle`).
Anchor = Callable[[Tensor, bool], Tensor]


def terms_(cfg: StepCfg, k: float, batch: list[Piece], ws: list[Tensor], gs: list[Tensor],
           fe: bool, decay: bool, anchor: Anchor) -> None:
    """One batch's gradient terms (times ``k``: -1 under maximize, the grad scale of a
    ``fused=True`` optimizer) and then its ``decoupled_decay``, in place; the batch holds
    whole rows along ``group_dim`` when group lasso's gradient form is on."""
    if cfg.l2_grad:
        R.add_l2_grad_(gs, ws, k * cfg.l2_grad, foreach=fe)
    if cfg.l2_to_init:
        anchors = [pc.view(anchor(pc.param, cfg.lr != 0)) for pc in batch]
        R.add_l2_to_init_grad_(gs, ws, anchors, k * cfg.l2_to_init, foreach=fe)
    if cfg.l1_grad:
        R.add_l1_grad_(gs, ws, k * cfg.l1_grad, foreach=fe)
    if cfg.group_grad:
        R.add_group_lasso_grad_(gs, ws, k * cfg.group_grad, [pc.dim for pc in batch])
    if decay and cfg.decay and cfg.lr != 0:
        R.decay_(ws, 1 - cfg.lr * cfg.decay, foreach=fe)


def pre_group_(group: dict, cfg: StepCfg, gscale: float, foreach: Foreach, anchor: Anchor,
               decay: bool = True) -> None:
    """The gradient terms and ``decoupled_decay`` of one group, before the optimizer's step:
    in batches (whole rows along ``group_dim`` for group lasso's gradient form), times
    ``gscale`` (a ``fused=True`` optimizer's grad scale) and ``cfg.sign``; sparse gradients
    lazily, on the rows they hold (:mod:`paramwise.step._sparse`)."""
    items, sparse = [], []
    for p in group["params"]:
        if p.grad is not None:
            (sparse if p.grad.is_sparse else items).append((p, p.grad))
    if sparse:
        pre_sparse_([p for p, _ in sparse], cfg, cfg.sign * gscale, anchor, decay)
    for (device, *_, dt), (ps, _) in buckets(items).items():
        fe = foreach(device, dt)
        dims = [cfg.group_dim % p.ndim for p in ps] if cfg.group_grad else [0] * len(ps)
        for b in batches(ps, dims, chunk_limit(device)):
            terms_(cfg, cfg.sign * gscale, b, [pc.view(pc.param) for pc in b],
                   [pc.view(pc.param.grad) for pc in b], fe, decay, anchor)


def reads_graph(opt: torch.optim.Optimizer, group: dict) -> bool:
    """Whether ``opt``'s step may differentiate through the gradients' autograd graph (SophiaH,
    AdaHessian: :data:`paramwise.step.thirdparty.GRAPH_READERS`, or any gradient made with
    ``backward(create_graph=True)``): then nothing may change a parameter in place before it."""
    return key(type(opt)) in GRAPH_READERS or any(
        p.grad is not None and p.grad.grad_fn is not None for p in group["params"])


def decay_later(group: dict, cfg: StepCfg) -> list[tuple[Tensor, Tensor]]:
    """``decoupled_decay`` for a step that reads the graph: :math:`(p, ηλ_d w)` taken before
    the step, subtracted after it (:func:`decay_now_`), so :math:`w ← (1-ηλ_d)w - u`
    exactly as when the decay runs first."""
    f = cfg.lr * cfg.decay
    return [(p, p.detach() * f) for p in group["params"] if p.grad is not None]


def with_grad(opt: torch.optim.Optimizer, cfgs: list[tuple[dict, StepCfg]]
              ) -> dict[int, list[Tensor]]:
    """The parameters of each group with a gradient before the step: the post-step maps run
    on them even if ``step()`` clears ``p.grad`` (heavyball does). torch's own optimizers never
    clear gradients, so for them nothing is recorded (no pass over the parameters)."""
    if type(opt).__module__.startswith("torch."):
        return {}
    return {id(g): [p for p in g["params"] if p.grad is not None] for g, _ in cfgs}


def decay_now_(later: list[tuple[Tensor, Tensor]]) -> None:
    for p, d in later:
        p.detach().sub_(d)


def wants_fusion(opt: torch.optim.Optimizer, cfg: StepCfg, foreach: bool | None) -> bool:
    """A group worth fusing: something to do before or after the step, a nonzero lr, no forced
    foreach path, and a step scale the fused pass knows: the adaptive optimizers' from
    paramwise's own rule (a rule registered by the user runs after the step), SGD's as one
    number."""
    if foreach or cfg.lr == 0 or not (cfg.pre or cfg.prox_on or cfg.max_norm is not None):
        return False
    if torch.compiler.is_compiling() and (cfg.group_on or cfg.group_grad
                                          or not (cfg.pre or cfg.prox_on)):
        return False  # row norms and the update in one graph: inductor 2.13's C++ outer-loop
        # fusion with a local buffer fails (KeyError in is_all_write_read_contiguous; pytorch
        # issues #188228 / #196570, fix proposed in PR #196639); max-norm is kept out for the same
        # reason (see fused_group_)
    if not (cfg.prox_on and cfg.adaptive):
        return True
    if type(opt) is torch.optim.SGD:
        return not per_element(torch.optim.SGD)
    return denominator_for(type(opt)) is not None


def fusable_params(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg,
                   foreach: bool | None) -> list[Tensor]:
    """The parameters whose update, gradient terms and adaptive prox :mod:`paramwise.step.fused.update`
    runs in one pass (all of the group's with a gradient), or ``[]``."""
    if not wants_fusion(opt, cfg, foreach):
        return []
    ps = [p for p in group["params"] if p.grad is not None]
    return ps if ps and fusable(opt, group, ps, closure=False) else []


def fused_group_(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, ps: list[Tensor],
                 anchor: Anchor) -> bool:
    """Per chunk (in the post-hook, gradients given back): the gradient terms and
    ``decoupled_decay`` (as :func:`pre_group_` adds them), the row norms before the update
    (adaptive group lasso), the optimizer's own update, the proximal maps, the max-norm
    projection. Returns whether the projection ran here: not when group lasso cuts the
    chunks along another dim, nor while ``torch.compile`` traces (see :func:`wants_fusion`);
    the post-hook then projects after the pass."""
    sign = cfg.sign                        # no grad_scale: fused=True is never fused here
    rows = cfg.group_on or bool(cfg.group_grad)
    gdims = [cfg.group_dim % p.ndim for p in ps] if rows else []
    mdims = ([cfg.max_norm_dim % max(p.ndim, 1) for p in ps]
             if cfg.max_norm is not None and not torch.compiler.is_compiling() else [])
    project = bool(mdims) and (not rows or gdims == mdims)
    dims = gdims or (mdims if project else [0] * len(ps))
    adaptive = cfg.prox_on and cfg.adaptive and per_element(type(opt))
    capture = adaptive and cfg.group_on and cfg.group_prox > 0
    rho: list[Tensor | None] = []

    def before(batch: list, ws: list[Tensor], gs: list[Tensor]) -> None:
        terms_(cfg, sign, batch, ws, gs, False, True, anchor)
        rho[:] = ([inverse_radius(w, pc.dim) for w, pc in zip(ws, batch)] if capture
                  else [None] * len(ws))

    def dims_of(batch: list) -> list[int]:
        return [pc.dim for pc in batch] if cfg.group_on else []

    # one scale for the group: SGD's steady-state step, or lr (prox_scale="lr")
    rule = scaling_for(type(opt))
    s = (rule(group, cfg.lr, [], opt.state, foreach=False)
         if cfg.prox_on and cfg.adaptive and rule is not None and not adaptive else cfg.lr)

    def projected(batch: list, ws: list[Tensor]) -> None:
        if project:   # the batch holds whole rows along max_norm_dim
            c: float = cfg.max_norm  # type: ignore[assignment]
            R.project_max_norm_(ws, c, [pc.dim for pc in batch])

    def one_scale(batch: list, ws: list[Tensor], *unused: list) -> None:
        if cfg.prox_on:
            prox_(ws, s, cfg, cfg.group_on, dims_of(batch), False, [None] * len(ws))
        projected(batch, ws)

    def per_element_scale(batch: list, ws: list[Tensor], ds: list[Tensor],
                          xs: list[Tensor], ks: list[float], tails: list) -> None:
        if not xs and not tails:   # traced, nothing folded: s = k/d as tensors
            prox_(ws, [k / d for k, d in zip(ks, ds)], cfg, cfg.group_on, dims_of(batch), False,
                  rho)
        else:   # a deferred last operation of the update (tails) goes into the first map
            prox_scaled_(ws, ds, ks, xs, cfg, cfg.group_on, dims_of(batch), rho,
                         [r is None or any_zero_row(r) for r in rho] if xs else [], tails)
        projected(batch, ws)

    update_(opt, group, ps, dims, per_element_scale if adaptive else one_scale, before,
            defer=adaptive)
    return project


def capture_rows(opt: torch.optim.Optimizer, cfgs: list[tuple[dict, StepCfg]],
                 skip: set[int]) -> dict[Tensor, Tensor]:
    """Inverse row norms before the step, for the adaptive group-lasso prox (a
    majorize-minimize step around them; see :func:`paramwise.step.regularizers.prox_group_lasso_`).
    The groups in ``skip`` (run by :func:`fused_group_`) take theirs chunk by chunk."""
    out: dict[Tensor, Tensor] = {}
    if not per_element(type(opt)):
        return out
    with torch.no_grad():
        for g, c in cfgs:
            if c.group_on and c.group_prox > 0 and c.adaptive and id(g) not in skip:
                for p in g["params"]:
                    if p.grad is not None and not p.grad.is_sparse:
                        out[p] = inverse_radius(p, c.group_dim % p.ndim)
    return out


def post_group_(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, foreach: Foreach,
                prev_all: dict[Tensor, Tensor], prox_done: bool, projected: bool,
                stepped: list[Tensor] | None = None) -> None:
    """One group's proximal maps (unless ``prox_done``: the fused pass ran them) and max-norm
    projection (unless ``projected``), after the optimizer's step; ``prev_all`` holds the
    pre-step inverse row norms from :func:`capture_rows`. Parameters with a sparse gradient
    get them lazily, on the rows it holds (:mod:`paramwise.step._sparse`). ``stepped``: the
    parameters that had a gradient before the step (an optimizer such as heavyball's sets
    ``p.grad = None`` inside ``step()``), else those with a gradient now. Schedule-free
    optimizers get their maps on :math:`x` and :math:`z` (:mod:`paramwise.step.schedfree`)."""
    ps_all, sparse = [], []
    for p in group["params"] if stepped is None else stepped:
        g = p.grad
        if g is not None or stepped is not None:
            (sparse if g is not None and g.is_sparse else ps_all).append((p,))
    if maps_xyz(opt):
        rule = scaling_for(type(opt)) if cfg.prox_on and cfg.adaptive else None
        sf_post_group_(opt, group, cfg, [p for p, in ps_all], rule)
        return
    if sparse:
        post_sparse_(opt, group, cfg, [p for p, in sparse], prox=cfg.prox_on and not prox_done,
                     project=cfg.max_norm is not None and not projected)
    if not ps_all:
        return
    rule = den = None
    if cfg.prox_on and cfg.adaptive:
        rule = scaling_for(type(opt))
        if rule is None:
            warn_unknown(type(opt))
        else:
            den = denominator_for(type(opt))
    for (device, _, dt), (ps,) in buckets(ps_all).items():
        fe = foreach(device, dt)
        if cfg.prox_on and not prox_done:
            prev = {p: prev_all[p] for p in ps if p in prev_all} if rule is not None else {}
            _prox_bucket_(opt, group, cfg, ps, fe, dt, rule, den, prev)
        if cfg.max_norm is not None and not projected:
            R.project_max_norm_(ps, cfg.max_norm, [cfg.max_norm_dim % max(p.ndim, 1)
                                                   for p in ps])


def _prox_bucket_(opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, ps: list[Tensor],
                  fe: bool, dt: bool, rule: Scaling | None, den: Denominator | None,
                  prev: dict[Tensor, Tensor]) -> None:
    """The proximal maps after the step for one bucket ``ps`` (one device and dtype; ``fe``:
    the multi-tensor path; ``dt``: DTensors), in batches; ``rule``/``den``: the optimizer's
    step-scale rule and denominator rule (None: s = lr, or no scaled form); ``prev``: the
    pre-step inverse row norms (adaptive group lasso)."""
    device, dtype, gl = ps[0].device, ps[0].dtype, cfg.group_on
    dims = [cfg.group_dim % p.ndim for p in ps] if gl else [0] * len(ps)
    # plain CPU float tensors: the scaled form s = k/d, on two chunk buffers
    scaled = (den is not None and not fe and not dt and device.type == "cpu"
              and dtype in (torch.float32, torch.float64)
              and not torch.compiler.is_compiling()
              and (not gl or cfg.group_prox <= 0 or len(prev) == len(ps)))
    # one number s on the per-tensor path: the maps need no parameter-sized temporary
    # (softshrink in place, row factors), so tensors stay whole (cutting them measured 0.3
    # passes slower for group lasso on a 16.8M-parameter MLP)
    whole = not fe and (rule is None or not per_element(type(opt)))
    limit = sys.maxsize if whole else chunk_limit(device) // (2 if scaled else 1)
    # l1 alone: ask the rule (linear in lr) for the threshold s·λ directly
    k = cfg.l1_prox if not gl and not cfg.l2_fold else 1.0
    work: Tensor | None = None
    wake = {p: any_zero_row(r) for p, r in prev.items()} if scaled else {}
    for b in batches(ps, dims, limit):
        ws = [pc.view(pc.param) for pc in b]
        bdims = [pc.dim for pc in b] if gl else []
        bprev = [pc.view(prev[pc.param]) if pc.param in prev else None for pc in b]
        if scaled:
            n = sum(pc.numel for pc in b)
            if work is None or work.numel() < 2 * n:
                work = torch.empty(2 * n, dtype=dtype, device=device)
            ds, xs = split(work, ws)
            ks = den(group, cfg.lr, b, opt.state, ds)
            if ks is not None:
                prox_scaled_(ws, ds, ks, xs, cfg, gl, bdims, bprev,
                             [wake.get(pc.param, True) for pc in b])
                continue
        s = (rule(group, cfg.lr * k, b, opt.state, foreach=fe) if rule is not None
             else cfg.lr * k)
        if k != 1.0:
            R.soft_threshold_(ws, s, foreach=fe)
        else:
            prox_(ws, s, cfg, gl, bdims, fe, bprev)
