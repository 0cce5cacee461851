"""Inventory: one walk over a module tree, recording every parameter once, with what it *is*.

For each parameter name (tied parameters have several) the inventory keeps the canonical name
(wrapper segments removed), the owning module and attribute, the roles read from the module tree
(``bias``, ``norm``, ``embedding``, ``gain``, ``weight``), the global shape and whether it is
trainable. It knows nothing of rules or optimizers.

Roles belong to the *tensor*, not to one of its names: a tied tensor (GPT-2's ``transformer.wte``
and ``lm_head``) has the union of what each of its names says, so a role selector gives every
alias the same answer.

Canonical names come from walking the tree, not from editing strings: the child edge of a
wrapper module is skipped, so ``module._orig_mod.0.weight`` (DDP around a compiled model) and
``0._checkpoint_wrapped_module.weight`` become ``0.weight``, while a user's own submodule that
happens to be called ``module`` keeps its name.

Example::

    >>> import torch.nn as nn
    >>> inv = Inventory.build(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    >>> [(n, sorted(r)) for n, r in zip(inv.names, inv.roles)]
    [('0.weight', ['weight']), ('0.bias', ['bias']), ('1.weight', ['norm']), ('1.bias', ['bias', 'norm'])]
"""

from __future__ import annotations

import bisect
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ParamwiseError, did_you_mean
from .roles import (
    EMBEDDING_CLASSES,
    NORM_CLASSES,
    WRAPPER_ATTRS,
    attr_flags,
    is_layer_class,
    is_norm_module,
    tensor_roles,
    wrapper_attrs,
)

__all__ = ["Inventory", "ParamInfo", "bools_to_mask", "mask_to_str"]


