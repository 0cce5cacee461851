r"""Regularization for any ``torch.optim.Optimizer``, run by its step pre/post hooks.

:func:`attach` registers two hooks; every step they read the regularization options
(:data:`paramwise.options.regularization.REG_KEYS`) from each param group, so ``state_dict()`` saves them,
schedulers' ``lr`` changes apply, and a group without a key has that regularizer off. For the
parameters with a gradient (others are skipped, as the optimizer skips them):

* **before** the step, under ``no_grad`` (after AMP unscaling, once per step however many
  micro-batches were accumulated, building no autograd graph), gradient terms go into ``.grad``:
  ``l2`` :math:`λw`, ``l1`` with ``prox=False`` :math:`λ\operatorname{sign}(w)`, ``group_lasso``
  with ``prox=False``, ``l2_to_init`` :math:`λ(w - w_0)` (subtracted instead under
  ``maximize=True``, so the penalty still shrinks); then ``decoupled_decay`` scales
  :math:`w ← (1 - \mathrm{lr}\,λ)w` exactly where AdamW does, so Adam + ``decoupled_decay`` is
  AdamW. After ``step()``, ``p.grad`` includes these terms. With ``step(closure)`` the closure
  computes the gradients inside ``step()`` (Lightning's automatic optimization steps this way),
  so the pre-hook wraps it: the terms go in right after each call of the closure, the decay
  after the first.
* **after** the step: the proximal maps of ``l1`` / ``group_lasso`` (with ``l2`` folded in:
  elastic net) with step scale :math:`s` from :mod:`paramwise.step.prox`, then ``max_norm``'s
  projection.
* **in place of** the step, for ``Adam``, ``AdamW``, ``SGD``, ``RMSprop`` and ``Adagrad``
  groups on plain CPU tensors (where torch runs its per-tensor loop): the pre-hook sets their
  gradients aside, so ``step()`` skips them; the post-hook puts them back and runs the
  gradient terms, torch's own update (operation for operation), the proximal maps (the
  adaptive ones with the update's own denominator) and the max-norm projection in one pass
  over each chunk (:mod:`paramwise.step.fused.update`). A step that raises in
  between applies nothing to these groups. Step pre-hooks registered after :func:`attach` (and
  post-hooks registered before it) see their ``.grad`` as ``None``. :func:`runs_fused` (and
  ``explain``) says which groups run this way; ``attach(opt, foreach=True)`` turns it off.

Every change to a parameter is scaled by the group's current ``lr``; a group with ``lr == 0``
gets no decay, prox or projection (its parameters stay bit-identical). A step that GradScaler
skips (inf/NaN gradients) applies nothing: for most optimizers it never calls ``step()``; for
torch's ``fused=True`` optimizers the pre-hook reads ``optimizer.found_inf`` (one sync) and
multiplies gradient terms by ``optimizer.grad_scale``, since there the gradients are still
scaled.

**Anchors** (``l2_to_init``'s :math:`w_0`) are taken lazily, at the first step that can change
a parameter, and travel with ``state_dict()`` (:mod:`paramwise.step.anchors`).

**Bad values.** Before the pre-hook changes anything it checks every regularized group
(:mod:`paramwise.step.stepcheck`: values, lr, ranges per dtype, shapes, dtypes, sparse rows, step
scale), so a step that cannot run raises :class:`~paramwise.errors.ParamwiseError` and changes
no parameter and no optimizer state; :func:`attach` runs the same checks, and so does
``add_param_group`` on an attached optimizer (the group is not added).
A NaN/inf parameter or gradient element stays where it is: no regularizer spreads it to other
elements (see :mod:`paramwise.step.regularizers`); :func:`paramwise.stats` counts them.

**Speed.** Parameters are bucketed by device, dtype and DTensor-ness. Plain accelerator tensors
use multi-tensor ``torch._foreach_*`` kernels; on CPU a per-tensor loop (as fast there, measured,
and it can use one-pass kernels such as ``softshrink``); DTensors a per-tensor loop of ordinary
ops, whose sharding rules DTensor owns (row norms across shards included). Work that needs
temporaries runs in batches of about :func:`paramwise.step._chunks.chunk_limit` elements (big tensors
cut into whole rows), so extra memory stays one batch. With an adaptive scale on plain CPU float
tensors the proximal maps work in the scaled variable :math:`w·d` (:math:`s = k/d`, read from the
optimizer's state into two half-chunk buffers): l1 costs one read of the state and one
read-modify-write of the weights (:func:`paramwise.step.regularizers.prox_l1_scaled_`). Adaptive group
lasso takes one closed-form majorize-minimize step per row around the row norm captured by the
pre-hook, exact at fixed points (:func:`paramwise.step.regularizers.prox_group_lasso_`), instead of
Newton iterations. Under ``torch.compile`` the hooks trace without graph breaks (no
``.item()``; the plain loop, uncut, which inductor fuses). Sparse gradients are
regularized lazily, on the rows they hold (:mod:`paramwise.step._sparse`).

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
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamwiseError
from . import _groupstep as G
from . import _watch
from ._chunks import as_float as _num
from ._stepcfg import StepCfg
from .anchors import Anchors
from .fused.update import fusable
from .lowering import LOWERED_KEY, lower
from .schedfree import check_all as check_thirdparty
from .stepcheck import StepCheck, check_attach, check_sparse, wrap_add_param_group

__all__ = ["attach", "Handle", "handle_of", "runs_fused", "lower", "LOWERED_KEY"]

_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Handle] = weakref.WeakKeyDictionary()


class Handle(Anchors):
    """What :func:`paramwise.attach` returns: :meth:`remove` detaches the hooks, :meth:`check`
    raises now what the next step would; ``anchors`` maps each parameter with ``l2_to_init``
    to its anchor :math:`w_0` once it has one (taken at its first step, loaded from a
    checkpoint, or set by :meth:`capture_anchors`; saved in ``state_dict()`` under
    ``"paramwise_anchors"``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, foreach: bool | None) -> None:
        self._opt = weakref.ref(optimizer)
        self.foreach = foreach
        self.anchors = {}
        self._grad_hooks = {}
        self._skip = False
        self._post_cfgs: list[tuple[dict, StepCfg]] = []
        self._set_aside: list[tuple[Tensor, Tensor]] = []  # grads hidden from a fused step
        self._to_fuse: list[tuple[dict, StepCfg, list[Tensor]]] = []
        self._prev_norms: dict[Tensor, Tensor] = {}
        self._stepped: dict[int, list[Tensor]] = {}    # group -> params with a grad before step
        self._later: list[tuple[Tensor, Tensor]] = []   # decay deferred past a graph-reading step
        self._check = StepCheck()
        self._add = wrap_add_param_group(optimizer)
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        if hasattr(optimizer, "register_state_dict_post_hook"):
            self._hooks += [optimizer.register_state_dict_post_hook(self._save),
                            optimizer.register_load_state_dict_pre_hook(self._load)]
        self._watch_first_grads(optimizer)

    @property
    def attached(self) -> bool:
        """Whether the hooks are still attached."""
        return bool(self._hooks)

    def check(self) -> None:
        """Raise what the next ``step()`` would raise before changing anything (the checks of
        ``paramwise.step.stepcheck``, on the gradients present now); do nothing else."""
        opt = self._opt()
        if opt is not None and self._hooks:
            self._check.groups(opt)

    def remove(self) -> None:
        """Detach: later steps run the optimizer alone. Safe to call twice."""
        self._restore_grads()
        for h in [*self._hooks, *self._grad_hooks.values()]:
            h.remove()
        self._hooks, self._grad_hooks = [], {}
        opt = self._opt()
        if opt is not None and opt.__dict__.get("add_param_group") is self._add:
            del opt.add_param_group
        if opt is not None:
            _watch.quiet(opt)     # detached on purpose: no "forgot attach()" warning
        if opt is not None and _ATTACHED.get(opt) is self:
            del _ATTACHED[opt]

    def _foreach(self, device: torch.device, dtensor: bool) -> bool:
        if dtensor or torch.compiler.is_compiling():  # compiled: inductor fuses the plain loop
            return False
        return self.foreach if self.foreach is not None else device.type != "cpu"

    # --- the hooks -------------------------------------------------------------------------
    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple | None:
        if torch.compiler.is_compiling():
            return self._pre_step(opt, args, kwargs)
        with torch.autograd.profiler.record_function("paramwise::pre_step"):
            return self._pre_step(opt, args, kwargs)

    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling():
            return self._post_step(opt)
        with torch.autograd.profiler.record_function("paramwise::post_step"):
            self._post_step(opt)

    def _pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple | None:
        self._restore_grads()  # a step that raised last time never ran the post-hook
        self._post_cfgs, self._prev_norms, self._to_fuse = [], {}, []
        self._stepped, self._later = {}, []
        if not torch.compiler.is_compiling() and self._grad_hooks:
            self._drop_grad_hooks()
        cfgs = self._check.groups(opt)     # everything checked before anything changes
        check_thirdparty(opt, cfgs, "; step() was not run", stepping=True)
        found_inf = getattr(opt, "found_inf", None)
        self._skip = isinstance(found_inf, Tensor) and bool(found_inf.item())
        if self._skip or not cfgs:
            return
        gscale = getattr(opt, "grad_scale", None)
        gscale = _num(gscale) if gscale is not None else 1.0
        # args[0] is the optimizer itself; a closure comes next or as a keyword
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:   # it computes the gradients inside step(): add terms after it
            self._post_cfgs = [(g, c) for g, c in cfgs if c.post and c.lr != 0]
            wrapped = self._after_closure(closure, opt, cfgs, gscale)
            if len(args) > 1:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}
        fused: list[tuple[dict, StepCfg, list[Tensor]]] = []
        with torch.no_grad():
            for group, cfg in cfgs:
                ps = G.fusable_params(opt, group, cfg, self.foreach)
                if ps:
                    fused.append((group, cfg, ps))
                elif cfg.pre:
                    self._pre_group(opt, group, cfg, gscale, True)
        self._post_cfgs = [(g, c) for g, c in cfgs if c.post and c.lr != 0]
        self._stepped = G.with_grad(opt, self._post_cfgs)
        self._prev_norms = G.capture_rows(opt, self._post_cfgs, skip={id(g) for g, _, _ in fused})
        # set the fused groups' gradients aside so step() skips them; the post-hook gives them
        # back and runs their update (a step that raises before it applies nothing to them)
        self._to_fuse = fused
        for _, _, ps in fused:
            for p in ps:
                self._set_aside.append((p, p.grad))  # type: ignore[arg-type]
                p.grad = None

    def _after_closure(self, closure: Any, opt: torch.optim.Optimizer,
                       cfgs: list[tuple[dict, StepCfg]], gscale: float) -> Any:
        """``closure`` followed by the gradient terms (every call: LBFGS calls it repeatedly)
        and, at the first call only, ``decoupled_decay`` and the pre-step row norms. A closure
        usually zeroes the gradients and runs backward, so terms added before ``step()`` ran
        it would be lost (Lightning's automatic optimization steps this way)."""
        first = [True]

        def wrapped() -> Any:
            loss = closure()
            check_sparse(opt, cfgs, "; step() was not run")   # the closure's gradients
            with torch.no_grad():
                for group, cfg in cfgs:
                    if cfg.pre:
                        self._pre_group(opt, group, cfg, gscale, first[0])
            if first[0]:
                self._prev_norms = G.capture_rows(opt, self._post_cfgs, skip=set())
                self._stepped = G.with_grad(opt, self._post_cfgs)
                first[0] = False
            return loss

        return wrapped

    def _pre_group(self, opt: torch.optim.Optimizer, group: dict, cfg: StepCfg, gscale: float,
                   decay: bool) -> None:
        """:func:`G.pre_group_`; for a step that reads the autograd graph (SophiaH), the decay
        is kept for after the step (:func:`G.decay_later`) instead of scaling ``w`` now."""
        if decay and cfg.decay and cfg.lr != 0 and G.reads_graph(opt, group):
            self._later += G.decay_later(group, cfg)
            decay = False
        G.pre_group_(group, cfg, gscale, self._foreach, self._anchor, decay=decay)

    def _restore_grads(self) -> None:
        """Give back the gradients set aside for the fused pass. Normally the post-hook
        does, at once. After a ``step()`` that raised in between (no post-hook ran, nothing was
        applied to these parameters), the next ``step()`` does: all of them if none has a
        gradient now (the step is retried as it was), else none (a new backward ran; a
        parameter it did not reach has no gradient, as in torch)."""
        if self._set_aside and all(p.grad is None for p, _ in self._set_aside):
            for p, g in self._set_aside:
                p.grad = g
        self._set_aside = []

    def _post_step(self, opt: torch.optim.Optimizer) -> None:
        self._restore_grads()
        fused, self._to_fuse = self._to_fuse, []
        if self._skip:
            self._skip = False
            return
        cfgs, self._post_cfgs = self._post_cfgs, []
        stepped, self._stepped = self._stepped, {}
        with torch.no_grad():
            later, self._later = self._later, []
            G.decay_now_(later)
            projected = {id(g) for g, cfg, ps in fused
                         if G.fused_group_(opt, g, cfg, ps, self._anchor)}
            done = {id(g) for g, _, _ in fused}      # their prox ran in the fused pass
            for group, cfg in cfgs:
                G.post_group_(opt, group, cfg, self._foreach, self._prev_norms,
                              prox_done=id(group) in done, projected=id(group) in projected,
                              stepped=stepped.get(id(group)))
        self._prev_norms = {}


