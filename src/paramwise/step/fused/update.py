r"""The optimizer's own update and the regularizers in one pass over each chunk (Adam, AdamW,
SGD, RMSprop, Adagrad on CPU).

A regularizer run by step hooks reads and writes every weight once more before the step
(gradient terms) and once more after it (proximal maps); under the adaptive optimizers the
proximal maps also need the step's per-element scale (Adam: :math:`s = \mathrm{lr}/(\sqrt{\hat
v} + ε)`), whose denominator the optimizer computes inside its update and drops — a square root
and a division per weight again, about as much arithmetic as the update itself on a CPU. Where
torch runs its per-tensor loop anyway — plain CPU float32/float64 tensors with dense gradients,
``foreach``, ``fused``, ``capturable`` and ``differentiable`` off, a float ``lr`` (and betas),
no closure — paramwise's step hooks run that update themselves (:mod:`paramwise.step.fused._eager`), with
torch's operations in torch's order (``_single_tensor_adam``, ``_sgd``, ``_rmsprop``,
``_adagrad``), on chunks that stay in cache: per chunk the gradient terms and
``decoupled_decay``, the update, the proximal map (the adaptive ones with the update's own
denominator) and the ``max_norm`` projection (unless group lasso cuts the chunks along another
dim). Moments, momentum buffers and step counts are bit-for-bit what an eager ``step()``
gives, and so are the weights where no map follows (tested). Before an adaptive proximal map
the update's last operation :math:`w ← w - a\,u/d` is folded into the map instead (a pass less
per chunk, see :func:`update_`): the weights are then torch's step followed by the map, up to
rounding (tested, with the same exact zeros). The state is torch's own, so ``state_dict()``
and schedulers see nothing different. The pre-hook sets these parameters' gradients aside (so
``step()`` skips them); the post-hook puts them back and runs the fused update, so a step that
raises in between applies nothing to them. Under ``torch.compile`` the updates are traced whole
(:mod:`paramwise.step.fused._traced`), step counts kept tensors, so inductor puts the update and the
proximal map in one kernel (group lasso and max-norm stay with the hooks there: inductor 2.13
fails on row norms and the update in one graph). All this only on the torch releases whose
steps the updates were checked against (:data:`TESTED_TORCH`); on any other torch every group
keeps torch's own ``step()`` and the hooks.

Adam per element, with :math:`t` the step count, :math:`λ_w` the group's ``weight_decay``
(the others: :func:`sgd_update_`, :func:`rmsprop_update_`, :func:`adagrad_update_`):

.. math::
    g &← -g \text{ (maximize)}, \quad g ← g + λ_w w \text{ (Adam)} \text{ or }
        w ← (1 - \mathrm{lr}\,λ_w) w \text{ (AdamW)} \\
    m &← m + (1-β_1)(g - m), \quad v ← β_2 v + (1-β_2) g^2
        \quad (\text{amsgrad: } \hat v ← \max(\hat v, v)) \\
    d &= \sqrt{\hat v}/\sqrt{1-β_2^t} + ε \quad (\hat v = v \text{ without amsgrad}), \quad
    w ← w - \frac{\mathrm{lr}}{1-β_1^t}\,\frac{m}{d},
    \quad w ← \operatorname{prox}(w;\ s = \mathrm{lr}/d)

Example (what :func:`paramwise.attach` does under the hood)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.randn(8, 4)); w.grad = torch.randn(8, 4)
    >>> opt = torch.optim.Adam([{"params": [w], "l1": 1e-3}], lr=1e-2)
    >>> fusable(opt, opt.param_groups[0], [w], closure=False)
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from .._chunks import is_dtensor
from ._eager import adagrad_update_, adam_update_, rmsprop_update_, sgd_update_
from .callbacks import Apply, Before

__all__ = ["fusable", "update_", "TESTED_TORCH", "TORCH_TESTED", "torch_tested", "adam_update_",
           "sgd_update_", "rmsprop_update_", "adagrad_update_", "ADAM_KEYS", "SGD_KEYS",
           "RMSPROP_KEYS", "ADAGRAD_KEYS"]

#: The torch release lines (major, minor) whose ``Adam``/``AdamW``/``SGD``/``RMSprop``/
#: ``Adagrad`` steps the updates here were checked against, operation for operation
#: (``tests/test_fused.py``, bit for bit, run on 2.13.0 and 2.14.1). A newer torch may reorder
#: its step, so on any other version (:data:`TORCH_TESTED` false) nothing runs fused.
TESTED_TORCH = frozenset({(2, 13), (2, 14)})

_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\+[0-9A-Za-z.]+)?")


def torch_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the running torch's ``torch.__version__``) is a final
    release of a :data:`TESTED_TORCH` line, with or without a local build tag. Nightlies,
    ``a0`` source builds, release candidates and other lines are not::

        >>> torch_tested("2.13.0+cpu"), torch_tested("2.14.1")
        (True, True)
        >>> torch_tested("2.15.0"), torch_tested("2.14.0a0+gitabc1234"), torch_tested("2.12.1")
        (False, False, False)
    """
    m = _RELEASE.fullmatch(str(torch.__version__ if version is None else version))
    return m is not None and (int(m[1]), int(m[2])) in TESTED_TORCH


