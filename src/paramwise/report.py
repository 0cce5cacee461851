"""Report and explain: what each group got, and why one parameter got what it got.

The report's data (rows, totals) is kept apart from its rendering: ``to_dict()`` is for logging,
``str()`` is the table::

    >>> print(paramwise.report(opt))                                     # doctest: +SKIP
    group  tensors  elements  lr    weight_decay  names
    0            2     5,050  0.01  1e-05         0.weight, 2.weight
    1            2        51  0.01  0.0           0.bias, 2.bias
    total        4     5,101
    same in every group: dampening=0, momentum=0.9, nesterov=False, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .api import resolve_target
from .errors import ParamwiseError
from .grouping.groups import groups_by_class
from .grouping.inventory import Inventory
from .grouping.perclass import accepts, class_name
from .grouping.plan import Plan, rule_ref
from .hybrid import Hybrid
from .options.keys import MULTIPLIERS
from .step.hooks import runs_fused

__all__ = ["Report", "report", "explain"]

_HIDDEN = {"params", "param_names"}
_ALWAYS = ("optimizer", "lr", "weight_decay")


def _fmt(v: object) -> str:
    if isinstance(v, type):
        return v.__name__
    if isinstance(v, float):
        return f"{v:.6g}" if v != 0 else "0.0"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"{v.item():.6g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


@dataclass
class Report:
    """What :func:`paramwise.report` returns: the data of the group table, apart from its
    rendering. ``rows`` (one dict per group: ``index``, ``tensors``, ``elements``, ``options``,
    ``names``), ``columns`` (the options shown, those that differ between groups plus ``lr``
    and ``weight_decay``), ``shared`` (options equal in every group), the frozen parameters
    counted apart. ``str()`` is the table; :meth:`to_dict` plain data for logs."""

    rows: list[dict] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    shared: dict[str, object] = field(default_factory=dict)
    frozen_tensors: int | None = None
    frozen_elements: int | None = None
    sample: int = 3

    @property
    def total_tensors(self) -> int:
        return sum(r["tensors"] for r in self.rows)

    @property
    def total_elements(self) -> int:
        return sum(r["elements"] for r in self.rows)

    def to_dict(self) -> dict:
        """Plain data: ``groups`` (index, tensors, elements, options, names), totals, frozen."""
        return {
            "groups": [{**r, "options": dict(r["options"])} for r in self.rows],
            "shared": dict(self.shared),
            "total": {"tensors": self.total_tensors, "elements": self.total_elements},
            "frozen": None if self.frozen_tensors is None else
            {"tensors": self.frozen_tensors, "elements": self.frozen_elements},
        }

    def __str__(self) -> str:
        head = ["group", "tensors", "elements", *self.columns, "names"]
        body = []
        for r in self.rows:
            names = r["names"]
            shown = ", ".join(names[: self.sample])
            if len(names) > self.sample:
                shown += f", ... (+{len(names) - self.sample})"
            body.append([str(r["index"]), str(r["tensors"]), f"{r['elements']:,}",
                         *(_fmt(r["options"][c]) if c in r["options"] else "-"
                           for c in self.columns), shown])
        body.append(["total", str(self.total_tensors), f"{self.total_elements:,}",
                     *[""] * len(self.columns), ""])
        if self.frozen_tensors:
            body.append(["frozen", str(self.frozen_tensors), f"{self.frozen_elements:,}",
                         *[""] * len(self.columns), "(requires_grad=False, not optimized)"])
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        numeric = {1, 2}

        def line(row: list[str]) -> str:
            cells = [c.rjust(w) if i in numeric else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        out = [line(head), *(line(r) for r in body)]
        if self.shared:
            out.append("same in every group: " + ", ".join(
                f"{k}={_fmt(v)}" for k, v in sorted(self.shared.items())))
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)


def _frozen(inv: Inventory) -> tuple[int, int]:
    t = e = 0
    for i in inv.first:
        p = inv.params[i]
        if not p.requires_grad:
            t += 1
            e += inv.numel_of(p)
    return t, e


def report(obj: nn.Module | torch.optim.Optimizer, rules=None, *, sample: int = 3,
           **defaults: object) -> Report:
    """The group table of an optimizer, or of a model under ``rules`` (or its last optimizer).

    ``obj`` is an optimizer (any: its groups are read as they are), or a model with ``rules`` and
    ``defaults`` (the groups :func:`paramwise.optimizer` would build, nothing built; pass
    ``optimizer=`` to check keys against a class), or a model alone (the last optimizer
    :func:`paramwise.optimizer` built for it). Columns: group index, tensor count, element
    count, every option that differs between groups (plus ``lr`` and ``weight_decay``),
    ``sample`` names; then totals and the frozen parameters counted apart. Options equal in
    every group are listed once below the table. Returns a :class:`paramwise.Report`.

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
        ...                             torch.nn.Linear(4, 2))
        >>> opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("bias", weight_decay=0.0)],
        ...                           lr=0.1, weight_decay=1e-4)
        >>> print(paramwise.report(opt))
        group  tensors  elements  lr   weight_decay  names
        0            3        28  0.1  0.0001        0.weight, 1.weight, 2.weight
        1            3        10  0.1  0.0           0.bias, 1.bias, 2.bias
        total        6        38
        same in every group: dampening=0, differentiable=False, foreach=None, fused=None, maximize=False, momentum=0, nesterov=False
    """
    plan, opt = resolve_target(obj, rules, dict(defaults), what="report")
    owner: list[str] | None = None  # the optimizer class of each group, when several
    if opt is not None:
        groups = opt.param_groups
        if isinstance(opt, Hybrid):
            of = {id(g): type(o).__name__ for o in opt.optimizers for g in o.param_groups}
            owner = [of.get(id(g), "?") for g in groups]
    else:
        parts = groups_by_class(plan)  # type: ignore[arg-type]
        groups = [g for _, gs in parts for g in gs]
        if len(parts) > 1:
            owner = [class_name(c) for c, gs in parts for _ in gs]
    numel = plan.inv.numel_of if plan is not None else torch.Tensor.numel
    rows = []
    for i, g in enumerate(groups):
        names = g.get("param_names") or [f"<param {j}>" for j in range(len(g["params"]))]
        opts = {k: v for k, v in g.items() if k not in _HIDDEN}
        rows.append({
            "index": i,
            "tensors": len(g["params"]),
            "elements": sum(numel(p) for p in g["params"]),
            "options": {"optimizer": owner[i], **opts} if owner else opts,
            "names": list(names),
        })
    keys = list(dict.fromkeys(k for r in rows for k in r["options"]))
    shared, columns = {}, []
    for k in keys:
        vals = [r["options"].get(k, "<unset>") for r in rows]
        same = all(_same(v, vals[0]) for v in vals)
        if same and k not in _ALWAYS and len(rows) > 0 and "<unset>" not in vals:
            shared[k] = vals[0]
        else:
            columns.append(k)
    rep = Report(rows=rows, columns=columns, shared=shared, sample=sample)
    if plan is not None:
        rep.frozen_tensors, rep.frozen_elements = _frozen(plan.inv)
    return rep


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


def explain(obj: nn.Module | torch.optim.Optimizer, name: str, rules=None,
            **defaults: object) -> str:
    """Why parameter ``name`` got its options: the defaults, each matching rule in order and
    what it set, multipliers, the resolved options, and (for an optimizer) its group now.

    ``obj`` is as in :func:`paramwise.report`; ``name`` is a canonical parameter name (a name
    the model does not have raises, with the closest one). For an optimizer paramwise did not
    build, only its group's options are shown.

        >>> import torch, paramwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
        ...                             torch.nn.Linear(4, 2))
        >>> opt = paramwise.optimizer(model, "sgd", [paramwise.Rule("bias", weight_decay=0.0)],
        ...                           lr=0.1, weight_decay=1e-4)
        >>> print(paramwise.explain(opt, "0.bias"))
        0.bias: shape (4,), roles bias; group 1 of 2
          defaults         lr=0.1, weight_decay=0.0001
          rule 0 ('bias')  weight_decay=0.0
          resolved         lr=0.1, weight_decay=0.0
    """
    if not isinstance(name, str):
        raise ParamwiseError(f"explain(..., name) takes a parameter name, got {name!r} "
                             f"({type(name).__name__})",
                             fix="pass the canonical name, e.g. explain(opt, '0.weight'); "
                             "paramwise.report(opt) lists them")
    plan, opt = resolve_target(obj, rules, dict(defaults), what="explain")
    if plan is None:
        return _explain_plain(opt, name)  # type: ignore[arg-type]
    inv = plan.inv
    e = inv.index(name)
    info = inv.info(e)
    u = inv.unique[e]
    lines = []
    roles = ", ".join(sorted(info.roles)) or "none"
    where, group, gidx = "", None, -1
    if opt is not None:
        for gi, g in enumerate(opt.param_groups):
            if any(p is info.param for p in g["params"]):
                where, group, gidx = f"; group {gi} of {len(opt.param_groups)}", g, gi
                break
        else:
            where = "; in no group"
    lines.append(f"{info.name}: shape {tuple(info.shape)}, roles {roles}{where}")
    if len(info.aliases) > 1:
        lines.append(f"  tied: one tensor under {', '.join(repr(a) for a in info.aliases)}")
    if not plan.included(u):
        lines.append("  frozen (requires_grad=False): not optimized; include_frozen=True "
                     "would group it")
    entries: list[tuple[str, str]] = []
    defaults = plan.defaults
    if len(plan.in_play) > 1:  # the defaults this parameter's optimizer takes
        defaults = {k: v for k, v in defaults.items() if accepts(plan.class_of(e), k)}
    if defaults:
        entries.append(("defaults", _kv(defaults)))
    hit = plan.rules_of(e)
    for i in hit:
        r = plan.rules[i]
        entries.append((f"{rule_ref(i, r)} ({r.label!r})", _kv(r.options)))
    if not hit:
        entries.append(("rules", f"none of {len(plan.rules)} matched"))
    resolved = plan.options_of(e)
    if len(plan.in_play) > 1:
        cls = plan.class_of(e)
        setter = [i for i in hit if "optimizer" in plan.rules[i].options]
        entries.append(("optimizer", class_name(cls) + (
            f" (set by {rule_ref(setter[-1], plan.rules[setter[-1]])})" if setter
            else " (the default: no rule sets optimizer)")))
    mult_lines = _multipliers(plan, hit)
    entries.extend(mult_lines)
    entries.append(("resolved", _kv(resolved) or "(optimizer defaults)"))
    if opt is not None and group is not None:
        g = group
        now = {k: v for k, v in g.items() if k not in _HIDDEN}
        changed = {k: v for k, v in now.items() if k in resolved and not _same(v, resolved[k])}
        if changed:
            entries.append(("now in the group", _kv(changed) + " (changed since built, e.g. by "
                            "a scheduler or lowering)"))
        for note in g.get("paramwise_lowered", ()):
            entries.append(("lowered", f"{note} (runs inside {type(opt).__name__}.step)"))
        if runs_fused(opt, gidx):
            entries.append(("fused", f"{type(opt).__name__}'s update and the regularizers run "
                            "in one pass in paramwise's post-step hook"))
    width = max(len(k) for k, _ in entries)
    lines.extend(f"  {k.ljust(width)}  {v}" for k, v in entries)
    return "\n".join(lines)


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in d.items())


def _multipliers(plan: Plan, hit: list[int]) -> list[tuple[str, str]]:
    out = []
    for mk, base in MULTIPLIERS.items():
        factors = [plan.rules[i].options[mk] for i in hit if mk in plan.rules[i].options]
        if factors:
            out.append((f"{base} multipliers", " * ".join(_fmt(float(f)) for f in factors)))  # type: ignore[arg-type]
    return out


def _explain_plain(opt: torch.optim.Optimizer, name: str) -> str:
    for gi, g in enumerate(opt.param_groups):
        names = g.get("param_names") or []
        if name in names:
            opts = {k: v for k, v in g.items() if k not in _HIDDEN}
            return (f"{name}: group {gi} of {len(opt.param_groups)} (optimizer not built by "
                    f"paramwise: no rule history)\n  options  {_kv(opts)}")
    raise ParamwiseError(f"no group of this {type(opt).__name__} holds a parameter named {name!r}",
                         fix="pass the model with its rules: explain(model, name, rules=...)")
