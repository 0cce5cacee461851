"""The selector base class and its combinators: n-ary ``|`` and ``&``, ``!``, and the root of a
parsed string; see :mod:`paramwise.grouping.selectors` for the language.

Combinators hold their operands in a flat tuple (``a | b | c`` is one node of three, also when
built with ``sel = sel | name`` in a loop), and :func:`evaluate` and :func:`render` walk a tree
with an explicit stack, so neither a selector of thousands of terms nor one nested thousands of
levels deep meets Python's recursion limit::

    >>> from paramwise.grouping.selectors import parse
    >>> sel = parse("bias")
    >>> for _ in range(3000):
    ...     sel = ~sel
    >>> len(sel.text)
    9004
    >>> (parse("bias") | "norm" | "embedding").text
    '(bias) | (norm) | (embedding)'
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from ..errors import ParamwiseError
from .inventory import Inventory, bools_to_mask

__all__ = ["Selector", "SelectorLike", "coerce_with", "evaluate", "render"]


def _syntax(source: str, pos: int, what: str, fix: str) -> ParamwiseError:
    """A selector syntax error: what and where, with a caret under the position."""
    pointer = " " * pos + "^"
    return ParamwiseError(f"bad selector {source!r} at position {pos}: {what}", fix=fix,
                          detail=f"    {source}\n    {pointer}")


class Selector:
    """A selector: *where* a rule applies. Made by :func:`paramwise.parse` (a :class:`Rule`
    parses its string itself); ``&``, ``|`` and ``~`` combine selectors, and also a selector
    with a string or a ``(name, param, module) -> bool`` callable. ``text`` is the selector
    written out, as messages and :func:`paramwise.explain` show it.

        >>> import paramwise
        >>> sel = paramwise.parse("weight") & ~paramwise.parse("module:head")
        >>> sel.text
        '(weight) & (!(module:head))'
        >>> (paramwise.parse("bias") | "norm").text
        '(bias) | (norm)'
    """

    text: str
    #: The exact parameter name this selector stands for (a glob without wildcards), else None:
    #: an ``|`` of many such names is evaluated with one set lookup per parameter.
    literal: str | None = None
    #: The fnmatch pattern this selector stands for (a glob, ``module:``), else None: an ``|``
    #: of many is evaluated with one regex (one alternation) per parameter.
    glob: str | None = None

    def mask(self, inv: Inventory) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __and__(self, other: SelectorLike) -> Selector:
        return _And.of(self, _coerce(other))

    def __rand__(self, other: SelectorLike) -> Selector:
        return _And.of(_coerce(other), self)

    def __or__(self, other: SelectorLike) -> Selector:
        return _Or.of(self, _coerce(other))

    def __ror__(self, other: SelectorLike) -> Selector:
        return _Or.of(_coerce(other), self)

    def __invert__(self) -> Selector:
        return _Not((self,))

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def describe_miss(self, inv: Inventory) -> str:
        """A hint for a selector that matched nothing (overridden where we can say more)."""
        return f"names look like {inv.names[0]!r}" if inv.names else "the model has no parameters"


SelectorLike = str | Selector | Callable[..., bool]


#: How an operand of ``&``/``|`` that is not yet a Selector (a string, a callable) becomes one:
#: :func:`paramwise.grouping.selectors.as_selector`, which parses strings with a parser built on
#: this module, hands itself over through :func:`coerce_with` when it is imported (always before
#: any selector exists: importing any part of paramwise imports it).
_as_selector: Callable[[SelectorLike], Selector] | None = None


def coerce_with(as_selector: Callable[[SelectorLike], Selector]) -> None:
    """Set how the operators turn a string or a callable operand into a Selector."""
    global _as_selector
    _as_selector = as_selector


def _coerce(obj: SelectorLike) -> Selector:
    if isinstance(obj, Selector):
        return obj
    assert _as_selector is not None, "paramwise.grouping.selectors sets it when imported"
    return _as_selector(obj)


class _Node(Selector):
    """A combinator: its operands in ``kids``; ``text`` rendered on first use."""

    op = ""
    kids: tuple[Selector, ...]
    _text: str | None = None

    def __init__(self, kids: tuple[Selector, ...]) -> None:
        self.kids = kids

    @classmethod
    def of(cls, a: Selector, b: Selector) -> Selector:
        """``a | b`` (or ``a & b``), flattened into one node when a side is already one."""
        return cls((a.kids if type(a) is cls else (a,)) + (b.kids if type(b) is cls else (b,)))

    @property  # type: ignore[override]
    def text(self) -> str:
        return self._text if self._text is not None else render(self)

    def mask(self, inv: Inventory) -> int:
        return evaluate(self, inv)


class _Or(_Node):
    op = "|"
    _split: tuple[frozenset[str], frozenset[str], tuple[Selector, ...]] | None = None

    def split(self) -> tuple[frozenset[str], frozenset[str], tuple[Selector, ...]]:
        """The operands that are exact names (one set), those that are globs (one set, when
        there are several) and the others."""
        if self._split is None:
            names = frozenset(k.literal for k in self.kids if k.literal is not None)
            globs = frozenset(k.glob for k in self.kids if k.glob is not None)
            names, globs = (names if len(names) > 1 else frozenset()), (
                globs if len(globs) > 1 else frozenset())
            rest = tuple(k for k in self.kids if not (k.literal in names or k.glob in globs))
            self._split = (names, globs, rest)
        return self._split


class _And(_Node):
    op = "&"


class _Not(_Node):
    op = "!"


class _Parsed(Selector):
    """The root of a parsed string: keeps the user's own text for messages."""

    def __init__(self, tree: Selector, text: str) -> None:
        self.tree, self.text = tree, text
        self.literal, self.glob = tree.literal, tree.glob

    def mask(self, inv: Inventory) -> int:
        return evaluate(self.tree, inv)

    def describe_miss(self, inv: Inventory) -> str:
        return self.tree.describe_miss(inv)


