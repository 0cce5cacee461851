"""The parser of the selector language (the grammar is in :mod:`paramwise.grouping.selectors`; use
:func:`paramwise.grouping.selectors.parse`, which caches): one left-to-right pass over the string with an
explicit stack of open parentheses, so neither thousands of ``|``-ed terms nor thousands of
nested ``(`` or ``!`` meet Python's recursion limit. ``a | b | c`` becomes one n-ary node and
``!!x`` is ``x``. Every syntax error names the position, shows it with a caret and says how to
fix it::

    >>> Parser("bias | !type:Linear").parse()
    Selector('(bias) | (!(type:Linear))')
    >>> Parser("bias | (norm").parse()
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: bad selector 'bias | (norm' at position 7: this '(' is never closed; add the missing ')'
        bias | (norm
               ^
"""

from __future__ import annotations

import re

from ..errors import did_you_mean
from ._selnodes import Selector, _And, _Not, _Or, _syntax
from ._selterms import All, Glob, Module, Ndim, Regex, Role
from ._seltype import TypeTerm
from .roles import ROLES

__all__ = ["Parser"]

_NDIM = re.compile(r"ndim\s*(<=|>=|==|!=|<|>|=)\s*(\d+)")
_STOP = set(" \t\n|&()")


class _Group:
    """An open parenthesis (or the whole string): its or-ed and-groups so far."""

    __slots__ = ("start", "negate", "ors", "ands")

    def __init__(self, start: int, negate: bool) -> None:
        self.start, self.negate = start, negate
        self.ors: list[Selector] = []
        self.ands: list[Selector] = []

    def close_and(self) -> None:
        self.ors.append(self.ands[0] if len(self.ands) == 1 else _And(tuple(self.ands)))
        self.ands = []

    def close(self) -> Selector:
        self.close_and()
        node = self.ors[0] if len(self.ors) == 1 else _Or(tuple(self.ors))
        return _Not((node,)) if self.negate else node


class Parser:
    """One selector string → its :class:`~paramwise.grouping.selectors.Selector` tree (``parse()``)."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.s[self.i] if self.i < len(self.s) else ""

    def parse(self) -> Selector:
        if not self.s.strip():
            raise _syntax(self.s, 0, "the selector is empty",
                          "write e.g. 'bias | norm', '*.weight' or 'all'")
        groups = [_Group(0, False)]
        negate = False  # the parity of the '!'s before the next operand
        operand = True  # an operand comes next (else an operator, ')' or the end)
        while True:
            c = self.peek()
            if operand:
                if c == "!":
                    negate, self.i = not negate, self.i + 1
                elif c == "(":
                    groups.append(_Group(self.i, negate))
                    negate, self.i = False, self.i + 1
                else:
                    node = self.term()
                    groups[-1].ands.append(_Not((node,)) if negate else node)
                    negate, operand = False, False
            elif c in ("&", "|"):
                if c == "|":
                    groups[-1].close_and()
                self.i += 1
                operand = True
            elif c == ")":
                if len(groups) == 1:
                    raise _syntax(self.s, self.i, "unbalanced ')'",
                                  "remove it, or add the matching '(' before")
                node = groups.pop().close()
                groups[-1].ands.append(node)
                self.i += 1
            elif not c:
                if len(groups) > 1:
                    raise _syntax(self.s, groups[-1].start, "this '(' is never closed",
                                  "add the missing ')'")
                return groups[0].close()
            else:
                raise _syntax(self.s, self.i, f"unexpected {c!r}",
                              "join terms with '|' (or), '&' (and), '!' (not)")

    def term(self) -> Selector:
        s, start = self.s, self.i
        if start >= len(s) or s[start] in "|&)":
            what = "end of selector" if start >= len(s) else repr(s[start])
            raise _syntax(s, start, f"expected a term, found {what}",
                          "put a role, glob, type:, module:, ndim or re: term here")
        m = _NDIM.match(s, start)
        if m:
            self.i = m.end()
            return Ndim(m.group(1), int(m.group(2)), m.group(0))
        if s.startswith("re:", start):
            return self.regex(start)
        j = start
        while j < len(s) and s[j] not in _STOP:
            j += 1
        self.i = j
        word = s[start:j]
        kind, sep, arg = word.partition(":")
        if sep and kind in ("type", "module", "name", "role"):
            if not arg:
                raise _syntax(s, j, f"'{kind}:' needs a value",
                              {"type": "e.g. type:Linear", "module": "e.g. module:backbone",
                               "name": "e.g. name:*.bias", "role": "e.g. role:norm"}[kind])
            if kind == "type":
                return TypeTerm(arg, word, start, s)
            if kind == "module":
                return Module(arg, word)
            if kind == "name":
                return Glob(arg, word)
            if arg not in ROLES:
                raise _syntax(s, start + 5, f"unknown role {arg!r}{did_you_mean(arg, ROLES)}",
                              f"roles are {', '.join(ROLES)}")
            return Role(arg)
        if sep and kind in ("ndim",):
            raise _syntax(s, start, "ndim needs a comparison", "write ndim<2, ndim>=2, ndim==1")
        if word.startswith("ndim"):
            raise _syntax(s, start, "ndim needs a comparison and a number",
                          "write ndim<2, ndim>=2 or ndim==1")
        if word in ROLES:
            return Role(word)
        if word in ("all", "*"):
            return All()
        if sep and not any(ch in kind for ch in "*?[."):
            raise _syntax(s, start, f"unknown prefix {kind + ':'!r}"
                          f"{did_you_mean(kind, ['type', 'module', 'name', 'role', 're'])}",
                          "prefixes are type:, module:, name:, role: and re:")
        if word.count("[") != word.count("]"):
            raise _syntax(s, start + word.index("[") if "[" in word else j,
                          "unbalanced '[' in glob", "close the character class, e.g. blocks.[0-5].*")
        return Glob(word, word)

    def regex(self, start: int) -> Selector:
        s = self.s
        j = start + 3
        if j < len(s) and s[j] in "\"'":
            q = s[j]
            end = s.find(q, j + 1)
            if end < 0:
                raise _syntax(s, j, "unterminated quoted regex", f"close it with {q}")
            self.i = end + 1
            return Regex(s[j + 1:end], s[start:end + 1], start + 1, s)
        depth, k = 0, j
        while k < len(s):
            ch = s[k]
            if ch == "\\":
                k += 2
                continue
            if ch in "([":
                depth += 1
            elif ch in ")]":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (ch.isspace() or ch in "&|"):
                break
            k += 1
        if k == j:
            raise _syntax(s, j, "'re:' needs a regular expression", "e.g. re:.*\\.bias")
        self.i = k
        return Regex(s[j:k], s[start:k], start, s)