#: Whether the running torch is a tested release (read once, at import; :func:`fusable`
#: answers False everywhere when it is not).
TORCH_TESTED = torch_tested()

#: The group keys ``torch.optim.Adam`` 2.x uses; a group with any other optimizer key (a newer
#: torch's new option) is left to ``Adam.step``.
ADAM_KEYS = frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach",
                       "capturable", "differentiable", "fused", "decoupled_weight_decay"})
#: The same for ``torch.optim.SGD``.
SGD_KEYS = frozenset({"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                      "foreach", "differentiable", "fused"})
#: ... ``torch.optim.RMSprop``; ``torch.optim.Adagrad``.
RMSPROP_KEYS = frozenset({"lr", "alpha", "eps", "weight_decay", "momentum", "centered",
                          "capturable", "foreach", "maximize", "differentiable"})
ADAGRAD_KEYS = frozenset({"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                          "foreach", "maximize", "differentiable", "fused"})
_KEYS = {torch.optim.Adam: ADAM_KEYS, torch.optim.AdamW: ADAM_KEYS, torch.optim.SGD: SGD_KEYS,
         torch.optim.RMSprop: RMSPROP_KEYS, torch.optim.Adagrad: ADAGRAD_KEYS}

_DTYPES = (torch.float32, torch.float64)


def fusable(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor], *,
            closure: bool) -> bool:
    """Whether :func:`update_` may run ``group``'s update for
    ``params`` instead of ``opt.step``: exactly ``Adam``, ``AdamW``, ``SGD``, ``RMSprop`` or
    ``Adagrad`` (with its state, which it creates when built) taking torch's per-tensor path,
    plain CPU float32 or float64 tensors with dense gradients like them (a parameter without a
    gradient yet is judged by itself), no closure (it would recompute the gradients inside the
    step), and only on a tested torch release (:data:`TORCH_TESTED`)."""
    keys = _KEYS.get(type(opt))
    if not TORCH_TESTED or keys is None or closure or not keys.issuperset(opt.defaults):
        return False
    if type(opt) is torch.optim.Adagrad and not all("sum" in opt.state.get(p, ()) for p in params):
        return False
    # (a compiled step sets ``capturable``: its step counts stay tensors, as the traced update's)
    flags = ("foreach", "fused", "differentiable") + (
        () if torch.compiler.is_compiling() else ("capturable",))
    if any(group.get(k) for k in flags):
        return False
    if isinstance(group["lr"], Tensor) or any(isinstance(b, Tensor)
                                              for b in group.get("betas", ())):
        return False
    return all(_plain_cpu(p) and (p.grad is None or (
        p.grad.dtype == p.dtype and p.grad.layout == torch.strided and not p.grad.is_sparse
        and p.grad.shape == p.shape)) for p in params)


def _plain_cpu(p: Tensor) -> bool:
    return p.device.type == "cpu" and p.dtype in _DTYPES and not is_dtensor(p)


def update_(opt: torch.optim.Optimizer, group: dict, params: Sequence[Tensor],
            dims: Sequence[int], apply: Apply, before: Before | None = None, *,
            defer: bool = False) -> None:
    r"""The update of ``opt``'s class (:func:`adam_update_`, :func:`sgd_update_`,
    :func:`rmsprop_update_` or :func:`adagrad_update_`) for ``params``, all
    :func:`fusable`.
    ``defer``: leave the last operation to ``apply`` where the update ends in
    :math:`w ← w - a\,u/d` with :math:`a > 0` (Adam, AdamW, Adagrad, RMSprop without
    momentum; eager and traced); ``apply`` then gets a tail ``(u, a)`` and :math:`\tilde d =
    -d/a` per piece, and must finish the update. The updates live in :mod:`paramwise.step.fused._eager`
    (and, while ``torch.compile`` traces, :mod:`paramwise.step.fused._traced`)."""
    _UPDATES[type(opt)](opt, group, params, dims, apply, before, defer=defer)


_UPDATES = {torch.optim.Adam: adam_update_, torch.optim.AdamW: adam_update_,
            torch.optim.SGD: sgd_update_, torch.optim.RMSprop: rmsprop_update_,
            torch.optim.Adagrad: adagrad_update_}
