"""What :func:`paramwise.audit` reads from one optimizer group: who owns it, which keys its owner
reads, what weight decay it applies and in which form.

A group's *owner* is the optimizer that steps it: the optimizer itself, or, for a hybrid (an
optimizer with an ``optimizers`` list of inner ``torch.optim`` instances whose ``param_groups``
it shares), the inner instance holding that very group dict. Keys are looked up on the owner,
so a Muon group is checked against Muon's signature and an AdamW group against AdamW's. Also
here: :class:`Finding`, what an audit reports, and the helpers that word its messages.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=1e-4)
    >>> GroupView.read(0, opt.param_groups[0], opt, attached=False).decay
    [('weight_decay', 0.0001, 'coupled')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .options.keys import MULTIPLIERS, optimizer_keys
from .options.regularization import REG_KEYS, STRENGTH_KEYS
from .step.lowering import LOWERED_KEY

__all__ = ["Finding", "GroupView", "owners", "decay_form", "read_keys", "SCHEDULER_KEYS",
           "FRAMEWORK_KEYS", "unwrap_optimizer", "unwrap_scheduler", "fmt", "groups_text",
           "sample", "verb", "layer_decay_rule", "labels_of", "options_diff"]

#: Keys torch's own lr schedulers (and SWALR) write into groups and read back.
SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum",
                            "swa_lr"})
#: Keys every optimizer may carry: the tensors, their names, what paramwise lowered.
ALWAYS_READ = frozenset({"params", "param_names", LOWERED_KEY}) | SCHEDULER_KEYS

#: Keys frameworks put into groups for a component other than the optimizer: what reads them,
#: and the module prefixes of schedulers that do (an ``audit(..., scheduler=)`` from there
#: reads the key).
FRAMEWORK_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lr_scale": ("timm's schedulers (timm.scheduler) and BEiT/MAE-style training loops, which "
                 "set each group's lr to the scheduled lr x lr_scale", ("timm.",)),
    **{k: ("paramwise rules and mmengine's paramwise_cfg, which fold it into the group's "
           f"{base} when they build the groups; in a built group nothing reads it", ())
       for k, base in MULTIPLIERS.items()},
    "decay_mult": ("mmengine's paramwise_cfg when it builds the groups; in a built group "
                   "nothing reads it", ()),
}

_COUPLED = (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad,
            torch.optim.Adadelta, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
            torch.optim.ASGD)
_DECOUPLED = tuple(c for c in (torch.optim.AdamW, getattr(torch.optim, "Adafactor", None),
                               getattr(torch.optim, "Muon", None)) if c is not None)
# Third-party optimizers whose decay is decoupled (w <- w - lr*wd*w), recognised by class name.
_DECOUPLED_WORDS = ("adamw", "lion", "muon", "adafactor", "lamb", "sophia")


def unwrap_optimizer(opt: Any) -> Any:
    """The ``torch.optim`` optimizer inside wrappers that hold it as ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``); ``opt`` itself otherwise."""
    for _ in range(8):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is opt:
            break
        opt = inner
    return opt


def unwrap_scheduler(sched: Any) -> Any:
    """The scheduler inside accelerate's ``AcceleratedScheduler`` (``.scheduler``)."""
    inner = getattr(sched, "scheduler", None)
    return inner if inner is not None and hasattr(inner, "optimizer") else sched


def owners(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The optimizer that owns each of ``opt.param_groups`` (a hybrid's inner instance, found
    by the identity of the group dict; else ``opt``)."""
    inner = getattr(opt, "optimizers", None)
    if isinstance(inner, (list, tuple)) and inner and \
            all(isinstance(o, torch.optim.Optimizer) for o in inner):
        by_id = {id(g): o for o in inner for g in o.param_groups}
        return [by_id.get(id(g), opt) for g in opt.param_groups]
    return [opt] * len(opt.param_groups)


def read_keys(owner: torch.optim.Optimizer) -> frozenset[str]:
    """Keys ``owner`` reads: its constructor's arguments (for a ``**kwargs`` constructor, the
    keys of the ``defaults`` it was built with) and its ``defaults``."""
    own = optimizer_keys(type(owner)) or frozenset()
    return own | frozenset(getattr(owner, "defaults", {}) or {})


def decay_form(owner: torch.optim.Optimizer, group: Mapping[str, Any]) -> str:
    """``"coupled"`` (λw added to the gradient: SGD, Adam, RMSprop, Adagrad, ...),
    ``"decoupled"`` (w ← w − lr·λ·w: AdamW, Adam with ``decoupled_weight_decay=True``, Lion,
    Muon, Adafactor, ...) or ``"unknown"`` (a class this table does not know)."""
    cls = type(owner)
    flag = group.get("decoupled_weight_decay")
    if isinstance(flag, bool) and issubclass(cls, (torch.optim.Adam, torch.optim.NAdam,
                                                   torch.optim.RAdam)):
        return "decoupled" if flag else "coupled"
    if issubclass(cls, _DECOUPLED):
        return "decoupled"
    if issubclass(cls, _COUPLED):
        return "coupled"
    low = cls.__name__.lower()
    return "decoupled" if any(w in low for w in _DECOUPLED_WORDS) else "unknown"


def as_number(v: object) -> float | None:
    """A real number from a float, int or one-element tensor; None otherwise (bools too)."""
    if type(v) is float:
        return v
    if isinstance(v, bool):
        return None
    if isinstance(v, torch.Tensor):
        return float(v.item()) if v.numel() == 1 and not v.is_complex() else None
    if isinstance(v, (int, float)):
        return float(v)
    return None


_STRENGTHS = frozenset(STRENGTH_KEYS)


def _lowered(group: Mapping[str, Any], key: str) -> bool:
    return any(str(d).startswith(key + "->") for d in group.get(LOWERED_KEY, ()) or ())


def active_regularizers(group: Mapping[str, Any]) -> dict[str, object]:
    """The paramwise regularizer options that would act (a strength > 0, a ``max_norm``) and
    were not lowered into the optimizer's own options."""
    out: dict[str, object] = {}
    for k in _STRENGTHS & group.keys():
        v = as_number(group[k])
        if v is not None and v > 0 and not _lowered(group, k):
            out[k] = group[k]
    if group.get("max_norm") is not None:
        out["max_norm"] = group["max_norm"]
    return out


