r"""Lowering: move regularization options into the optimizer's own, fused equivalent.

Before the optimizer is built, :func:`lower` rewrites each param group so that what the optimizer
can do itself runs inside its (foreach / fused) ``step()`` at no extra cost; the step hooks of
:mod:`paramwise.step.hooks` skip whatever a group's ``"paramwise_lowered"`` lists, and
``report``/``explain`` show it. Both forms compute the same update (equal up to rounding, since
``(wd + λ)·w`` and ``wd·w + λ·w`` round differently)::

    >>> import torch
    >>> g = lower([{"params": [], "decoupled_decay": 0.1}], torch.optim.Adam)[0]
    >>> g["weight_decay"], g["decoupled_weight_decay"], g["paramwise_lowered"]
    (0.1, True, ('decoupled_decay->weight_decay+decoupled_weight_decay',))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..options.keys import optimizer_defaults
from ._chunks import as_float as _num

__all__ = ["lower", "LOWERED_KEY"]

#: Group key listing what :func:`lower` moved into the optimizer's own options.
LOWERED_KEY = "paramwise_lowered"


_COUPLED = {torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad,
            torch.optim.Adadelta, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
            torch.optim.ASGD}
_FLAG = {torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam}  # decoupled_weight_decay=
_DECOUPLED = {torch.optim.AdamW}


def _strength(v: Any) -> float:
    try:
        x = _num(v)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) and x > 0 else 0.0


def lower(groups: list[dict], optim_cls: type, defaults: Mapping[str, Any] | None = None
          ) -> list[dict]:
    """Copies of ``groups`` with options moved into ``optim_cls``'s native equivalent.

    * coupled ``l2=λ`` → ``weight_decay += λ`` for SGD, Adam (not decoupled), RMSprop, Adagrad,
      Adadelta, Adamax, NAdam, RAdam, ASGD — not when ``l2`` is folded into a proximal map
      (``l1`` / ``group_lasso`` with ``prox``), nor for AdamW (its decay is decoupled);
    * ``decoupled_decay=λ`` → AdamW's ``weight_decay += λ`` (also Adam/NAdam/RAdam already
      ``decoupled_weight_decay=True``), or ``weight_decay=λ, decoupled_weight_decay=True`` for
      Adam/NAdam/RAdam whose group has no weight decay yet.

    The existing weight decay is the group's, else ``defaults`` (the constructor keywords you will
    pass), else the constructor's default (AdamW: 0.01). What was moved is listed in the group's
    ``"paramwise_lowered"`` (e.g. ``("l2->weight_decay",)``); the original keys stay, for
    ``report``/``explain``. Other optimizer classes (subclasses included) are left alone.

        >>> lower([{"params": [], "l2": 1e-4}], torch.optim.SGD)[0]["weight_decay"]
        0.0001
    """
    base = {**optimizer_defaults(optim_cls), **(defaults or {})}
    out = []
    for group in groups:
        g = dict(group)
        done = list(g.get(LOWERED_KEY, ()))
        wd = _strength(g.get("weight_decay", base.get("weight_decay", 0.0)))
        if optim_cls in _FLAG:
            flag = bool(g.get("decoupled_weight_decay", base.get("decoupled_weight_decay", False)))
        else:
            flag = optim_cls in _DECOUPLED
        l2 = _strength(g.get("l2"))
        folded = g.get("prox", True) is not False and (g.get("l1") is not None
                                                       or g.get("group_lasso") is not None)
        if (l2 and not folded and optim_cls in _COUPLED and not flag
                and not any(d.startswith("l2->") for d in done)):
            wd += l2
            g["weight_decay"] = wd
            done.append("l2->weight_decay")
        dd = _strength(g.get("decoupled_decay"))
        if dd and not any(d.startswith("decoupled_decay->") for d in done):
            if flag:
                g["weight_decay"] = wd + dd
                done.append("decoupled_decay->weight_decay")
            elif optim_cls in _FLAG and wd == 0:
                g["weight_decay"] = dd
                g["decoupled_weight_decay"] = True
                done.append("decoupled_decay->weight_decay+decoupled_weight_decay")
        if done:
            g[LOWERED_KEY] = tuple(done)
        out.append(g)
    return out
