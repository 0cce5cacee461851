"""The findings of :func:`paramwise.audit`: one pass over the groups' tensors against the model's
inventory, then one finding per kind (per key for unread keys), in the model's canonical names.

Each finding names the paramwise rule (or call) that fixes it; :meth:`Finder.selector` writes
the shortest selector it can prove picks exactly the tensors concerned (``all``, a union of
roles, ``module:<prefix>``, else the names themselves)::

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    >>> f = Finder(Inventory.build(net), [], torch.optim.SGD(net.parameters(), lr=0.1), [], "Net")
    >>> f.selector([1, 2, 3]), f.selector([0]), f.selector([0, 1])
    ('bias | norm', '0.weight', 'module:0')
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from itertools import compress
from typing import Any

import torch

from ._auditscan import (
    FRAMEWORK_KEYS,
    Finding,
    GroupView,
    active_regularizers,
    as_number,
    fmt,
    groups_text,
    labels_of,
    layer_decay_rule,
    options_diff,
    sample,
    verb,
)
from .errors import closest
from .grouping.inventory import Inventory
from .grouping.roles import ROLES
from .options.keys import MULTIPLIERS
from .options.regularization import REG_KEYS

__all__ = ["Finder", "ROLE_KINDS"]

#: Role -> (finding kind, plural label); a tensor with several roles goes to the first.
ROLE_KINDS: dict[str, tuple[str, str]] = {
    "bias": ("decayed_bias", "biases"),
    "norm": ("decayed_norm", "norm-layer scales"),
    "embedding": ("decayed_embedding", "embeddings"),
    "gain": ("decayed_gain", "gains (layer scales)"),
}


class Finder:
    """Collects the findings for one (inventory, groups) pair; :meth:`run` returns them."""

    def __init__(self, inv: Inventory, views: list[GroupView], opt: torch.optim.Optimizer,
                 schedulers: list[Any], model_name: str) -> None:
        self.inv, self.views, self.opt = inv, views, opt
        self.schedulers, self.model_name = schedulers, model_name
        params = [inv.params[e] for e in inv.first]
        self.name = [inv.names[e] for e in inv.first]
        self.roles = [inv.roles[e] for e in inv.first]
        # FSDP1 views are flat slices: their global size comes from the inventory
        self.numel = ([inv.numel_of(p) for p in params] if inv._global
                      else [p.numel() for p in params])
        self.trainable = [p.requires_grad for p in params]
        self.trainable_tensors = sum(self.trainable)
        self.trainable_elements = sum(compress(self.numel, self.trainable))
        self.tensor_of = dict(zip(map(id, params), range(len(params))))
        interned: dict[frozenset[str], str | None] = {}
        for rs in set(self.roles):
            interned[rs] = next((ROLE_KINDS[r][0] for r in ROLE_KINDS if r in rs), None)
        self.kind = [interned[rs] for rs in self.roles]
        self.kind_count = Counter(compress(self.kind, self.trainable))
        self.any_tied = len(inv.names) != len(params)
        self._by_role: dict[str, set[int]] | None = None

    # ------------------------------------------------------------------ helpers
    def elements(self, us: Iterable[int]) -> int:
        return sum(map(self.numel.__getitem__, us))

    def share(self, elements: int) -> float:
        return elements / self.trainable_elements if self.trainable_elements else 0.0

    def names(self, us: Iterable[int]) -> tuple[str, ...]:
        name = self.name
        return tuple([name[u] for u in us])

    def selector(self, us: list[int]) -> str:
        """A selector that picks exactly the trainable tensors ``us`` (and their aliases)."""
        s = {u for u in us if self.trainable[u]} or set(us)
        if len(s) == 1:
            (u,) = s
            return self.name[u] if "." in self.name[u] else f"name:{self.name[u]}"
        if s and len(s) == self.trainable_tensors and all(self.trainable[u] for u in s):
            return "all"
        if self._by_role is None:
            self._by_role = {r: {u for u, rs in enumerate(self.roles)
                                 if r in rs and self.trainable[u]} for r in ROLES}
        picked = [r for r in ROLES if self._by_role[r] and self._by_role[r] <= s]
        if picked and all(self.roles[u] & set(picked) for u in s):
            return " | ".join(picked)
        mods = [self.name[u].rpartition(".")[0].split(".") for u in s]
        prefix: list[str] = []
        for parts in zip(*mods):
            if len(set(parts)) != 1:
                break
            prefix.append(parts[0])
        if prefix and prefix != [""]:
            p = ".".join(prefix)
            inside = {u for u in range(len(self.name))
                      if self.trainable[u] and self.name[u].startswith(p + ".")}
            if inside == s:
                return f"module:{p}"
        return " | ".join(n if "." in n else f"name:{n}" for n in self.names(sorted(s)))

    def _tied(self, us: Iterable[int]) -> str:
        if not self.any_tied:
            return ""
        out = []
        for u in us:
            aliases = self.inv.aliases(u)
            if len(aliases) > 1:
                out.append(" = ".join(repr(self.inv.names[e]) for e in aliases))
        return f"; tied: {', '.join(out[:2])}" if out else ""

    # ------------------------------------------------------------------ the pass
    def run(self) -> list[Finding]:
        trainable, kind, tensor_of = self.trainable, self.kind, self.tensor_of
        decayed: dict[str, list[int]] = {k: [] for k, _ in ROLE_KINDS.values()}
        decayed_in: dict[str, set[int]] = {k: set() for k in decayed}
        placed: list[int] = []  # tensor of every entry of every group, in order
        frozen: dict[int, list[int]] = {}
        zero: dict[int, list[int]] = {}
        foreign: list[tuple[int, int, torch.Tensor, str | None]] = []
        for v in self.views:
            params, gi = v.group["params"], v.index
            us = [tensor_of.get(id(p)) for p in params]
            if None in us:
                labels = labels_of(v)
                foreign += [(gi, k, p, labels[k] if labels else None)
                            for k, (u, p) in enumerate(zip(us, params)) if u is None]
                us = [u for u in us if u is not None]
            placed += us
            for u in [u for u in us if not trainable[u]]:
                frozen.setdefault(u, []).append(gi)
            if not v.live:
                zero[gi] = [u for u in us if trainable[u]]
            elif v.decay:
                kinds = set()
                for u, k in zip(us, map(kind.__getitem__, us)):
                    if k is not None and trainable[u]:
                        decayed[k].append(u)
                        kinds.add(k)
                for k in kinds:
                    decayed_in[k].add(gi)
        out: list[Finding] = []
        for role, (k, label) in ROLE_KINDS.items():
            if decayed[k]:
                out.append(self._decayed(role, k, label, list(dict.fromkeys(decayed[k])),
                                         sorted(decayed_in[k])))
        out += self._unread_keys()
        out += self._regularizers()
        seen = set(placed)
        missing = sorted(set(compress(range(len(trainable)), trainable)) - seen)
        if missing:
            out.append(self._missing(missing))
        if frozen:
            out.append(self._frozen(frozen))
        if len(seen) != len(placed):
            out += self._repeated(self._appearances(seen, placed))
        if foreign:
            out.append(self._foreign(foreign))
        zero = {g: us for g, us in zero.items() if us}
        if zero:
            out.append(self._zero_lr(zero))
        return out

    def _appearances(self, seen: set[int], placed: list[int]
                     ) -> dict[int, list[tuple[int, str | None]]]:
        """Where each tensor placed more than once appears: (group, its param_names label)."""
        count: dict[int, int] = {}
        for u in placed:
            count[u] = count.get(u, 0) + 1
        many = {u for u, c in count.items() if c > 1}
        rep: dict[int, list[tuple[int, str | None]]] = {}
        for v in self.views:
            labels = labels_of(v)
            for k, p in enumerate(v.group["params"]):
                u = self.tensor_of.get(id(p))
                if u in many:
                    rep.setdefault(u, []).append((v.index, labels[k] if labels else None))
        return rep

    # ------------------------------------------------------------------ one per kind
    def _decayed(self, role: str, kind: str, label: str, us: list[int], gis: list[int]
                 ) -> Finding:
        by_source: dict[tuple[str, str, float, str], list[int]] = {}
        for g in gis:
            v = self.views[g]
            for key, val, form in v.decay:
                by_source.setdefault((v.cls_name, key, val, form), []).append(g)
        sources = [{"optimizer": o, "key": key, "value": val, "form": form, "groups": gs}
                   for (o, key, val, form), gs in by_source.items()]
        forms = sorted({s["form"] for s in sources})
        form = forms[0] if len(forms) == 1 else "mixed"
        form_text = {"unknown": "weight decay of a form this audit does not know",
                     "mixed": f"{' and '.join(forms)} weight decay"}.get(form,
                                                                     f"{form} weight decay")
        src = "; ".join(f"{s['optimizer']} {s['key']}={fmt(s['value'])} in "
                        f"{groups_text(s['groups'])}" for s in sources[:3]) \
            + ("; ..." if len(sources) > 3 else "")
        total = self.kind_count[kind]
        el = self.elements(us)
        keys = dict.fromkeys(s["key"] for s in sources)
        rule = f"paramwise.Rule({role!r}, " + ", ".join(f"{k}=0.0" for k in keys) + ")"
        return Finding(
            kind, self.names(us),
            f"{len(us)} of {total} {label} get {form_text} ({src}): {el:,} elements, "
            f"{self.share(el):.1%} of the trainable ones{self._tied(us)}",
            f"exclude them from decay: {rule}, or paramwise.no_decay() for biases, norms, "
            "embeddings and gains at once",
            rule, tuple(gis), el, self.share(el), {"form": form, "sources": sources, "of": total})

    def _group_tensors(self, gis: Iterable[int]) -> list[int]:
        us: dict[int, None] = {}
        for g in gis:
            for p in self.views[g].group["params"]:
                u = self.tensor_of.get(id(p))
                if u is not None:
                    us[u] = None
        return list(us)

    def _unread_keys(self) -> list[Finding]:
        by_key: dict[str, list[GroupView]] = {}
        for v in self.views:
            for k in v.unread():
                by_key.setdefault(k, []).append(v)
        out = []
        modules = [type(s).__module__ + "." + type(s).__name__ for s in self.schedulers]
        for key, vs in by_key.items():
            framework = FRAMEWORK_KEYS.get(key)
            if framework and any(m.startswith(framework[1]) for m in modules if framework[1]):
                continue
            gis = [v.index for v in vs]
            us = self._group_tensors(gis)
            el = self.elements(us)
            classes = ", ".join(dict.fromkeys(v.cls_name for v in vs))
            values = [v.group[key] for v in vs]
            shown = sorted({fmt(x) for x in values}, key=lambda s: (len(s), s))
            vals = shown[0] if len(shown) == 1 else f"{len(shown)} values: {', '.join(shown[:4])}" \
                + (", ..." if len(shown) > 4 else "")
            sel = self.selector(us) if us else "<selector>"
            where = (f"{groups_text(gis)} {verb(gis, 'sets', 'set')} {key!r} ({vals}), "
                     f"which {classes} never reads")
            detail: dict[str, Any] = {"key": key, "values": [fmt(x) for x in values]}
            if framework:
                detail["read_by"] = framework[0]
                sched = (f"; the scheduler given, {', '.join(type(s).__name__ for s in self.schedulers)}"
                         ", does not either" if self.schedulers else
                         "; if one of those steps this optimizer, pass it: audit(..., scheduler=s)")
                msg = f"{where}; it is read by {framework[0]}{sched}"
                if key == "lr_scale":
                    fix = ("step a timm scheduler, or fold the scale into each group's lr "
                           "before the scheduler is built; with paramwise: ")
                    rule = layer_decay_rule(values) or \
                        f"paramwise.Rule({sel!r}, lr_mult={shown[0] if len(shown) == 1 else '...'})"
                else:
                    base = MULTIPLIERS.get(key, "weight_decay")
                    fix = f"multiply it into the group's {base} yourself, or let paramwise do: "
                    rule = f"paramwise.Rule({sel!r}, {key if key in MULTIPLIERS else base + '_mult'}=...)"
                fix += rule
            else:
                reads = set().union(*(v.reads for v in vs))
                hit = closest(key, reads | REG_KEYS)
                if hit:
                    real = hit[0]
                    now = {fmt(v.group[real]) for v in vs if real in v.group}
                    runs = (f" {verb(gis, 'It runs', 'They run')} with "
                            f"{real}={' / '.join(sorted(now))}" if now else "")
                    msg = f"{where} (did you mean {real!r}?{runs})"
                    rule = f"paramwise.Rule({sel!r}, {real}={shown[0]})"
                    fix = f"rename it to {real!r}: {rule} sets it, checked"
                    detail["closest"] = real
                else:
                    known = sorted(reads)
                    msg = (f"{where}; {classes} reads {', '.join(known[:8])}"
                           + (", ..." if len(known) > 8 else ""))
                    fix = "remove it (paramwise rules refuse keys their optimizer does not take)"
                    rule = None
            out.append(Finding("unread_key", self.names(us), msg, fix, rule, tuple(gis), el,
                               self.share(el), detail))
        return out

    def _regularizers(self) -> list[Finding]:
        hits = [(v, active_regularizers(v.group)) for v in self.views if not v.attached]
        hits = [(v, r) for v, r in hits if r]
        if not hits:
            return []
        gis = [v.index for v, _ in hits]
        us = self._group_tensors(gis)
        el = self.elements(us)
        keys = dict.fromkeys(f"{k}={fmt(x)}" for _, r in hits for k, x in r.items())
        inner = {v.cls_name for v, _ in hits if v.owner is not self.opt}
        target = f"the inner {', '.join(sorted(inner))}" if inner else type(self.opt).__name__
        return [Finding(
            "regularizer_not_attached", self.names(us),
            f"{groups_text(gis)} {verb(gis, 'sets', 'set')} paramwise regularizer options ({', '.join(list(keys)[:4])}"
            f"{', ...' if len(keys) > 4 else ''}) but paramwise is not attached to {target}: "
            "nothing applies them", "attach paramwise once after building the optimizer "
            "(paramwise.optimizer() does it itself)", "paramwise.attach(optimizer)", tuple(gis),
            el, self.share(el), {"keys": sorted({k for _, r in hits for k in r})})]

    def _missing(self, us: list[int]) -> Finding:
        el = self.elements(us)
        return Finding(
            "not_in_optimizer", self.names(us),
            f"{len(us)} trainable parameter(s) of {self.model_name} are in no group "
            f"({sample(list(self.names(us)))}; {el:,} elements, {self.share(el):.1%}): they "
            "never update", "add them to a group (optimizer.add_param_group), or freeze them "
            "(requires_grad_(False)); paramwise puts every trainable parameter in one group",
            "paramwise.optimizer(model, ...)", (), el, self.share(el))

    def _frozen(self, frozen: dict[int, list[int]]) -> Finding:
        us = list(frozen)
        gis = sorted({g for gs in frozen.values() for g in gs})
        el = self.elements(us)
        return Finding(
            "frozen_in_optimizer", self.names(us),
            f"{len(us)} requires_grad=False parameter(s) sit in {groups_text(gis)} "
            f"({sample(list(self.names(us)))}): they get no gradient and never move; if they "
            "are unfrozen later they train with these groups' options",
            "leave frozen parameters out of the optimizer (paramwise does, unless "
            "include_frozen=True for gradual unfreezing)", "paramwise.optimizer(model, ...)",
            tuple(gis), el, None)

    def _repeated(self, rep: dict[int, list[tuple[int, str | None]]]) -> list[Finding]:
        out = []
        for kind in ("tied_split", "duplicate"):
            us = [u for u in rep if (len(self.inv.aliases(u)) > 1) == (kind == "tied_split")]
            if not us:
                continue
            parts = []
            for u in us[:3]:
                where = ", ".join(
                    f"group {g} ({self.views[g].cls_name}{', as ' + repr(lab) if lab else ''}"
                    f"{options_diff(self.views[g], [self.views[h] for h, _ in rep[u]])})"
                    for g, lab in rep[u])
                also = self._tied([u]).removeprefix("; tied: ")
                parts.append(f"{also or repr(self.name[u])} appears in {where}")
            gis = sorted({g for u in us for g, _ in rep[u]})
            el = self.elements(us)
            out.append(Finding(
                kind, self.names(us),
                "; ".join(parts) + ("; ..." if len(us) > 3 else "") + ": each appearance is "
                "stepped with its own group's options, so the tensor moves several times per "
                "step", "give each tensor one entry in one group (a tied tensor: one entry for "
                "all its aliases)", "paramwise.optimizer(model, ...)", tuple(gis), el,
                self.share(el), {"appearances": {self.name[u]: [g for g, _ in rep[u]]
                                                 for u in us}}))
        return out

    def _foreign(self, foreign: list[tuple[int, int, torch.Tensor, str | None]]) -> Finding:
        names = tuple(lab if lab else f"<group {g} tensor {k}, shape {tuple(p.shape)}>"
                      for g, k, p, lab in foreign)
        gis = sorted({g for g, _, _, _ in foreign})
        el = sum(p.numel() for _, _, p, _ in foreign)
        return Finding(
            "not_in_model", names,
            f"{len(names)} tensor(s) in {groups_text(gis)} are no parameter of "
            f"{self.model_name} ({sample(list(names))}): the optimizer was built from "
            "another model or another copy of it", "build the optimizer from this model's "
            "own parameters (after any deepcopy or reload)", "paramwise.optimizer(model, ...)",
            tuple(gis), el, None)

    def _zero_lr(self, zero: dict[int, list[int]]) -> Finding:
        gis = sorted(zero)
        us = list(dict.fromkeys(u for g in gis for u in zero[g]))
        el = self.elements(us)
        decays = [f"{key}={fmt(val)}" for g in gis for key, val, _ in self.views[g].decay]
        lr = as_number(self.opt.defaults.get("lr")) if isinstance(self.opt.defaults, dict) \
            else None
        rule = (f"paramwise.Rule({self.selector(us)!r}, lr={lr:g})"
                if lr and lr > 0 and math.isfinite(lr) else None)
        return Finding(
            "zero_lr", self.names(us),
            f"{groups_text(gis)} {verb(gis, 'has', 'have')} lr=0 (and no scheduler's "
            "initial_lr above 0): their "
            f"{len(us)} trainable tensor(s) never change"
            + (f"; their {', '.join(dict.fromkeys(decays))} does nothing at lr 0 either"
               if decays else ""),
            "freeze them (requires_grad_(False)) and leave them out, or give them an lr",
            rule, tuple(gis), el, self.share(el))
