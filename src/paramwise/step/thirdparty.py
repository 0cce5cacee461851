r"""Step scales of the optimizers users bring: pytorch-optimizer 4.x, lion-pytorch, schedulefree
1.4 and heavyball 3.2, looked up by ``"module:qualname"`` the first time :mod:`paramwise.step.prox`
meets a class it has no rule for. Nothing here imports those packages: a class is only ever
matched by name, so there is no import cost and no dependency.

Each formula is the update's coefficient on the gradient :math:`g` once the momentum buffers
have caught up with it (:math:`m = g`), read from the package's own update code and checked
against its real steps (``tests/test_thirdparty.py``); :math:`t` is the step count after the
step, :math:`b_i = 1-β_i^t`, :math:`\mathrm{clip}(v,ε) = \max(\sqrt{v}, ε)`:

===================== =======================================================================
Lion (pytorch-        :math:`s = \mathrm{lr}/|c|` with :math:`c = β_1 m_{t-1} + (1-β_1)g` the
optimizer, lion-      vector whose sign is the step (:math:`m_{t-1}` recovered from
pytorch)              :math:`m_t = β_2 m_{t-1} + (1-β_2)g`): the step is exactly :math:`s·c`.
                      See *Sign-based updates* below
Lamb                  :math:`s = \mathrm{lr}\,ρ\,a/(\sqrt v + ε)`, :math:`ρ` its trust ratio
                      (``state['trust_ratio']``, 1 with ``adam=True``), :math:`a = 1` with
                      ``grad_averaging`` else :math:`1/(1-β_1)`; its :math:`v` is not debiased
Adan                  :math:`s = \mathrm{lr}/(\sqrt{v/b_3} + ε)` (:math:`β_3` = ``betas[2]``;
                      the gradient-difference term vanishes at a constant gradient)
AdaBelief             :math:`s = \mathrm{lr}/(\sqrt{v/b_2} + ε)`, :math:`v` its
                      ``exp_avg_var`` (``max_exp_avg_var`` with ``ams_bound``);
                      :math:`\mathrm{lr}\,b_1/…` with ``adam_debias``
ADOPT (both packages) :math:`s = \mathrm{lr}/\mathrm{clip}(v, ε)`; 0 on its first step (which
                      only records :math:`v`)
Prodigy               :math:`s = \mathrm{lr}\,d^2/(k(\sqrt v + dε))`, :math:`d` its current
                      distance estimate, :math:`k = b_1/\sqrt{b_2}` (step :math:`t-1`) with
                      ``bias_correction`` else 1
SophiaH               :math:`s = \mathrm{lr}/\max(h, ε)` (:math:`h` its Hessian moment; where its
                      clip :math:`±ρ` binds the step is sign-like)
heavyball AdamW,      :math:`s = \mathrm{lr}/\mathrm{clip}(v, ε)` (heavyball debiases its betas,
LaProp, RMSprop       so :math:`v` is already unbiased)
heavyball SGD         :math:`s = \mathrm{lr}/(1-β)` (heavy-ball momentum :math:`m ← βm + g`)
schedule-free         the scale of the :math:`z` step (:mod:`paramwise.step.schedfree`):
                      SGD :math:`γ_t`; AdamW :math:`γ_t/(\sqrt{v/b_2}+ε)`; RAdam the same times
                      its rectification (:math:`γ_t` once :math:`ρ_t ≤ 4`)
===================== =======================================================================

**Refused** (:func:`lookup` returns why and what to use; subclasses too): SOAP, Shampoo,
Muon, AdaMuon, Scion, PSGD, the heavyball SOAP/PSGD/Muon/Shampoo families — preconditioned or
orthogonalized updates with no per-element step (the proximal fixed points would not be the
lasso's); MADGRAD — dual averaging recomputes the weights from :math:`x_0` and the gradient sum,
which does not remember a proximal step. :func:`check` refuses options a rule does not cover
(Lamb/AdaBelief ``rectify``, Prodigy ``eps=None``, ADOPT ``stable_adamw``).

**Sign-based updates.** Lion moves every weight by :math:`\mathrm{lr}` per step whatever
:math:`|g|` is. With the plain threshold :math:`\mathrm{lr}·λ` (``prox_scale='lr'``) a zero
weight stays zero only if :math:`λ ≥ 1`, and a nonzero one can only stop where
:math:`\operatorname{sign}(c) = -λ\operatorname{sign}(w)`, impossible for :math:`λ < 1`: with a
constant lr the weights keep oscillating by :math:`\mathrm{lr}` around the unregularized
solution and zeros are transient; they never converge to the lasso point. With
:math:`s = \mathrm{lr}/|c|` a zero weight stays zero iff :math:`|c| ≤ λ` and a nonzero one is at
rest iff :math:`c = -λ\operatorname{sign}(w)` — the lasso's conditions — and near such a point
the combined step is :math:`-\mathrm{lr}(1 - λ/|c|)\operatorname{sign}(w)`, a contraction; what
is tested is that the zeros are the lasso's and every coefficient ends within a few
:math:`\mathrm{lr}` of it. Example::

    >>> import torch
    >>> class Lion(torch.optim.Optimizer): ...
    >>> Lion.__module__ = "lion_pytorch.lion_pytorch"
    >>> lookup(Lion).__name__
    'lion'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamwiseError
from ._chunks import Piece
from ._chunks import as_float as _num

__all__ = ["lookup", "key", "check", "RULES", "REFUSED", "SCHEDULE_FREE", "GRAPH_READERS"]


def key(cls: type) -> str:
    """``"module:qualname"`` of ``cls``, the registry's key."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _t(group: Mapping[str, Any], st: Mapping[str, Any]) -> float:
    """The step count after the step: pytorch-optimizer keeps it in the group."""
    if "step" in group:
        return _num(group["step"])
    return _num(st["step"]) if "step" in st else 1.0


