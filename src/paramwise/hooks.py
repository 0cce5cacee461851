r"""Regularization for any ``torch.optim.Optimizer``, run by its step pre/post hooks.

:func:`attach` registers two hooks; every step they read the regularization options
(:data:`paramwise.regularizers.REG_KEYS`) from each param group, so ``state_dict()`` saves them,
schedulers' ``lr`` changes apply, and a group without a key has that regularizer off. For the
parameters with a gradient (others are skipped, as the optimizer skips them):

* **before** the step, under ``no_grad`` (after AMP unscaling, once per step however many
  micro-batches were accumulated, building no autograd graph), gradient terms go into ``.grad``:
  ``l2`` :math:`λw`, ``l1`` with ``prox=False`` :math:`λ\operatorname{sign}(w)`, ``group_lasso``
  with ``prox=False``, ``l2_to_init`` :math:`λ(w - w_0)` (subtracted instead under
  ``maximize=True``, so the penalty still shrinks); then ``decoupled_decay`` scales
  :math:`w ← (1 - \mathrm{lr}\,λ)w` exactly where AdamW does, so Adam + ``decoupled_decay`` is
  AdamW. After ``step()``, ``p.grad`` includes these terms.
* **after** the step: the proximal maps of ``l1`` / ``group_lasso`` (with ``l2`` folded in:
  elastic net) with step scale :math:`s` from :mod:`paramwise.prox`, then ``max_norm``'s
  projection.

Every change to a parameter is scaled by the group's current ``lr``; a group with ``lr == 0``
gets no decay, prox or projection (its parameters stay bit-identical). A step that GradScaler
skips (inf/NaN gradients) applies nothing: the non-fused path never calls ``step()``; for fused
optimizers the pre-hook reads ``optimizer.found_inf`` (one sync) and multiplies gradient terms by
``optimizer.grad_scale``, since there the gradients are still scaled.

**Bad values.** A strength that became negative or non-finite after :func:`attach` (e.g. set by
hand) raises :class:`~paramwise.errors.ParamwiseError` from the pre-hook, before anything is
changed. A NaN/inf parameter or gradient element stays where it is: no regularizer spreads it to
other elements (see :mod:`paramwise.regularizers`); :func:`paramwise.stats` counts them.

**Speed.** Parameters are bucketed by device, dtype and DTensor-ness. Plain accelerator tensors
use multi-tensor ``torch._foreach_*`` kernels; on CPU a per-tensor loop (as fast there, measured,
and it can use one-pass kernels such as ``softshrink``); DTensors a per-tensor loop of ordinary
ops, whose sharding rules DTensor owns (row norms across shards included). Work that needs
temporaries runs in batches of about :func:`paramwise._chunks.chunk_limit` elements (big tensors
cut into whole rows), so extra memory stays one batch. Under ``torch.compile`` the hooks trace
without graph breaks (no ``.item()``; the plain loop, which inductor fuses). Sparse gradients are
skipped.

:func:`lower` rewrites options to the optimizer's native equivalent before it is built (coupled
``l2`` → ``weight_decay``; ``decoupled_decay`` → AdamW's ``weight_decay`` or
``Adam(decoupled_weight_decay=True)``), so they run fused inside ``step()``; the hooks skip what
a group's ``"paramwise_lowered"`` lists. Example::

    >>> w = torch.nn.Parameter(torch.randn(20, 5))
    >>> opt = torch.optim.Adam([{"params": [w], "l1": 1e-3}], lr=1e-2)
    >>> handle = attach(opt)
    >>> w.grad = torch.randn(20, 5); opt.step()       # Adam step, then adaptive soft-threshold
    >>> handle.remove()
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import regularizers as R
from ._chunks import batches, chunk_limit, is_dtensor
from .errors import ParamwiseError
from .lowering import LOWERED_KEY, lower
from .prox import scaling_for, warn_unknown

__all__ = ["attach", "Handle", "handle_of", "lower", "LOWERED_KEY"]

_ANCHORS_KEY = "paramwise_anchors"

_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Handle] = weakref.WeakKeyDictionary()


def _num(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def _group_label(i: int, group: Mapping[str, Any]) -> str:
    names = group.get("param_names")
    if names:
        shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
        return f"param group {i} ({shown})"
    return f"param group {i}"


@dataclass
class _Cfg:
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
    def read(cls, i: int, group: Mapping[str, Any]) -> _Cfg | None:
        if not R.REG_KEYS.intersection(group):
            return None
        problem = R.check_values(group)
        if problem:
            raise ParamwiseError(f"{_group_label(i, group)}: {problem}",
                                 fix="fix the value in optimizer.param_groups (step() was not run)")

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


def _buckets(items: Iterable[tuple[Tensor, ...]]) -> dict[tuple, list[list[Tensor]]]:
    """Group tuples (param, grad, ...) by param device, dtypes and DTensor-ness."""
    out: dict[tuple, list[list[Tensor]]] = {}
    for tup in items:
        p = tup[0]
        key = (p.device, *(t.dtype for t in tup), is_dtensor(p))
        cols = out.setdefault(key, [[] for _ in tup])
        for col, t in zip(cols, tup):
            col.append(t)
    return out


class Handle:
    """What :func:`attach` returns: ``remove()`` detaches the hooks; ``anchors`` maps each
    parameter with ``l2_to_init`` to its anchor :math:`w_0` (saved in ``state_dict()`` under
    ``"paramwise_anchors"``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, foreach: bool | None) -> None:
        self._opt = weakref.ref(optimizer)
        self.foreach = foreach
        self.anchors: dict[Tensor, Tensor] = {}
        self._skip = False
        self._post_cfgs: list[tuple[dict, _Cfg]] = []
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        if hasattr(optimizer, "register_state_dict_post_hook"):
            self._hooks += [optimizer.register_state_dict_post_hook(self._save),
                            optimizer.register_load_state_dict_pre_hook(self._load)]
        for group in optimizer.param_groups:
            if group.get("l2_to_init") is not None:
                for p in group["params"]:
                    self.anchors[p] = p.detach().clone()

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def remove(self) -> None:
        """Detach: later steps run the optimizer alone. Safe to call twice."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        opt = self._opt()
        if opt is not None and _ATTACHED.get(opt) is self:
            del _ATTACHED[opt]

    # --- state_dict: anchors travel with the optimizer's state ------------------------------
    def _indexed(self, opt: torch.optim.Optimizer) -> list[Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    def _save(self, opt: torch.optim.Optimizer, sd: dict) -> dict:
        if self.anchors:
            sd[_ANCHORS_KEY] = {i: self.anchors[p] for i, p in enumerate(self._indexed(opt))
                                if p in self.anchors}
        return sd

    def _load(self, opt: torch.optim.Optimizer, sd: dict) -> dict:
        saved = sd.pop(_ANCHORS_KEY, None)
        if saved:
            params = self._indexed(opt)
            for i, a in saved.items():
                p = params[int(i)]
                self.anchors[p] = a.detach().to(device=p.device, dtype=p.dtype, copy=True)
        return sd

    def _anchor(self, p: Tensor) -> Tensor:
        a = self.anchors.get(p)
        if a is None:  # l2_to_init added after attach(): anchor at the current value
            a = self.anchors[p] = p.detach().clone()
        return a

    def _foreach(self, device: torch.device, dtensor: bool) -> bool:
        if dtensor or torch.compiler.is_compiling():  # compiled: inductor fuses the plain loop
            return False
        return self.foreach if self.foreach is not None else device.type != "cpu"

    # --- the hooks -------------------------------------------------------------------------
    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._post_cfgs = []
        cfgs = []
        for i, g in enumerate(opt.param_groups):
            c = _Cfg.read(i, g)
            if c is not None:
                cfgs.append((g, c))
        found_inf = getattr(opt, "found_inf", None)
        self._skip = isinstance(found_inf, Tensor) and bool(found_inf.item())
        if self._skip or not cfgs:
            return
        gscale = getattr(opt, "grad_scale", None)
        gscale = _num(gscale) if gscale is not None else 1.0
        with torch.no_grad():
            for group, cfg in cfgs:
                if cfg.pre:
                    self._pre_group(group, cfg, gscale)
        self._post_cfgs = [(g, c) for g, c in cfgs if c.post and c.lr != 0]

    def _pre_group(self, group: dict, cfg: _Cfg, gscale: float) -> None:
        k = cfg.sign * gscale
        items = [(p, p.grad) for p in group["params"]
                 if p.grad is not None and not p.grad.is_sparse]
        for (device, *_, dt), (ps, gs) in _buckets(items).items():
            fe = self._foreach(device, dt)
            if cfg.l2_grad:
                R.add_l2_grad_(gs, ps, k * cfg.l2_grad, foreach=fe)
            if cfg.l2_to_init:
                R.add_l2_to_init_grad_(gs, ps, [self._anchor(p) for p in ps], k * cfg.l2_to_init,
                                       foreach=fe)
            if cfg.l1_grad:
                for b in batches(ps, [0] * len(ps), chunk_limit(device)):
                    R.add_l1_grad_([pc.view(pc.param.grad) for pc in b],
                                   [pc.view(pc.param) for pc in b], k * cfg.l1_grad, foreach=fe)
            if cfg.group_grad:
                R.add_group_lasso_grad_(gs, ps, k * cfg.group_grad,
                                        [cfg.group_dim % p.ndim for p in ps])
            if cfg.decay and cfg.lr != 0:
                R.decay_(ps, 1 - cfg.lr * cfg.decay, foreach=fe)

    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._skip:
            self._skip = False
            return
        cfgs, self._post_cfgs = self._post_cfgs, []
        with torch.no_grad():
            for group, cfg in cfgs:
                self._post_group(opt, group, cfg)

    def _post_group(self, opt: torch.optim.Optimizer, group: dict, cfg: _Cfg) -> None:
        rule = None
        if cfg.prox_on and cfg.adaptive:
            rule = scaling_for(type(opt))
            if rule is None:
                warn_unknown(type(opt))
        ps_all = [(p,) for p in group["params"] if p.grad is not None]
        for (device, _, dt), (ps,) in _buckets(ps_all).items():
            fe = self._foreach(device, dt)
            if cfg.prox_on:
                gl = cfg.group_on
                dims = [cfg.group_dim % p.ndim for p in ps] if gl else [0] * len(ps)
                # l1 alone: ask the rule (linear in lr) for the threshold s·λ directly
                k = cfg.l1_prox if not gl and not cfg.l2_fold else 1.0
                for b in batches(ps, dims, chunk_limit(device)):
                    s = (rule(group, cfg.lr * k, b, opt.state, foreach=fe) if rule is not None
                         else cfg.lr * k)
                    ws = [pc.view(pc.param) for pc in b]
                    if k != 1.0:
                        R.soft_threshold_(ws, s, foreach=fe)
                    else:
                        self._prox(ws, s, cfg, gl, [pc.dim for pc in b] if gl else [], fe)
            if cfg.max_norm is not None:
                R.project_max_norm_(ps, cfg.max_norm, [cfg.max_norm_dim % max(p.ndim, 1)
                                                       for p in ps])

    @staticmethod
    def _prox(ws: list[Tensor], s: R.Scale, cfg: _Cfg, gl: bool, dims: Sequence[int],
              fe: bool) -> None:
        if cfg.l1_prox > 0 or not gl:
            R.prox_l1_(ws, s, cfg.l1_prox, 0.0 if gl else cfg.l2_fold, foreach=fe)
        if gl:
            R.prox_group_lasso_(ws, s, cfg.group_prox, dims, cfg.l2_fold)


def attach(optimizer: torch.optim.Optimizer, *, foreach: bool | None = None) -> Handle:
    """Run the regularizers configured in ``optimizer``'s param groups at every step.

    Checks every group's options against its parameters' shapes now (raising
    :class:`~paramwise.errors.ParamwiseError` with the group and parameter names), registers the
    step hooks and returns a :class:`Handle`. ``foreach`` forces the multi-tensor fast path on
    (``True``) or off (``False``); by default it is on for accelerators and off on CPU, where a
    per-tensor loop is as fast. Parameters with ``l2_to_init`` get their anchor copied now.

        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD([{"params": [model.weight], "l1": 1e-4},
        ...                        {"params": [model.bias]}], lr=0.1)
        >>> handle = attach(opt)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ParamwiseError(f"attach() needs a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}", fix="pass the optimizer instance")
    if optimizer in _ATTACHED:
        raise ParamwiseError("this optimizer already has paramwise regularization attached",
                             fix="keep the handle from the first attach(), or call its remove() "
                             "before attaching again")
    for i, group in enumerate(optimizer.param_groups):
        opts = {k: group[k] for k in R.REG_KEYS if k in group}
        if not opts:
            continue
        names = group.get("param_names") or [None] * len(group["params"])
        for p, name in zip(group["params"], names):
            problem = R.check_options(opts, tuple(p.shape))
            if problem is None and p.is_complex():
                problem = "complex parameters are not supported by paramwise regularizers"
            if problem:
                who = f"parameter {name!r}" if name else f"a parameter of shape {tuple(p.shape)}"
                raise ParamwiseError(f"{_group_label(i, group)}, {who}: {problem}")
    handle = Handle(optimizer, foreach)
    _ATTACHED[optimizer] = handle
    return handle


def handle_of(optimizer: torch.optim.Optimizer) -> Handle | None:
    """The :class:`Handle` attached to ``optimizer``, if any."""
    return _ATTACHED.get(optimizer)
