r"""What the configured regularization amounts to: :func:`penalty` and :func:`stats`.

``penalty(optimizer)`` is the differentiable sum, over every param group, of

.. math:: \tfrac{λ_2}{2}\|w\|^2 + λ_1\|w\|_1 + λ_g\sum_r\sqrt{m}\,\|w_r\| + \tfrac{λ_0}{2}\|w - w_0\|^2

(``l2``, ``l1``, ``group_lasso``, ``l2_to_init``; lowered ``l2`` included). Its gradient is what
the subgradient forms add, so ``loss + penalty(opt)`` without hooks trains the same objective.
``decoupled_decay`` has no penalty (it is not the gradient of one under adaptive optimizers) and
``max_norm`` is a constraint; neither is counted. ``stats(optimizer)`` reports, per group, that
value and what it did to the weights, with one device sync per group::

    >>> opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(4, 3))],
    ...                         "group_lasso": 0.1}], lr=0.1)
    >>> stats(opt)[0]["zero_rows"], stats(opt)[0]["zero_fraction"]
    (4, 1.0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import regularizers as R
from ._chunks import plain as _plain
from .hooks import handle_of

__all__ = ["penalty", "stats"]


def _group_penalty(group: dict[str, Any], anchors: dict[Tensor, Tensor] | None) -> Tensor | None:
    ps = list(group["params"])
    if not ps:
        return None

    def lam(k: str) -> float:
        return float(group[k]) if group.get(k) is not None else 0.0

    terms = []
    if lam("l2"):
        terms.append(R.l2_penalty(ps, lam("l2")))
    if lam("l1"):
        terms.append(R.l1_penalty(ps, lam("l1")))
    if lam("group_lasso"):
        d = int(group.get("group_dim", 0) or 0)
        terms.append(R.group_lasso_penalty(ps, lam("group_lasso"), [d % p.ndim for p in ps]))
    if lam("l2_to_init") and anchors is not None:
        have = [p for p in ps if p in anchors]
        terms.append(R.l2_to_init_penalty(have, [anchors[p] for p in have], lam("l2_to_init")))
    if not terms:
        return None
    return sum((_plain(t) for t in terms[1:]), _plain(terms[0]))


def penalty(optimizer: torch.optim.Optimizer) -> Tensor:
    """The differentiable total penalty of ``optimizer``'s regularization options (0-d tensor).

    On the first parameter's device and dtype; ``torch.zeros(())`` when nothing is configured.
    ``l2_to_init`` counts only when :func:`paramwise.hooks.attach` holds the anchors.

        >>> loss = criterion(model(x), y) + paramwise.penalty(opt)   # doctest: +SKIP
    """
    handle = handle_of(optimizer)
    anchors = handle.anchors if handle is not None else None
    total: Tensor | None = None
    for group in optimizer.param_groups:
        t = _group_penalty(group, anchors)
        if t is not None:
            total = t if total is None else total + t.to(total.device)
    return total if total is not None else torch.zeros(())


def stats(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, float | int]]:
    """Per param group (by index), what its regularization does; cheap enough to log often.

    Keys: ``penalty`` (that group's share of :func:`penalty`), ``numel``, ``zeros`` and
    ``zero_fraction`` (exact zeros), ``nonfinite`` (NaN/inf elements), ``norm`` (L2 norm of all
    the group's parameters); with ``group_lasso`` also ``rows`` and ``zero_rows`` (all-zero
    groups along ``group_dim``); with ``max_norm`` also ``max_row_norm``.

        >>> for i, s in stats(opt).items():               # doctest: +SKIP
        ...     log(f"group{i}/zero_fraction", s["zero_fraction"])
    """
    handle = handle_of(optimizer)
    anchors = handle.anchors if handle is not None else None
    out: dict[int, dict[str, float | int]] = {}
    with torch.no_grad():
        for i, group in enumerate(optimizer.param_groups):
            ps = [_plain(p.detach()) for p in group["params"]]
            if not ps:
                continue
            dev = ps[0].device
            pen = _group_penalty(group, anchors)
            vals: dict[str, Tensor] = {
                "penalty": pen.detach().float().to(dev) if pen is not None
                else torch.zeros((), device=dev),
                "zeros": sum((p == 0).sum().to(dev) for p in ps),
                "nonfinite": sum((~torch.isfinite(p)).sum().to(dev) for p in ps),
                "norm": torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.float()).to(dev) for p in ps])),
            }
            if group.get("group_lasso") is not None:
                d = int(group.get("group_dim", 0) or 0)
                norms = [R.group_norms(p, d % p.ndim) for p in ps if p.ndim >= 2]
                vals["rows"] = torch.tensor(sum(n.numel() for n in norms), device=dev)
                vals["zero_rows"] = sum(((n == 0).sum().to(dev) for n in norms),
                                        torch.zeros((), dtype=torch.long, device=dev))
            if group.get("max_norm") is not None:
                d = int(group.get("max_norm_dim", 0) or 0)
                vals["max_row_norm"] = torch.stack(
                    [R.group_norms(p, d % max(p.ndim, 1)).max().float().to(dev)
                     for p in ps if p.numel()]).max()
            keys = list(vals)
            nums = torch.stack([vals[k].double() for k in keys]).tolist()
            row: dict[str, float | int] = dict(zip(keys, nums))
            for k in ("zeros", "nonfinite", "rows", "zero_rows"):
                if k in row:
                    row[k] = int(row[k])
            row["numel"] = sum(p.numel() for p in ps)
            row["zero_fraction"] = row["zeros"] / row["numel"] if row["numel"] else 0.0
            out[i] = row
    return out