@dataclass(frozen=True)
class ParamInfo:
    """What the inventory knows about one parameter name; what selector callables receive."""

    name: str
    param: torch.Tensor
    module: nn.Module
    module_name: str
    attr: str
    roles: frozenset[str]
    shape: tuple[int, ...]
    aliases: tuple[str, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


class Inventory:
    """Struct-of-lists over every parameter *name* of a model, tied aliases included.

    ``entries`` are in ``named_parameters(remove_duplicate=False)`` order; ``unique[i]`` maps
    entry ``i`` to its tensor's index, and ``first[u]`` maps tensor ``u`` back to the entry of
    its first name. Selectors produce bitmasks over entries (bit ``i`` is entry ``i``).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.raw_names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.modules: list[nn.Module] = []
        self.module_names: list[str] = []
        self.attrs: list[str] = []
        self.roles: list[frozenset[str]] = []
        self.ndims: list[int] = []
        self.unique: list[int] = []
        self.first: list[int] = []
        self._tied: dict[int, list[int]] = {}  # tensor -> its entries, when it has several
        self._mask_cache: dict[object, int] = {}
        self._codes: dict[str, tuple[bytes | None, list, list]] = {}
        self._global: dict[int, tuple[int, ...]] = {}
        # The model and the wrapped modules whose canonical path is the root (DDP's .module).
        self.roots: list[nn.Module] = []
        self.module_at: dict[str, nn.Module] = {}  # canonical module path -> module

    # ----------------------------------------------------------------------------- building
    @classmethod
    def build(cls, model: nn.Module) -> Inventory:
        if not isinstance(model, nn.Module):
            raise ParamwiseError(
                f"expected a torch.nn.Module, got {type(model).__name__}",
                fix="pass the model itself (not model.parameters() or a state_dict)",
            )
        inv = cls()
        seen: dict[int, int] = {}
        declared: list[tuple[str, set[str]]] = []
        # Per module class: its facts, and per "is a norm" the role bits of each attribute name.
        facts: dict[type, tuple[bool, bool, frozenset[str], bool, bool, bool,
                                tuple[dict[str, int], dict[str, int]]]] = {}
        plain: set[type] = set()  # parameter classes that are no lazy UninitializedParameter
        fsdp1: list[nn.Module] = []
        names, raws, params, modules = inv.names, inv.raw_names, inv.params, inv.modules
        mod_names, attrs, roles, unique = inv.module_names, inv.attrs, inv.roles, inv.unique
        first, tied, module_at = inv.first, inv._tied, inv.module_at
        # Iterative pre-order walk = the order of model.named_parameters(). ``raw`` is None while
        # no wrapper segment has been dropped (the raw path is then the canonical one).
        stack: list[tuple[nn.Module, str, str | None]] = [(model, "", None)]
        while stack:
            mod, prefix, raw = stack.pop()
            t = type(mod)
            f = facts.get(t)
            if f is None:  # class-level facts, looked up once per module type
                f = facts[t] = (
                    callable(getattr(t, "no_weight_decay", None)),
                    isinstance(mod, EMBEDDING_CLASSES),
                    WRAPPER_ATTRS | wrapper_attrs(t),
                    isinstance(mod, tuple(NORM_CLASSES)) or "norm" in t.__name__.lower(),
                    t.__name__ == "FullyShardedDataParallel",
                    is_layer_class(t),
                    ({}, {}),
                )
            has_nwd, is_emb, skip_attrs, maybe_norm, is_fsdp1, is_layer, flag_tables = f
            if not prefix:
                inv.roots.append(mod)
            mod_name = prefix[:-1]
            module_at[mod_name] = mod
            if is_fsdp1:
                fsdp1.append(mod)
            if has_nwd:
                declared.append((prefix, _declared(mod, prefix if raw is None else raw)))
            own = mod._parameters
            if own:
                is_norm = maybe_norm and is_norm_module(mod)
                flags_of = flag_tables[is_norm]
                for attr, p in own.items():
                    if p is None:
                        continue
                    pt = type(p)
                    if pt not in plain:
                        if isinstance(p, nn.parameter.UninitializedParameter):
                            raise ParamwiseError(
                                f"parameter {(prefix if raw is None else raw) + attr!r} of a lazy "
                                "module is not initialized yet",
                                fix="run one forward pass (or initialize the lazy modules) before "
                                "building the optimizer",
                            )
                        plain.add(pt)
                    if getattr(p, "_is_flat_param", False):  # FSDP1's FlatParameter
                        raise ParamwiseError(
                            f"parameter {(prefix if raw is None else raw) + attr!r} is an FSDP1 "
                            "FlatParameter, whose elements belong to many original parameters",
                            fix="wrap with FullyShardedDataParallel(..., use_orig_params=True), "
                            "or use FSDP2 (torch.distributed.fsdp.fully_shard)",
                        )
                    idx = len(names)
                    u = seen.get(id(p))
                    if u is None:
                        u = seen[id(p)] = len(first)
                        first.append(idx)
                    else:
                        tied.setdefault(u, [first[u]]).append(idx)
                    unique.append(u)
                    name = prefix + attr
                    names.append(name)
                    raws.append(name if raw is None else raw + attr)
                    params.append(p)
                    modules.append(mod)
                    mod_names.append(mod_name)
                    attrs.append(attr)
                    fl = flags_of.get(attr)
                    if fl is None:
                        fl = flags_of[attr] = attr_flags(attr, is_norm, is_emb, is_layer)
                    roles.append(fl)  # type: ignore[arg-type]
            kids = mod._modules
            if kids:
                for n, child in reversed(kids.items()):
                    if child is None:
                        continue
                    if n in skip_attrs:
                        stack.append((child, prefix, f"{prefix if raw is None else raw}{n}."))
                    else:
                        stack.append((child, f"{prefix}{n}.",
                                      None if raw is None else f"{raw}{n}."))
        inv._check_unique_names()
        emb_extra = inv._no_weight_decay_hits(declared) if declared else set()
        inv._global = _fsdp1_shapes(fsdp1) if fsdp1 else {}
        glob = inv._global
        inv.ndims = ([p.dim() for p in params] if not glob else
                     [len(glob[id(p)]) if id(p) in glob else p.dim() for p in params])
        inv.roles = tensor_roles(unique, inv.shape, first, roles, emb_extra)  # type: ignore[arg-type]
        return inv

    def _check_unique_names(self) -> None:
        """Two different tensors must never share a canonical name."""
        if len(set(self.names)) == len(self.names):
            return
        owner: dict[str, int] = {}
        for i, (name, u) in enumerate(zip(self.names, self.unique)):
            j = owner.setdefault(name, i)
            if j != i and self.unique[j] != u:
                raise ParamwiseError(
                    f"two different parameters, {self.raw_names[j]!r} and {self.raw_names[i]!r}, "
                    f"both become {name!r} once wrapper segments are dropped",
                    fix="register the wrapper for its own class only "
                    "(register_wrapper(WrapperClass, attr)), or rename one of the submodules",
                )

    def _no_weight_decay_hits(self, declared: list[tuple[str, set[str]]]) -> set[int]:
        """Entries named by a module's ``no_weight_decay()`` (timm): exact names, prefixes or
        globs, relative to the declaring module. Only names under each declaring module are
        scanned (a bisect over the sorted names), so repeated declaring blocks stay linear."""
        order = sorted(range(len(self.names)), key=self.names.__getitem__)
        keys = [self.names[i] for i in order]
        hits = set()
        for prefix, patterns in declared:
            k = bisect.bisect_left(keys, prefix)
            while k < len(keys) and keys[k].startswith(prefix):
                rel = keys[k][len(prefix):]
                if any(rel == pat or rel.startswith(pat + ".") or fnmatch.fnmatchcase(rel, pat)
                       for pat in patterns):
                    hits.add(order[k])
                k += 1
        return hits

    # ----------------------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_tensors(self) -> int:
        """Number of distinct tensors (tied aliases counted once)."""
        return len(self.first)

    @property
    def all_mask(self) -> int:
        return (1 << len(self.names)) - 1

    def aliases(self, u: int) -> list[int]:
        """Entry indices of every name of tensor ``u`` (first name first)."""
        return self._tied.get(u) or [self.first[u]]

    def tied(self) -> dict[int, list[int]]:
        """Tensor -> the entry indices of its names, for the tensors that have several."""
        return self._tied

    def shape(self, i: int) -> tuple[int, ...]:
        """The global shape: a DTensor's own; an FSDP1 (use_orig_params) view's original."""
        p = self.params[i]
        return tuple(self._global.get(id(p), p.shape))

    def numel_of(self, p: torch.Tensor) -> int:
        """Global number of elements of parameter ``p`` (see :meth:`shape`)."""
        s = self._global.get(id(p))
        return math.prod(s) if s is not None else p.numel()

    def trainable(self, i: int) -> bool:
        return bool(self.params[i].requires_grad)

    def info(self, i: int) -> ParamInfo:
        u = self.unique[i]
        return ParamInfo(
            name=self.names[i],
            param=self.params[i],
            module=self.modules[i],
            module_name=self.module_names[i],
            attr=self.attrs[i],
            roles=self.roles[i],
            shape=self.shape(i),
            aliases=tuple(self.names[j] for j in self.aliases(u)),
        )

    def index(self, name: str) -> int:
        """Entry index of ``name`` (canonical or raw); a ParamwiseError with a suggestion if absent."""
        lookup = self.__dict__.get("_index")
        if lookup is None:
            lookup = {n: i for i, n in enumerate(self.raw_names)}
            lookup.update({n: i for i, n in enumerate(self.names)})
            self._index = lookup
        if name not in lookup:
            raise ParamwiseError(
                f"the model has no parameter named {name!r}{did_you_mean(name, self.names)}",
                fix=f"names look like {self.names[0]!r}" if self.names else None,
            )
        return lookup[name]

    def mask_by(self, values: str, test: Callable[[Any], bool]) -> int:
        """The mask of the entries whose value in the list ``values`` names (``"roles"``,
        ``"ndims"``, ``"types"``: the owning module's class) passes ``test``. ``test`` runs once
        per distinct value, and the bits are laid out at C speed (a byte code per entry)."""
        coded = self._codes.get(values)
        if coded is None:
            column = [type(m) for m in self.modules] if values == "types" else \
                getattr(self, values)
            distinct = list(dict.fromkeys(column))
            number = {v: k for k, v in enumerate(distinct)}
            codes = bytes(map(number.__getitem__, column)) if len(distinct) <= 256 else None
            coded = self._codes[values] = (codes, distinct, column)
        codes, distinct, column = coded
        if codes is None:  # more than 256 distinct values
            return bools_to_mask(map(test, column))
        table = bytes(0x31 if test(v) else 0x30 for v in distinct).ljust(256, b"0")
        s = codes.translate(table)
        return int(s[::-1], 2) if s else 0

    def cached_mask(self, key: object, compute) -> int:
        """Memoise a selector's mask for this inventory (selectors repeat across rules); also
        what else is read from the model once per build (the layer tree, for ``layer_decay``
        and ``hidden_matrices``)."""
        cache = self._mask_cache
        if key in cache:
            return cache[key]
        m = cache[key] = compute()
        return m


_BITS = bytes.maketrans(b"\x00\x01", b"01")


def _declared(mod: nn.Module, raw: str) -> set[str]:
    """The names a module's ``no_weight_decay()`` returns, as a set (``None``: none)."""
    got = mod.no_weight_decay()
    if got is None:
        return set()
    if isinstance(got, str):
        return {got}
    try:
        names = set(got)
    except TypeError:
        raise ParamwiseError(
            f"{type(mod).__name__}.no_weight_decay() (module {raw[:-1] or '<root>'!r}) returned "
            f"{got!r}", fix="return a set of parameter names relative to that module") from None
    if not all(isinstance(n, str) for n in names):
        raise ParamwiseError(f"{type(mod).__name__}.no_weight_decay() returned non-strings: "
                             f"{sorted(map(repr, names))}", fix="return parameter names")
    return names


def _fsdp1_shapes(wrappers: list[nn.Module]) -> dict[int, tuple[int, ...]]:
    """id(parameter) -> original shape, for FSDP1 ``use_orig_params=True`` parameters.

    Outside forward/backward such a parameter is a flat 1-D view of this rank's slice (often
    empty), so its own shape says nothing about the weight; the FlatParameter that owns it keeps
    the original shapes (``_params`` / ``_shapes``, in the same order).
    """
    out: dict[int, tuple[int, ...]] = {}
    for mod in wrappers:
        flat = getattr(getattr(mod, "_handle", None), "flat_param", None)
        params, shapes = getattr(flat, "_params", None), getattr(flat, "_shapes", None)
        if params and shapes:
            out.update({id(p): tuple(s) for p, s in zip(params, shapes)})
    return out


def bools_to_mask(bits) -> int:
    """``[True, False, True]`` → ``0b101`` (bit i is element i)."""
    s = bytes(map(bool, bits)).translate(_BITS)
    return int(s[::-1], 2) if s else 0


def mask_to_str(mask: int, n: int) -> str:
    """The reverse: a string of ``'0'``/``'1'`` whose character i is bit i."""
    return format(mask, f"0{n}b")[::-1] if n else ""
