"""Selectors: the small language that says *where* a rule applies.

One grammar, the same in Python and in config files::

    expr  := or
    or    := and ('|' and)*
    and   := not ('&' not)*
    not   := '!' not | '(' expr ')' | term
    term  := bias | norm | embedding | gain | weight roles read from the module tree
           | type:Linear | type:torch.nn.Conv2d      owning module's class (subclasses too)
           | module:backbone | module:blocks.*       everything under a submodule
           | ndim<2 | ndim>=2 | ndim==1 ...          the parameter's (global) number of dims
           | re:<regex> | re:"<regex>"              full match on the canonical name
           | <glob> | name:<glob>                    fnmatch on the canonical name ('*.bias')
           | all                                     every parameter

Strings are parsed once into :class:`Selector` objects, which combine in Python with
``&``, ``|`` and ``~`` and also accept callables ``(name, param, module) -> bool``::

    >>> sel = parse("weight & !module:head")
    >>> sel
    Selector('weight & !module:head')
    >>> (parse("bias") | parse("norm")).text
    '(bias) | (norm)'

A selector evaluates to a bitmask over the entries of an :class:`~paramwise.inventory.Inventory`
(bit i set when entry i matches), so ``&``/``|``/``!`` cost one big-integer operation each.
"""

from __future__ import annotations

import fnmatch
import importlib
import operator
import re
from collections.abc import Callable

from .errors import ParamwiseError
from .inventory import Inventory, bools_to_mask

__all__ = ["Selector", "parse", "as_selector", "SelectorLike"]

_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "=": operator.eq, "!=": operator.ne}


def _syntax(source: str, pos: int, what: str, fix: str) -> ParamwiseError:
    pointer = " " * pos + "^"
    return ParamwiseError(f"bad selector {source!r} at position {pos}: {what}", fix=fix,
                          detail=f"    {source}\n    {pointer}")


class Selector:
    """A parsed selector. ``mask(inv)`` → bitmask over the inventory's entries."""

    text: str

    def mask(self, inv: Inventory) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __and__(self, other: SelectorLike) -> Selector:
        return _And(self, as_selector(other))

    def __or__(self, other: SelectorLike) -> Selector:
        return _Or(self, as_selector(other))

    def __invert__(self) -> Selector:
        return _Not(self)

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def describe_miss(self, inv: Inventory) -> str:
        """A hint for a selector that matched nothing (overridden where we can say more)."""
        return f"names look like {inv.names[0]!r}" if inv.names else "the model has no parameters"


SelectorLike = str | Selector | Callable[..., bool]


class _Role(Selector):
    def __init__(self, role: str) -> None:
        self.role = self.text = role

    def mask(self, inv: Inventory) -> int:
        return inv.cached_mask(("role", self.role),
                               lambda: bools_to_mask([self.role in r for r in inv.roles]))

    def describe_miss(self, inv: Inventory) -> str:
        present = sorted({r for rs in inv.roles for r in rs})
        return f"the model has no {self.role!r} parameters (roles present: {', '.join(present)})"


class _All(Selector):
    text = "all"

    def mask(self, inv: Inventory) -> int:
        return inv.all_mask


class _Glob(Selector):
    def __init__(self, pattern: str, text: str) -> None:
        self.pattern, self.text = pattern, text
        self._match = re.compile(fnmatch.translate(pattern)).match

    def mask(self, inv: Inventory) -> int:
        m = self._match
        return inv.cached_mask(("glob", self.pattern),
                               lambda: bools_to_mask([m(n) is not None for n in inv.names]))

    def describe_miss(self, inv: Inventory) -> str:
        return _suggest_glob(self.pattern, inv.names, "")


def _suggest_glob(pattern: str, names: list[str], prefix: str, suffix: str = "") -> str:
    """Correct a glob segment by segment against the words the names are made of."""
    from .errors import closest

    vocab = {seg for n in names for seg in n.split(".")}
    fixed, changed = [], False
    for seg in pattern.split("."):
        if seg in vocab or any(ch in seg for ch in "*?[") or not seg:
            fixed.append(seg)
            continue
        hit = closest(seg, vocab, cutoff=0.7)
        fixed.append(hit[0] if hit else seg)
        changed = changed or bool(hit)
    guess = ".".join(fixed)
    example = f"names look like {names[0]!r}" if names else "the model has no parameters"
    if changed and any(re.match(fnmatch.translate(guess + suffix), n) for n in names):
        return f"{example}; did you mean '{prefix}{guess}'?"
    tops = sorted({n.split(".")[0] for n in names})
    listed = ", ".join(repr(t) for t in tops[:6]) + (" ..." if len(tops) > 6 else "")
    return f"{example}; top-level names are {listed}"


class _Regex(Selector):
    def __init__(self, regex: str, text: str, pos: int, source: str) -> None:
        try:
            self._match = re.compile(regex).fullmatch
        except re.error as e:
            raise _syntax(source, pos + 3 + (e.pos or 0), f"invalid regular expression: {e.msg}",
                          "check the regex, or quote it: re:\"...\"") from None
        self.regex, self.text = regex, text

    def mask(self, inv: Inventory) -> int:
        m = self._match
        return inv.cached_mask(("re", self.regex),
                               lambda: bools_to_mask([m(n) is not None for n in inv.names]))


