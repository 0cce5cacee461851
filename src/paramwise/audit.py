"""Audit: check an optimizer built anywhere (by hand, by HF Trainer, timm, Lightning, paramwise)
against its model, and say what it gets wrong, in the model's own parameter names.

``audit(model, optimizer)`` reads the optimizer's param groups once against the model's inventory
(canonical names, roles, tied aliases; see :mod:`paramwise.grouping.inventory`) and returns an
:class:`AuditReport` whose ``findings`` each have a ``kind`` (one of :data:`KINDS`), the canonical
``names`` concerned, a ``message``, a one-line ``fix`` and the paramwise ``rule`` (or call) that
fixes it. Nothing is changed. The tutorial optimizer decays its biases::

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> rep = audit(net, torch.optim.SGD(net.parameters(), lr=0.01, weight_decay=1e-5))
    >>> [(f.kind, f.names, f.rule) for f in rep.findings]
    [('decayed_bias', ('0.bias', '2.bias'), "paramwise.Rule('bias', weight_decay=0.0)")]
    >>> rep.findings[0].detail["form"]
    'coupled'

Decisions: a tensor with several roles is reported under the first of bias, norm, embedding,
gain (a LayerNorm bias is a bias); decay is only reported where it acts (a trainable tensor in a
group whose lr is above 0, or 0 at a scheduler's warm-up start: ``initial_lr`` above 0); group
keys holding strings (``name``, group labels) are labels, not options; keys torch's schedulers
write (``initial_lr``, ``max_lr``, ...) are read. ``scheduler=`` names what steps the lr: a timm
scheduler reads ``lr_scale``, torch's do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._auditfind import Finder
from ._auditscan import Finding, GroupView, owners, read_keys, unwrap_optimizer, unwrap_scheduler
from .errors import ParamwiseError, did_you_mean
from .grouping.inventory import Inventory
from .step.hooks import handle_of

__all__ = ["audit", "AuditReport", "Finding", "KINDS"]

#: The kinds of finding, in the order a report lists them, and what each means.
KINDS: dict[str, str] = {
    "decayed_bias": "biases that get weight decay (coupled or decoupled: detail['form'])",
    "decayed_norm": "norm-layer scales that get weight decay",
    "decayed_embedding": "embeddings (tables, learned positions and tokens) that get weight decay",
    "decayed_gain": "gains and layer scales that get weight decay",
    "unread_key": "a group option its optimizer never reads: a typo (with the closest real "
                  "key), or a framework's key (with what reads it)",
    "regularizer_not_attached": "paramwise regularizer options in groups of an optimizer "
                                "paramwise is not attached to: nothing applies them",
    "not_in_optimizer": "trainable parameters in no group: they never update",
    "frozen_in_optimizer": "requires_grad=False parameters in a group",
    "tied_split": "a tied tensor that appears more than once (under its aliases): stepped once "
                  "per appearance, with each group's options",
    "duplicate": "a tensor (not tied) that appears more than once in the groups",
    "not_in_model": "tensors in the optimizer that are no parameter of the model",
    "zero_lr": "groups whose lr is 0: their parameters never change, and weight decay there "
               "does nothing",
}


@dataclass
class AuditReport:
    """What :func:`paramwise.audit` found: ``findings`` (each with a ``kind``, the canonical
    ``names`` concerned, a ``message``, a one-line ``fix`` and the paramwise ``rule`` that fixes
    it), the optimizer's class name, its ``groups``, and the trainable ``tensors`` and
    ``elements`` of the model. ``str()`` is a short table with one note per finding;
    :meth:`to_dict` is plain data for logs and ``paramwise audit --json``; ``ok`` is True with no
    findings."""

    findings: list[Finding]
    optimizer: str
    groups: int
    tensors: int
    elements: int
    ignored: tuple[str, ...] = ()
    sample: int = 3

    @property
    def ok(self) -> bool:
        """True when there is nothing to report."""
        return not self.findings

    def kinds(self) -> dict[str, int]:
        """How many findings of each kind (kinds with none left out)."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def of(self, kind: str) -> list[Finding]:
        """The findings of one kind (a ParamwiseError for a kind that does not exist)."""
        _check_kinds([kind], "AuditReport.of()")
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the optimizer, counts per kind, and every finding as a dict."""
        return {"optimizer": self.optimizer, "groups": self.groups,
                "trainable": {"tensors": self.tensors, "elements": self.elements},
                "ok": self.ok, "counts": self.kinds(), "ignored": list(self.ignored),
                "findings": [f.to_dict() for f in self.findings]}

    def __str__(self) -> str:
        n = len(self.findings)
        head = (f"{self.optimizer}, {self.groups} group(s), {self.tensors} trainable tensor(s) "
                f"({self.elements:,} elements): "
                + (f"{n} finding(s)" if n else "no findings"))
        if self.ignored:
            head += f" (ignored: {', '.join(self.ignored)})"
        if not n:
            return head
        rows = [["#", "kind", "tensors", "elements", "share", "names"]]
        for i, f in enumerate(self.findings, 1):
            shown = ", ".join(f.names[: self.sample])
            if len(f.names) > self.sample:
                shown += f", ... (+{len(f.names) - self.sample})"
            rows.append([str(i), f.kind, str(len(f.names)), f"{f.elements:,}",
                         "-" if f.share is None else f"{f.share:.1%}", shown])
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        right = {0, 2, 3, 4}
        lines = [head] + ["  ".join(c.rjust(w) if j in right else c.ljust(w)
                                    for j, (c, w) in enumerate(zip(r, widths))).rstrip()
                          for r in rows]
        for i, f in enumerate(self.findings, 1):
            lines.append(f"[{i}] {f.message}")
            lines.append(f"    fix:  {f.fix}")
            if f.rule:
                lines.append(f"    rule: {f.rule}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def _check_kinds(kinds: Iterable[str], where: str) -> tuple[str, ...]:
    out = []
    for k in kinds:
        if k not in KINDS:
            raise ParamwiseError(f"{where} names unknown finding kind {k!r}"
                                 f"{did_you_mean(str(k), KINDS)}",
                                 fix=f"kinds are {', '.join(KINDS)}")
        out.append(k)
    return tuple(out)


def _schedulers(scheduler: Any, opt: torch.optim.Optimizer) -> list[Any]:
    if scheduler is None:
        return []
    scheds = list(scheduler) if isinstance(scheduler, (list, tuple)) else [scheduler]
    mine = {id(opt), *(id(o) for o in owners(opt))}
    out = []
    for s in scheds:
        s = unwrap_scheduler(s)
        target = getattr(s, "optimizer", None)
        if target is None:
            raise ParamwiseError(f"audit(scheduler=...) got a {type(s).__name__}, which has no "
                                 "optimizer", fix="pass the lr scheduler (or a list of them) "
                                 "that steps this optimizer, or leave scheduler out")
        target = unwrap_optimizer(target)
        if isinstance(target, torch.optim.Optimizer) and id(target) not in mine:
            raise ParamwiseError(f"audit(scheduler=...): the {type(s).__name__} drives another "
                                 f"optimizer ({type(target).__name__}), not the one audited",
                                 fix="pass the scheduler built on this optimizer")
        out.append(s)
    return out


def audit(model: nn.Module, optimizer: torch.optim.Optimizer, *, scheduler: Any = None,
          ignore: Iterable[str] = ()) -> AuditReport:
    """Check ``optimizer``'s param groups against ``model`` and say what they get wrong, in the
    model's own parameter names. Nothing is changed.

    ``optimizer`` is any ``torch.optim.Optimizer`` (paramwise's, a hybrid holding inner
    optimizers as ``optimizers``, one built by hand or by a framework; accelerate's and
    Lightning's wrappers are unwrapped). ``scheduler`` (one or a list) is what steps its lr, so
    that keys a scheduler reads (timm's ``lr_scale``) are not reported. ``ignore`` lists kinds
    to leave out, e.g. a deliberate choice in CI. Returns an :class:`paramwise.AuditReport`.
    The kinds of finding, in the order a report lists them:

    - ``decayed_bias``: biases that get weight decay (coupled or decoupled);
    - ``decayed_norm``: norm-layer scales that get weight decay;
    - ``decayed_embedding``: embeddings (tables, learned positions and tokens) that get weight
      decay;
    - ``decayed_gain``: gains and layer scales that get weight decay;
    - ``unread_key``: a group option its optimizer never reads (a typo, or a framework's key);
    - ``regularizer_not_attached``: paramwise regularizer options in groups of an optimizer
      paramwise is not attached to (nothing applies them);
    - ``not_in_optimizer``: trainable parameters in no group (they never update);
    - ``frozen_in_optimizer``: ``requires_grad=False`` parameters in a group;
    - ``tied_split``: a tied tensor that appears more than once, under its aliases;
    - ``duplicate``: a tensor (not tied) that appears more than once in the groups;
    - ``not_in_model``: tensors in the optimizer that are no parameter of the model;
    - ``zero_lr``: groups whose lr is 0 (their parameters never change).

    A tensor with several roles is reported under the first of bias, norm, embedding, gain;
    decay is reported only where it acts (a trainable tensor in a group whose lr, or
    ``initial_lr`` at a scheduler's warm-up start, is above 0).

        >>> import torch, paramwise
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> rep = paramwise.audit(net, torch.optim.SGD(net.parameters(), lr=0.01,
        ...                                            weight_decay=1e-5))
        >>> [(f.kind, f.names) for f in rep.findings]
        [('decayed_bias', ('0.bias', '2.bias'))]
        >>> rep.findings[0].rule
        "paramwise.Rule('bias', weight_decay=0.0)"
        >>> paramwise.audit(net, paramwise.optimizer(net, "adamw", [paramwise.no_decay()])).ok
        True
    """
    if isinstance(model, torch.optim.Optimizer) and isinstance(optimizer, nn.Module):
        raise ParamwiseError("audit() got the optimizer first and the model second",
                             fix="call paramwise.audit(model, optimizer)")
    opt = unwrap_optimizer(optimizer)
    if not isinstance(opt, torch.optim.Optimizer):
        raise ParamwiseError(f"audit() needs a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}",
                             fix="pass the optimizer instance, e.g. "
                             "paramwise.audit(trainer.model, trainer.create_optimizer())")
    skip = _check_kinds(ignore, "audit(ignore=...)")
    inv = Inventory.build(model)
    scheds = _schedulers(scheduler, opt)
    outer = handle_of(opt) is not None
    per_owner: dict[int, tuple[bool, frozenset[str]]] = {}
    views = []
    for i, (g, o) in enumerate(zip(opt.param_groups, owners(opt))):
        known = per_owner.get(id(o))
        if known is None:
            known = per_owner[id(o)] = (outer or handle_of(o) is not None, read_keys(o))
        views.append(GroupView.read(i, g, o, attached=known[0], reads=known[1]))
    finder = Finder(inv, views, opt, scheds, type(model).__name__)
    found = [f for f in finder.run() if f.kind not in skip]
    order = list(KINDS)
    found.sort(key=lambda f: order.index(f.kind))
    inner = getattr(opt, "optimizers", None)
    name = type(opt).__name__
    if isinstance(inner, (list, tuple)) and inner:
        name += "(" + ", ".join(type(o).__name__ for o in inner) + ")"
    return AuditReport(found, name, len(opt.param_groups), finder.trainable_tensors,
                       finder.trainable_elements, skip)
