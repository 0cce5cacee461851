r"""The denominator forms :math:`s = k/d` of the adaptive optimizers' step scales (Adam, AdamW,
NAdam, RAdam, Adamax, RMSprop, Adagrad): one number :math:`k` per piece and :math:`d` written
into a buffer the caller owns, so a proximal map can work in the scaled variable :math:`w·d`
(one read of the state, one read-modify-write of the weights; see
:func:`paramwise.step.regularizers.prox_l1_scaled_`). Each returns the :math:`k`'s, or None where
this step has no such form (:math:`ε = 0`; RAdam's SGD-like phase); :mod:`paramwise.step.prox`
registers them. The scales themselves are in :mod:`paramwise.step.scales`::

    >>> import torch
    >>> from paramwise.step._chunks import Piece
    >>> from paramwise.step.scales import adam
    >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([1.0, -4.0])
    >>> opt = torch.optim.Adam([w], lr=0.1); opt.step()
    >>> d = torch.empty(2)
    >>> k = adam_den(opt.param_groups[0], 0.1, [Piece(w)], opt.state, [d])
    >>> s = k[0] / d
    >>> torch.allclose(s, adam(opt.param_groups[0], 0.1, [Piece(w)], opt.state, foreach=False)[0])
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._chunks import Piece
from ._chunks import as_float as _num
from .scales import _nadam_coef, _radam_rect, decayed_lr, momentum_scale

__all__ = ["adam_den", "nadam_den", "radam_den", "adamax_den", "rmsprop_den", "adagrad_den"]


def adam_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             out: Sequence[Tensor]) -> list[float] | None:
    # s = lr/(sqrt(v)/b + eps) = (lr·b)/(sqrt(v) + eps·b): k = lr·b, d = sqrt(v) + eps·b
    beta2 = _num(group["betas"][1])
    eps = _num(group["eps"])
    key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
    ks = []
    for pc, d in zip(pieces, out):
        b = (1 - beta2 ** _num(state[pc.param]["step"])) ** 0.5
        if not eps * b > 0:
            return None
        torch.sqrt(pc.view(state[pc.param][key]), out=d).add_(eps * b)
        ks.append(lr * b)
    return ks


def nadam_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              out: Sequence[Tensor]) -> list[float] | None:
    # k = lr·c_t·b, d = sqrt(v) + eps·b (c_t: the momentum-decay coefficient, → 1)
    beta2, eps = _num(group["betas"][1]), _num(group["eps"])
    ks = []
    for pc, d in zip(pieces, out):
        st = state[pc.param]
        b = (1 - beta2 ** _num(st["step"])) ** 0.5
        if not eps * b > 0:
            return None
        torch.sqrt(pc.view(st["exp_avg_sq"]), out=d).add_(eps * b)
        ks.append(lr * b * float(_nadam_coef(group, st)))
    return ks


def radam_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              out: Sequence[Tensor]) -> list[float] | None:
    # ρ_t > 5: k = lr·r_t·b, d = sqrt(v) + eps; the SGD-like phase has no d (None)
    beta2, eps = _num(group["betas"][1]), _num(group["eps"])
    if not eps > 0:
        return None
    ks = []
    for pc, d in zip(pieces, out):
        t = _num(state[pc.param]["step"])
        r = _radam_rect(beta2, t)
        if not r > 0:
            return None
        torch.sqrt(pc.view(state[pc.param]["exp_avg_sq"]), out=d).add_(eps)
        ks.append(lr * r * (1 - beta2 ** t) ** 0.5)
    return ks


def adamax_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
               out: Sequence[Tensor]) -> list[float] | None:
    # k = lr, d = u ≥ ε
    if not _num(group["eps"]) > 0:
        return None
    for pc, d in zip(pieces, out):
        d.copy_(pc.view(state[pc.param]["exp_inf"]))
    return [lr] * len(out)


def rmsprop_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                out: Sequence[Tensor]) -> list[float] | None:
    eps = _num(group["eps"])
    if not eps > 0:
        return None
    centered = group.get("centered", False)
    for pc, d in zip(pieces, out):
        sq = pc.view(state[pc.param]["square_avg"])
        if centered:
            ga = pc.view(state[pc.param]["grad_avg"])
            torch.addcmul(sq, ga, ga, value=-1, out=d).sqrt_()
        else:
            torch.sqrt(sq, out=d)
        d.add_(eps)
    mu = _num(group.get("momentum", 0.0))
    return [momentum_scale(lr, mu)] * len(out)


def adagrad_den(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
                out: Sequence[Tensor]) -> list[float] | None:
    eps = _num(group["eps"])
    if not eps > 0:
        return None
    decay = _num(group.get("lr_decay", 0.0))
    ks = []
    for pc, d in zip(pieces, out):
        torch.sqrt(pc.view(state[pc.param]["sum"]), out=d).add_(eps)
        ks.append(decayed_lr(lr, _num(state[pc.param]["step"]), decay))
    return ks