@dataclass
class GroupView:
    """One group as the audit sees it."""

    index: int
    group: Mapping[str, Any]
    owner: torch.optim.Optimizer
    attached: bool
    reads: frozenset[str]
    lr: float | None
    live: bool  # its parameters can change: lr > 0, or a scheduler's initial_lr > 0
    decay: list[tuple[str, float, str]] = field(default_factory=list)  # (key, value, form)

    @property
    def cls_name(self) -> str:
        return type(self.owner).__name__

    @classmethod
    def read(cls, index: int, group: Mapping[str, Any], owner: torch.optim.Optimizer,
             attached: bool, reads: frozenset[str] | None = None) -> GroupView:
        """``reads``: :func:`read_keys` of ``owner``, when the caller has it already."""
        reads = read_keys(owner) if reads is None else reads
        lr = as_number(group.get("lr"))
        live = lr is None or lr != 0
        if not live:
            initial = as_number(group.get("initial_lr"))
            live = initial is not None and initial > 0
        decay: list[tuple[str, float, str]] = []
        wd = as_number(group.get("weight_decay")) if "weight_decay" in reads else None
        if wd is not None and wd > 0 and math.isfinite(wd):
            decay.append(("weight_decay", wd, decay_form(owner, group)))
        if attached:
            for key, form in (("l2", "coupled"), ("decoupled_decay", "decoupled")):
                if key not in group:
                    continue
                v = as_number(group[key])
                if v is not None and v > 0 and not _lowered(group, key):
                    decay.append((key, v, form))
        return cls(index, group, owner, attached, reads, lr, live, decay)

    def unread(self) -> list[str]:
        """Keys of this group that its owner never reads (paramwise's regularizer keys aside:
        they are checked against :func:`paramwise.attach`; labels, i.e. string values, aside)."""
        out = []
        for k in self.group.keys() - self.reads - _KNOWN:
            v = self.group[k]
            if not isinstance(k, str) or isinstance(v, str) or (isinstance(v, Sequence) and v
                                      and all(isinstance(x, str) for x in v)):
                continue  # a label ("name" for Lightning's LearningRateMonitor, group names)
            out.append(k)
        return sorted(out)


_KNOWN = ALWAYS_READ | REG_KEYS


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` (one of the kinds :func:`paramwise.audit` lists), the canonical
    parameter ``names``, a ``message``, a one-line ``fix``, the paramwise ``rule`` (or call)
    that fixes it (None when the fix is to delete something), the ``groups`` concerned, the
    ``elements`` affected and their ``share`` of the model's trainable elements, and
    kind-specific ``detail``."""

    kind: str
    names: tuple[str, ...]
    message: str
    fix: str
    rule: str | None = None
    groups: tuple[int, ...] = ()
    elements: int = 0
    share: float | None = None
    detail: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: every field, lists for tuples (what ``AuditReport.to_dict()`` holds)."""
        return {"kind": self.kind, "names": list(self.names), "message": self.message,
                "fix": self.fix, "rule": self.rule, "groups": list(self.groups),
                "elements": self.elements, "share": self.share, "detail": dict(self.detail)}


def fmt(v: object) -> str:
    """A group value as Python would write it (a one-element tensor as its number)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    return repr(v)


def verb(gis: Iterable[int], one: str, many: str) -> str:
    return one if len(set(gis)) == 1 else many


def groups_text(gis: Iterable[int]) -> str:
    """``group 3`` / ``groups 0, 2`` / ``groups 0-11, 14``."""
    gs = sorted(set(gis))
    runs: list[str] = []
    i = 0
    while i < len(gs):
        j = i
        while j + 1 < len(gs) and gs[j + 1] == gs[j] + 1:
            j += 1
        runs.append(str(gs[i]) if j == i else f"{gs[i]}-{gs[j]}")
        i = j + 1
    return ("group " if len(gs) == 1 else "groups ") + ", ".join(runs)


def sample(names: list[str], n: int = 3) -> str:
    shown = ", ".join(map(repr, names[:n]))
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def layer_decay_rule(values: list[object]) -> str | None:
    """``paramwise.layer_decay(r)`` when the distinct ``lr_scale`` values are 1, r, r², ..."""
    xs = sorted({x for x in map(as_number, values) if x is not None and x > 0}, reverse=True)
    if len(xs) < 3 or abs(xs[0] - 1) > 1e-6:
        return None
    r = xs[1] / xs[0]
    if all(abs(b / a - r) <= 1e-6 * r for a, b in zip(xs, xs[1:])):
        return f"paramwise.layer_decay({r:.6g})"
    return None


def labels_of(v: GroupView) -> list | None:
    """The group's ``param_names`` when they line up with its ``params``."""
    labels = v.group.get("param_names")
    ok = isinstance(labels, list) and len(labels) == len(v.group["params"])
    return labels if ok else None


def options_diff(v: GroupView, others: list[GroupView]) -> str:
    """``, weight_decay=0.1`` for the options where ``v``'s group differs from the others'."""
    keys = ("lr", "weight_decay")
    diff = [k for k in keys if len({fmt(o.group.get(k)) for o in others}) > 1]
    return "".join(f", {k}={fmt(v.group.get(k))}" for k in diff)
