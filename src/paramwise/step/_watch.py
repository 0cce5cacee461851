r"""One global step pre-hook for the optimizers paramwise did not attach to.

Installed once (``torch.optim.optimizer.register_optimizer_step_pre_hook``) when
:mod:`paramwise.step.hooks` is imported; it runs before every optimizer's ``step()``. An attached
optimizer returns at once (its own pre-hook checks it). Any other optimizer is surveyed once,
and again only when its number of param groups changes:

* a group that carries a regularizer (``l1``, ``group_lasso``, ... with something left to run
  after lowering) that no attached optimizer owns — groups from
  :func:`paramwise.param_groups` given to a torch optimizer without
  :func:`paramwise.attach` — gets **one warning per optimizer**: torch keeps the keys and
  does nothing with them, so the parameters are not regularized;
* a group that an attached optimizer owns (a composite optimizer such as
  :class:`paramwise.hybrid.Hybrid`, whose ``param_groups`` are its parts' own group dicts)
  makes the hook run those parts' pre-step checks (:meth:`paramwise.step.hooks.Handle.check`)
  before the composite steps any part, so a part that cannot step raises before another
  part moved.

Cost for an optimizer without such groups: two weak-dictionary lookups per step. Example::

    >>> import warnings
    >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
    >>> opt = torch.optim.SGD([{"params": [w], "l1": 0.1}], lr=0.1)   # no attach()
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     opt.step()
    >>> "attach" in str(seen[0].message)
    True
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..errors import ParamwiseError, user_stacklevel
from ..options.regularization import REG_KEYS
from ._stepcfg import StepCfg, group_label

__all__ = ["install", "quiet"]

_ATTACHED: Mapping[torch.optim.Optimizer, Any] = {}
_SEEN: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[int, list]] = (
    weakref.WeakKeyDictionary())
_WARNED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
_HOOK: list[Any] = []


def install(attached: Mapping[torch.optim.Optimizer, Any]) -> None:
    """Watch every optimizer's step; ``attached`` maps attached optimizers to their handles
    (objects with a ``check()`` method). Idempotent."""
    global _ATTACHED
    _ATTACHED = attached
    if not _HOOK:
        _HOOK.append(register_optimizer_step_pre_hook(_pre))


def quiet(opt: torch.optim.Optimizer) -> None:
    """No warning for ``opt`` (its hooks were removed on purpose)."""
    _WARNED.add(opt)


def _pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if torch.compiler.is_compiling() or opt in _ATTACHED:
        return
    n = len(opt.param_groups)
    seen = _SEEN.get(opt)
    if seen is None or seen[0] != n:
        seen = (n, _survey(opt))
        _SEEN[opt] = seen
    for ref in seen[1]:
        owner = ref()
        handle = _ATTACHED.get(owner) if owner is not None else None
        if handle is not None:
            handle.check()


def _active(i: int, group: dict) -> bool:
    if not REG_KEYS.intersection(group):
        return False
    try:
        cfg = StepCfg.read(i, group)
    except ParamwiseError:
        return True
    return cfg is not None and (cfg.pre or cfg.post)


def _survey(opt: torch.optim.Optimizer) -> list[weakref.ref]:
    """The attached owners of ``opt``'s regularized groups (weakly); warns (once per
    optimizer) about regularized groups no attached optimizer owns."""
    owners: list[torch.optim.Optimizer] = []
    lost: list[str] = []
    where: dict[int, torch.optim.Optimizer] | None = None
    for i, g in enumerate(opt.param_groups):
        if not _active(i, g):
            continue
        if where is None:
            where = {id(h): o for o in list(_ATTACHED.keys()) for h in o.param_groups}
        owner = where.get(id(g))
        if owner is None:
            keys = ", ".join(f"{k}={g[k]!r}" for k in sorted(REG_KEYS) if g.get(k) is not None)
            lost.append(f"{group_label(i, g)} sets {keys}")
        elif all(owner is not o for o in owners):
            owners.append(owner)
    if lost and opt not in _WARNED:
        _WARNED.add(opt)
        more = f" (and {len(lost) - 2} more groups)" if len(lost) > 2 else ""
        warnings.warn(
            f"paramwise: {'; '.join(lost[:2])}{more} of this {type(opt).__name__}, but "
            f"paramwise.attach() was not called on it: torch keeps these keys and ignores them, "
            f"so nothing regularizes these parameters. Call paramwise.attach(optimizer) once "
            f"after building it (paramwise.optimizer() does it for you), or remove the keys "
            f"(if your loss adds paramwise.penalty() itself, filter this warning)",
            UserWarning, stacklevel=user_stacklevel())
    return [weakref.ref(o) for o in owners]