def _out(ds: list[Tensor], ks: list[Any]) -> list[Tensor]:
    for d, k in zip(ds, ks):
        d.reciprocal_().mul_(k)
    return ds


def _grad(pc: Piece) -> Tensor:
    g = pc.param.grad
    return pc.view(g) if g is not None else torch.zeros_like(pc.view(pc.param))


def lion(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> list[Tensor]:
    b1, b2 = (_num(b) for b in group["betas"][:2])
    out = []
    for pc in pieces:
        g, m = _grad(pc), pc.view(state[pc.param]["exp_avg"])
        prev = (m - (1 - b2) * g).div_(b2) if b2 > 0 else m.clone()
        c = prev.mul_(b1).add_(g, alpha=1 - b1).abs_()
        out.append(c.clamp_(min=torch.finfo(c.dtype).tiny).reciprocal_().mul_(lr))
    return out


def lamb(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> list[Tensor]:
    b1 = _num(group["betas"][0])
    a = 1.0 if group.get("grad_averaging", True) else 1 / (1 - b1)
    eps = _num(group["eps"])
    ks = [lr * a * (1.0 if group.get("adam") else _num(state[pc.param].get("trust_ratio", 1.0)))
          for pc in pieces]
    return _out([pc.view(state[pc.param]["exp_avg_sq"]).sqrt().add_(eps) for pc in pieces], ks)


def adan(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
         *, foreach: bool) -> list[Tensor]:
    b3, eps = _num(group["betas"][2]), _num(group["eps"])
    out = []
    for pc in pieces:
        bc = (1 - b3 ** _t(group, state[pc.param])) ** 0.5
        out.append(pc.view(state[pc.param]["exp_avg_sq"]).sqrt().div_(bc).add_(eps))
    return _out(out, [lr] * len(out))


def adabelief(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              *, foreach: bool) -> list[Tensor]:
    b1, b2 = (_num(b) for b in group["betas"])
    key_ = "max_exp_avg_var" if group.get("ams_bound") else "exp_avg_var"
    out, ks = [], []
    for pc in pieces:
        t = _t(group, state[pc.param])
        out.append(pc.view(state[pc.param][key_]).sqrt().div_((1 - b2 ** t) ** 0.5)
                   .add_(_num(group["eps"])))
        ks.append(lr * (1 - b1 ** t) if group.get("adam_debias") else lr)
    return _out(out, ks)


def adopt(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
          *, foreach: bool) -> float | list[Tensor]:
    if pieces and _t(group, state[pieces[0].param]) <= 1:
        return 0.0                      # the first step only records v
    eps = _num(group["eps"])
    return _out([pc.view(state[pc.param]["exp_avg_sq"]).sqrt().clamp_(min=eps) for pc in pieces],
                [lr] * len(pieces))


def prodigy(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
            *, foreach: bool) -> list[Tensor]:
    d, eps = _num(group["d"]), _num(group["eps"])
    k = 1.0
    if group.get("bias_correction"):
        b1, b2 = (_num(b) for b in group["betas"])
        t = _num(group["step"]) - 1
        k = (1 - b1 ** t) / (1 - b2 ** t) ** 0.5
    return _out([pc.view(state[pc.param]["exp_avg_sq"]).sqrt().add_(d * eps) for pc in pieces],
                [lr * d * d / k] * len(pieces))


def sophia(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
           *, foreach: bool) -> list[Tensor]:
    eps = _num(group["eps"])
    return _out([pc.view(state[pc.param]["hessian_moment"]).clamp(min=eps) for pc in pieces],
                [lr] * len(pieces))


def _heavy(name: str) -> Any:
    def rule(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             *, foreach: bool) -> list[Tensor]:
        eps = _num(group["eps"])
        return _out([pc.view(state[pc.param][0][name]).to(pc.param.dtype).clamp_min(0).sqrt()
                     .clamp_(min=eps)
                     for pc in pieces], [lr] * len(pieces))
    rule.__name__ = f"heavyball_{name.split('_exp_avg_sq')[0]}"
    return rule


def heavy_sgd(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
              *, foreach: bool) -> float:
    return lr / (1 - _num(group["beta"]))


# -- schedule-free: the scale of the z step (paramwise.step.schedfree applies the maps there) --------

def _sf_lr(group: Mapping[str, Any], lr: float) -> float:
    """``lr`` times the warmup factor the last step used (``scheduled_lr / lr``)."""
    if "scheduled_lr" in group:                                         # schedulefree
        base = _num(group["lr"])
        return lr * _num(group["scheduled_lr"]) / base if base else 0.0
    t, warm = _num(group["step"]), _num(group.get("warmup_steps", 0))   # pytorch-optimizer
    return lr * (t / warm if t < warm else 1.0)


def sf_sgd(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
           *, foreach: bool) -> float:
    return _sf_lr(group, lr)


def _sf_adam(group: Mapping[str, Any], k: float, pieces: Sequence[Piece], state: Mapping,
             t: float, tiny: float = 0.0) -> list[Tensor]:
    b2, eps = _num(group["betas"][1]), _num(group["eps"])
    key_ = "max_exp_avg_sq" if group.get("ams_bound") else "exp_avg_sq"
    return _out([pc.view(state[pc.param][key_]).div(1 - b2 ** t).add_(tiny).sqrt_().add_(eps)
                 for pc in pieces], [k] * len(pieces))


def sf_adamw(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             *, foreach: bool) -> list[Tensor]:
    if "k" in group:                                    # schedulefree
        return _sf_adam(group, _sf_lr(group, lr), pieces, state, _num(group["k"]))
    # pytorch-optimizer adds 1e-15 under the root (apply_ams_bound)
    return _sf_adam(group, _sf_lr(group, lr), pieces, state, _num(group["step"]), 1e-15)


def sf_radam(group: Mapping[str, Any], lr: float, pieces: Sequence[Piece], state: Mapping,
             *, foreach: bool) -> float | list[Tensor]:
    t = _num(group["k"]) if "k" in group else _num(group["step"])
    b2 = _num(group["betas"][1])
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho <= 4.0:         # its SGD phase, z ← z - γ g: γ = 0 with silent_sgd_phase, else
        if group.get("silent_sgd_phase", True):     # lr (schedulefree) or 1.0 (pytorch-
            return 0.0                              # optimizer's code), per unit of lr here
        return lr if "k" in group else lr / _num(group["lr"])
    r = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
    return _sf_adam(group, lr * r, pieces, state, t)     # γ = lr·r on g/(√(v/(1-β₂^t)) + ε)


_PO = "pytorch_optimizer.optimizer."
_SF = "schedulefree."
#: "module:qualname" -> rule, for exactly that class.
RULES: dict[str, Any] = {
    _PO + "lion:Lion": lion, "lion_pytorch.lion_pytorch:Lion": lion,
    _PO + "lamb:Lamb": lamb, _PO + "adan:Adan": adan, _PO + "adabelief:AdaBelief": adabelief,
    _PO + "adopt:ADOPT": adopt, _PO + "prodigy:Prodigy": prodigy,
    _PO + "sophia:SophiaH": sophia,
    "heavyball:AdamW": _heavy("update_by_adam_exp_avg_sq_0"),
    "heavyball:LaProp": _heavy("update_by_laprop_exp_avg_sq_0"),
    "heavyball:RMSprop": _heavy("scale_by_exp_avg_sq_exp_avg_sq_0"),
    "heavyball:ADOPT": _heavy("update_by_adopt_exp_avg_sq_0"),
    "heavyball:SGD": heavy_sgd,
    _SF + "sgd_schedulefree:SGDScheduleFree": sf_sgd,
    _SF + "adamw_schedulefree:AdamWScheduleFree": sf_adamw,
    _SF + "radam_schedulefree:RAdamScheduleFree": sf_radam,
    _PO + "schedulefree:ScheduleFreeSGD": sf_sgd,
    _PO + "schedulefree:ScheduleFreeAdamW": sf_adamw,
    _PO + "schedulefree:ScheduleFreeRAdam": sf_radam,
}
#: the schedule-free classes whose x/y/z :mod:`paramwise.step.schedfree` maps (all with ``state['z']``).
SCHEDULE_FREE = frozenset(k for k, r in RULES.items() if r in (sf_sgd, sf_adamw, sf_radam))

_ROT = ("its update is preconditioned or orthogonalized as a whole (a non-diagonal map of the "
        "gradient), so no per-element step per unit of gradient exists and a proximal map "
        "after it would not have the lasso's fixed points")
_ROT_FIX = ("set prox=False (the penalty's subgradient is preconditioned like the loss: the "
            "right fixed points, no exact zeros), or send these parameters to an optimizer with "
            "a step scale (a rule with optimizer='adamw'), or prox_scale='lr' (threshold lr·λ, "
            "a heuristic)")
#: "module:qualname" -> (why, fix); matched against every class in the MRO.
REFUSED: dict[str, tuple[str, str]] = {
    **{k: (_ROT, _ROT_FIX) for k in (
        _PO + "soap:SOAP", _PO + "shampoo:Shampoo", _PO + "shampoo:ScalableShampoo",
        _PO + "muon.muon:Muon", _PO + "muon.adamuon:AdaMuon", _PO + "scion:SCION",
        "heavyball:SOAPBase", "heavyball:PSGDBase", "heavyball:Muon", "heavyball:MuonAdamW",
        "heavyball:MuonLaProp", "heavyball:Scion", "heavyball:OrthoLaProp",
        "heavyball:LaPropOrtho")},
    _PO + "madgrad:MADGRAD": (
        "it is dual averaging: each step recomputes the weights from x0 and the running sum of "
        "gradients (z = x0 - s/∛Σλg²), which does not remember a proximal step, so the maps "
        "would not converge to the regularized problem",
        "set prox=False (the penalty's subgradient enters MADGRAD's gradient sum, so it "
        "minimizes the regularized loss, without exact zeros), or prox_scale='lr' (a heuristic), "
        "or use an optimizer with a step scale (Adam, SGD, ...) for these parameters"),
}
#: Optimizers whose step() reads the autograd graph of the gradients (Hessian-vector
#: products): paramwise changes none of their parameters in place before the step.
GRAPH_READERS = frozenset({_PO + "sophia:SophiaH", _PO + "adahessian:AdaHessian"})


def lookup(cls: type) -> Any:
    """The rule for exactly ``cls``, else ``(why, fix)`` if ``cls`` or a base is refused,
    else None (then :func:`paramwise.step.prox.generic` applies)."""
    rule = RULES.get(key(cls))
    if rule is not None:
        return rule
    for base in cls.__mro__:
        hit = REFUSED.get(key(base))
        if hit is not None:
            return hit
    return None


#: (class key, group option, value that is refused, why): options a rule does not cover.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    (_PO + "lamb:Lamb", "rectify", True, "Lamb's rectified (RAdam-like) step"),
    (_PO + "adabelief:AdaBelief", "rectify", True, "AdaBelief's rectified step"),
    (_PO + "prodigy:Prodigy", "eps", None, "Prodigy's atan2 update (eps=None), which is "
     "sign-like"),
    (_PO + "adopt:ADOPT", "stable_adamw", True, "ADOPT's stable_adamw rescaling"),
]


def check(opt: torch.optim.Optimizer, index: int, group: Mapping[str, Any], label: str,
          adaptive_prox: bool, more: str) -> None:
    """Raise :class:`~paramwise.errors.ParamwiseError` for a group whose options the class's rule
    does not cover, when ``adaptive_prox`` (an adaptive proximal map runs in the group)."""
    k = key(type(opt))
    for cls_key, option, bad, what in _OPTIONS:
        if adaptive_prox and k == cls_key and group.get(option, not bad) == bad:
            raise ParamwiseError(
                f"{label}: prox_scale='adaptive' has no rule for {what} ({option}={bad!r})",
                fix=f"set {option} to its default, or prox_scale='lr' (threshold lr·λ), or "
                    f"prox=False" + more)