class _Module(Selector):
    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text
        self._match = re.compile(fnmatch.translate(path + ".*")).match

    def mask(self, inv: Inventory) -> int:
        m = self._match
        return inv.cached_mask(("module", self.path),
                               lambda: bools_to_mask([m(n) is not None for n in inv.names]))

    def describe_miss(self, inv: Inventory) -> str:
        return _suggest_glob(self.path, inv.names, "module:", ".*")


class _Type(Selector):
    def __init__(self, cls_name: str, text: str, pos: int, source: str) -> None:
        self.cls_name, self.text = cls_name, text
        self._cls: type | None = None
        if "." in cls_name:
            mod, _, attr = cls_name.rpartition(".")
            try:
                self._cls = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError):
                raise _syntax(source, pos + 5, f"cannot import class {cls_name!r}",
                              f"use a dotted path that imports (torch.nn.{attr}) or the bare "
                              f"class name (type:{attr})") from None

    def _hit(self, cls: type) -> bool:
        if self._cls is not None:
            return issubclass(cls, self._cls)
        return any(c.__name__ == self.cls_name for c in cls.__mro__)

    def mask(self, inv: Inventory) -> int:
        def compute() -> int:
            by_cls: dict[type, bool] = {}
            bits = []
            for mod in inv.modules:
                t = type(mod)
                hit = by_cls.get(t)
                if hit is None:
                    hit = by_cls[t] = self._hit(t)
                bits.append(hit)
            return bools_to_mask(bits)

        return inv.cached_mask(("type", self.cls_name), compute)

    def describe_miss(self, inv: Inventory) -> str:
        from .errors import closest

        present = sorted({type(m).__name__ for m in inv.modules})
        near = closest(self.cls_name.rpartition(".")[2], present)
        return (f"did you mean 'type:{near[0]}'?" if near else
                f"parameters are owned by {', '.join(present[:6])}")


class _Ndim(Selector):
    def __init__(self, op: str, value: int, text: str) -> None:
        self.op, self.value, self.text = op, value, text

    def mask(self, inv: Inventory) -> int:
        f, v = _CMP[self.op], self.value
        return inv.cached_mask(("ndim", self.op, v),
                               lambda: bools_to_mask([f(d, v) for d in inv.ndims]))


class _Callable(Selector):
    def __init__(self, fn: Callable[..., bool]) -> None:
        self.fn = fn
        self.text = getattr(fn, "__name__", repr(fn))

    def mask(self, inv: Inventory) -> int:
        fn = self.fn
        return bools_to_mask(bool(fn(n, p, m))
                             for n, p, m in zip(inv.names, inv.params, inv.modules))


class _And(Selector):
    def __init__(self, a: Selector, b: Selector) -> None:
        self.a, self.b = a, b
        self.text = f"({a.text}) & ({b.text})"

    def mask(self, inv: Inventory) -> int:
        return self.a.mask(inv) & self.b.mask(inv)


class _Or(Selector):
    def __init__(self, a: Selector, b: Selector) -> None:
        self.a, self.b = a, b
        self.text = f"({a.text}) | ({b.text})"

    def mask(self, inv: Inventory) -> int:
        return self.a.mask(inv) | self.b.mask(inv)


class _Not(Selector):
    def __init__(self, a: Selector) -> None:
        self.a = a
        self.text = f"!({a.text})"

    def mask(self, inv: Inventory) -> int:
        return inv.all_mask & ~self.a.mask(inv)


class _Parsed(Selector):
    """The root of a parsed string: keeps the user's own text for messages."""

    def __init__(self, tree: Selector, text: str) -> None:
        self.tree, self.text = tree, text

    def mask(self, inv: Inventory) -> int:
        return self.tree.mask(inv)

    def describe_miss(self, inv: Inventory) -> str:
        return self.tree.describe_miss(inv)


_CACHE: dict[str, Selector] = {}


def parse(text: str) -> Selector:
    """Parse a selector string (cached); raises :class:`ParamwiseError` with the position."""
    if not isinstance(text, str):
        raise ParamwiseError(f"a selector must be a string, got {type(text).__name__} {text!r}",
                             fix="join several with '|', e.g. 'bias | norm'")
    sel = _CACHE.get(text)
    if sel is None:
        from ._selparse import Parser  # (here: it builds the term classes above)

        sel = _CACHE[text] = _Parsed(Parser(text).parse(), text)
    return sel


def as_selector(obj: SelectorLike) -> Selector:
    """A string, a :class:`Selector` or a ``(name, param, module) -> bool`` callable → Selector."""
    if isinstance(obj, Selector):
        return obj
    if isinstance(obj, str):
        return parse(obj)
    if callable(obj):
        return _Callable(obj)
    raise ParamwiseError(
        f"a rule's selector must be a string, a Selector or a callable (name, param, module) -> "
        f"bool; got {type(obj).__name__} {obj!r}",
        fix="e.g. Rule('bias | norm', weight_decay=0.0)",
    )
