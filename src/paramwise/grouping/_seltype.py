"""``type:<class>``: parameters whose owning module is an instance of a class, resolved against
the classes that occur in the model and never by importing anything.

A module of class ``C`` matches ``type:X`` when a class ``B`` in ``C.__mro__`` (so subclasses
match too) is named ``X`` by its ``__name__``, its ``__qualname__``, ``B.__module__ + "." +
B.__qualname__``, ``<package>.<B.__name__>`` for a package that ``B``'s module is in
(``torch.nn.Conv2d``, ``transformers.LlamaRMSNorm``), or a path through a module that is already
imported (read from the module's namespace, so no import and no module ``__getattr__`` runs).

A name that is no class in the model but is a module class already loaded (``type:RMSNorm`` on
a model without one) simply matches nothing, so one config serves several models; a name that
is neither is an error with the closest class names in the model::

    >>> import torch.nn as nn
    >>> from paramwise.grouping.inventory import Inventory
    >>> inv = Inventory.build(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    >>> bin(TypeTerm("LayerNorm", "type:LayerNorm", 0, "type:LayerNorm").mask(inv))
    '0b1100'
    >>> TypeTerm("Linaer", "type:Linaer", 0, "type:Linaer").mask(inv)
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: type:Linaer names no class in the model, nor a module class loaded in Python (did you mean 'type:Linear'?); use one of the model's classes: LayerNorm, Linear, ...
"""

from __future__ import annotations

import re
import sys
import weakref

from torch import nn

from ..errors import ParamwiseError, closest
from ._selnodes import Selector, _syntax
from .inventory import Inventory

__all__ = ["TypeTerm"]

_NAME = re.compile(r"[A-Za-z_]\w*(?:\.(?:[A-Za-z_]\w*|<locals>))*")


_CLASSES: weakref.WeakKeyDictionary[Inventory, dict[type, None]] = weakref.WeakKeyDictionary()


def _model_classes(inv: Inventory) -> dict[type, None]:
    """Every class in the MRO of every module of the model (cached per inventory)."""
    out = _CLASSES.get(inv)
    if out is None:
        out = {}
        for t in {type(m) for m in (*inv.module_at.values(), *inv.roots, *inv.modules)}:
            out.update(dict.fromkeys(t.__mro__))
        _CLASSES[inv] = out
    return out


def _lookup(path: str) -> object:
    """What an already-imported module holds at ``path`` (``torch.nn.Linear``), read from the
    module namespaces without importing; None when nothing is there."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:k]))
        if obj is None:
            continue
        for attr in parts[k:]:
            obj = vars(obj).get(attr) if hasattr(obj, "__dict__") else None
            if obj is None:
                break
        return obj
    return None


def _loaded_module_class(name: str) -> bool:
    """A subclass of ``nn.Module`` loaded in Python is named ``name`` (``__name__`` or
    ``__qualname__``)."""
    stack, seen = [nn.Module], set()
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        if name in (c.__name__, c.__qualname__):
            return True
        stack.extend(type.__subclasses__(c))
    return False


class TypeTerm(Selector):
    """``type:<name>``: see the module docstring."""

    def __init__(self, cls_name: str, text: str, pos: int, source: str) -> None:
        if not _NAME.fullmatch(cls_name):
            raise _syntax(source, pos + 5, f"{cls_name!r} is not a class name",
                          "write type:<ClassName> or type:<module>.<ClassName>, e.g. type:Linear "
                          "or type:torch.nn.Conv2d")
        self.cls_name, self.text = cls_name, text

    def _names(self, c: type) -> bool:
        x = self.cls_name
        if x in (c.__name__, c.__qualname__, f"{c.__module__}.{c.__qualname__}"):
            return True
        package, _, last = x.rpartition(".")
        return (bool(package) and last == c.__name__
                and (c.__module__ + ".").startswith(package + "."))

    def mask(self, inv: Inventory) -> int:
        return inv.cached_mask(("type", self.cls_name), lambda: self._compute(inv))

    def _compute(self, inv: Inventory) -> int:
        alias = _lookup(self.cls_name) if "." in self.cls_name else None
        found = False

        def test(t: type) -> bool:  # once per class that owns parameters
            nonlocal found
            hit = any(c is alias or self._names(c) for c in t.__mro__)
            found = found or hit
            return hit

        mask = inv.mask_by("types", test)
        if not found:  # then look at every class in the model
            classes = _model_classes(inv)
            if not any(c is alias or self._names(c) for c in classes):
                self._unknown(alias, classes)
        return mask

    def _unknown(self, alias: object, classes: dict[type, None]) -> None:
        """Raise unless the name is a module class loaded in Python (then it matches nothing)."""
        x = self.cls_name
        if alias is not None:
            if isinstance(alias, type) and issubclass(alias, nn.Module):
                return
            kind = "a class" if isinstance(alias, type) else f"a {type(alias).__name__}"
            raise ParamwiseError(
                f"{self.text} names {kind}, not a torch.nn.Module class",
                fix="name the class of the module that owns the parameters, e.g. type:Linear")
        if "." not in x and _loaded_module_class(x):
            return
        present = sorted({c.__name__ for c in classes if issubclass(c, nn.Module)}
                         - {"Module"})
        near = closest(x.rpartition(".")[2], present)
        hint = f" (did you mean 'type:{near[0]}'?)" if near else ""
        mod = x.rpartition(".")[0]
        imported = (f" (paramwise never imports a module for a selector, and {mod!r} is not "
                    "imported)" if mod and mod not in sys.modules else "")
        raise ParamwiseError(
            f"{self.text} names no class in the model, nor a module class loaded in Python"
            f"{imported}{hint}",
            fix=f"use one of the model's classes: {', '.join(present[:12])}"
            + (" ..." if len(present) > 12 else "")
            + " (or import the module that defines the class yourself before building)")

    def describe_miss(self, inv: Inventory) -> str:
        owners = sorted({type(m).__name__ for m in inv.modules})
        alias = _lookup(self.cls_name) if "." in self.cls_name else None
        holders = [p for p, m in inv.module_at.items()
                   if any(c is alias or self._names(c) for c in type(m).__mro__)]
        if holders:
            return (f"modules of class {self.cls_name} own no parameter themselves (their "
                    f"submodules do); select what is under one with module:{holders[0] or '*'}")
        near = closest(self.cls_name.rpartition(".")[2], owners)
        if near:
            return f"the model has no {self.cls_name}; did you mean 'type:{near[0]}'?"
        return f"the model has no {self.cls_name}; parameters are owned by {', '.join(owners[:6])}"