def _names_mask(names: frozenset[str], globs: frozenset[str], inv: Inventory) -> int:
    """The names in ``names`` or matching a glob of ``globs`` (fnmatch's regexes, one
    alternation: they never backtrack between stars, so the alternation is linear too)."""
    mask = 0
    if names:
        mask = inv.cached_mask(("names", names),
                               lambda: bools_to_mask([n in names for n in inv.names]))
    if globs:
        def compute() -> int:
            m = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in sorted(globs))).match
            return bools_to_mask([m(n) is not None for n in inv.names])

        mask |= inv.cached_mask(("globs", globs), compute)
    return mask


def evaluate(root: Selector, inv: Inventory) -> int:
    """The bitmask of a selector tree, walked with an explicit stack (no recursion)."""
    if not isinstance(root, _Node):
        return root.mask(inv)
    full = inv.all_mask
    # A frame: [node, its operands still to evaluate, the value folded so far].
    stack: list[list] = []

    def push(node: _Node) -> None:
        if isinstance(node, _Or):
            names, globs, rest = node.split()
            stack.append([node, iter(rest), _names_mask(names, globs, inv)])
        else:
            stack.append([node, iter(node.kids), full])

    push(root)
    while True:
        frame = stack[-1]
        kid = next(frame[1], None)
        if kid is None:
            stack.pop()
            value = frame[2] if frame[0].op != "!" else full & ~frame[2]
            if not stack:
                return value
            frame = stack[-1]
        elif isinstance(kid, _Node):
            push(kid)
            continue
        else:
            value = kid.mask(inv)
        op = frame[0].op
        frame[2] = frame[2] | value if op == "|" else frame[2] & value


def render(root: Selector) -> str:
    """The text of a selector tree: ``(a) | (b)``, ``(a) & (b)``, ``!(a)``, written in one
    pass with an explicit stack (linear in the text's length) and kept on the root."""
    if not isinstance(root, _Node):
        return root.text
    out: list[str] = []
    stack: list[Selector | str] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif not isinstance(item, _Node):
            out.append(item.text)
        elif item._text is not None:
            out.append(item._text)
        elif item.op == "!":
            stack += [")", item.kids[0], "!("]
        else:
            sep = f") {item.op} ("
            for i in range(len(item.kids) - 1, -1, -1):
                stack += [")" if i == len(item.kids) - 1 else sep, item.kids[i]]
            stack.append("(")
    root._text = "".join(out)
    return root._text
