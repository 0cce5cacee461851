r"""The anchors :math:`w_0` of ``l2_to_init`` for an attached optimizer: when they are taken,
how they travel with ``state_dict()``, and how to set them.

Anchors are taken lazily, just before the first step that
can change the parameter: when its first gradient arrives (a post-accumulate-grad hook, run
eagerly even when the step is compiled, so a compiled step never recompiles for it) or, for a
gradient set by hand or ``l2_to_init`` added after :func:`paramwise.attach`, at the first ``step()`` in
which it has a gradient and its group's ``lr`` is not 0. So the usual resume order (build the
model, build the optimizer, load the model's weights, load the optimizer's state) anchors every
parameter at the loaded (pretrained) weights, never at the random initialisation the optimizer
was built with. Anchors restored by ``load_state_dict`` (saved under ``"paramwise_anchors"``)
replace any taken before and are never re-taken; the lr = 0 step that
``torch.distributed.checkpoint.state_dict`` runs to create optimizer state takes none. Until a
parameter has its anchor, its ``l2_to_init`` term is 0 (:math:`w_0 = w`), in the hooks and in
:func:`paramwise.penalty`. ``Handle.capture_anchors()`` anchors at the current values at once
(the attach-time anchor, or a new reference point at any time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ANCHORS_KEY", "Anchors"]

#: The key under which the anchors travel in ``optimizer.state_dict()`` (by parameter index).
ANCHORS_KEY = "paramwise_anchors"


class Anchors:
    """The anchor part of :class:`paramwise.step.hooks.Handle`: ``anchors`` maps each parameter
    with ``l2_to_init`` to its anchor once it has one. ``_grad_hooks`` holds the
    post-accumulate-grad hooks that take an anchor when a parameter's first gradient arrives."""

    _opt: Callable[[], torch.optim.Optimizer | None]
    anchors: dict[Tensor, Tensor]
    _grad_hooks: dict[Tensor, Any]

    def _watch_first_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Register the first-gradient hook on every parameter of a group with ``l2_to_init``."""
        for group in optimizer.param_groups:
            if group.get("l2_to_init") is not None:
                for p in group["params"]:
                    if p.requires_grad and p.is_leaf and p not in self._grad_hooks:
                        self._grad_hooks[p] = p.register_post_accumulate_grad_hook(
                            self._first_grad)

    def capture_anchors(self, params: Iterable[Tensor] | None = None) -> int:
        """Anchor ``params`` at their current values now, replacing any anchor they had (taken
        at a step or loaded); by default every parameter of a group with ``l2_to_init``.
        Returns how many were anchored. For the attach-time anchor, call it right after
        :func:`paramwise.attach` (or :func:`paramwise.optimizer`)::

            >>> import torch, paramwise
            >>> w = torch.nn.Parameter(torch.ones(3))
            >>> opt = torch.optim.SGD([{"params": [w], "l2_to_init": 0.1}], lr=0.1)
            >>> handle = paramwise.attach(opt)
            >>> handle.capture_anchors()
            1
        """
        if params is None:
            opt = self._opt()
            params = [] if opt is None else [p for g in opt.param_groups
                                             if g.get("l2_to_init") is not None
                                             for p in g["params"]]
        n = 0
        with torch.no_grad():
            for p in params:
                self.anchors[p] = p.detach().clone()
                n += 1
        return n

    # --- state_dict: anchors travel with the optimizer's state ------------------------------
    def _indexed(self, opt: torch.optim.Optimizer) -> list[Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    def _save(self, opt: torch.optim.Optimizer, sd: dict) -> dict:
        if self.anchors:
            sd[ANCHORS_KEY] = {i: self.anchors[p] for i, p in enumerate(self._indexed(opt))
                                if p in self.anchors}
        return sd

    def _load(self, opt: torch.optim.Optimizer, sd: dict) -> dict:
        saved = sd.pop(ANCHORS_KEY, None)
        if saved:
            params = self._indexed(opt)
            for i, a in saved.items():
                p = params[int(i)]
                self.anchors[p] = a.detach().to(device=p.device, dtype=p.dtype, copy=True)
        return sd

    def _first_grad(self, p: Tensor) -> None:
        """Post-accumulate-grad hook (eager, in backward): the weights the first step starts
        from are these. A restored or explicitly captured anchor is kept."""
        if p not in self.anchors:
            self.anchors[p] = p.detach().clone()

    def _drop_grad_hooks(self) -> None:
        """Remove the grad hooks of anchored parameters (not from inside a hook: the autograd
        engine iterates over the hook dict while it runs them)."""
        for p in [p for p in self._grad_hooks if p in self.anchors]:
            self._grad_hooks.pop(p).remove()

    def _anchor(self, p: Tensor, take: bool) -> Tensor:
        """``p``'s anchor; a parameter without one gets its current value, kept if ``take``
        (its first step that can change it), else only for this step (``w0 = w``: no pull)."""
        a = self.anchors.get(p)
        if a is None:
            if not take:
                return p.detach()
            a = self.anchors[p] = p.detach().clone()
        return a