def attach(optimizer: torch.optim.Optimizer, *, foreach: bool | None = None) -> Handle:
    """Run the regularizers configured in ``optimizer``'s param groups at every step.

    ``optimizer`` is any ``torch.optim.Optimizer`` whose groups carry regularization options
    (``l1``, ``l2``, ``group_lasso``, ``l2_to_init``, ``decoupled_decay``, ``max_norm``):
    :func:`paramwise.optimizer` calls this itself; call it for an optimizer built by hand from
    :func:`paramwise.param_groups`. Every step, the hooks read the options from each group (so
    ``state_dict()`` saves them and a scheduler's ``lr`` applies): gradient terms before the
    step, proximal maps (with the optimizer's own step scale) and the max-norm projection after
    it, or, for Adam, AdamW, SGD, RMSprop and Adagrad on plain CPU tensors, all of it in one
    pass with the update.

    Checks every group's options against its parameters' shapes now (raising
    :class:`paramwise.ParamwiseError` with the group and parameter names), registers the step
    hooks and returns a :class:`~paramwise.step.hooks.Handle`. ``foreach`` forces the
    multi-tensor fast path on (``True``) or off (``False``); by default it is on for
    accelerators and off on CPU, where a per-tensor loop is as fast. Parameters with
    ``l2_to_init`` are anchored at their first step, not now
    (:meth:`~paramwise.step.hooks.Handle.capture_anchors` anchors now).

        >>> import torch, paramwise
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD([{"params": [model.weight], "l1": 1e-4},
        ...                        {"params": [model.bias]}], lr=0.1)
        >>> handle = paramwise.attach(opt)
        >>> model(torch.randn(3, 4)).sum().backward(); opt.step()   # SGD's step, then the l1 prox
        >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ParamwiseError(f"attach() needs a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}", fix="pass the optimizer instance")
    if optimizer in _ATTACHED:
        raise ParamwiseError("this optimizer already has paramwise regularization attached",
                             fix="keep the handle from the first attach(), or call its remove() "
                             "before attaching again")
    check_attach(optimizer)
    check_thirdparty(optimizer, [(g, c) for i, g in enumerate(optimizer.param_groups)
                                  if (c := StepCfg.read(i, g)) is not None], "")
    handle = Handle(optimizer, foreach)
    _ATTACHED[optimizer] = handle
    return handle


def runs_fused(optimizer: torch.optim.Optimizer, group_index: int) -> bool:
    """Whether the attached hooks would run group ``group_index``'s update together with its
    regularizers (:mod:`paramwise.step.fused.update`) at the next eager ``step()`` without a closure, given
    the tensors it holds now (a compiled step leaves group lasso to the hooks)."""
    handle = _ATTACHED.get(optimizer)
    group = optimizer.param_groups[group_index]
    cfg = StepCfg.read(group_index, group)
    return (handle is not None and cfg is not None and G.wants_fusion(optimizer, cfg, handle.foreach)
            and fusable(optimizer, group, group["params"], closure=False))


def handle_of(optimizer: torch.optim.Optimizer) -> Handle | None:
    """The :class:`Handle` attached to ``optimizer``, if any."""
    return _ATTACHED.get(optimizer)


_watch.install(_ATTACHED)
