"""The parser of the selector language (the grammar is in :mod:`paramwise.selectors`; use
:func:`paramwise.selectors.parse`, which caches): a recursive descent over the string, one
method per grammar rule, building the selector classes; every syntax error names the
position, shows it with a caret and says how to fix it::

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

from .errors import did_you_mean
from .inventory import ROLES
from .selectors import (
    Selector,
    _All,
    _And,
    _Glob,
    _Module,
    _Ndim,
    _Not,
    _Or,
    _Regex,
    _Role,
    _syntax,
    _Type,
)

__all__ = ["Parser"]

_NDIM = re.compile(r"ndim\s*(<=|>=|==|!=|<|>|=)\s*(\d+)")
_STOP = set(" \t\n|&()")


class Parser:
    """One selector string → its :class:`~paramwise.selectors.Selector` tree (``parse()``)."""

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
        tree = self.or_()
        if self.peek():
            c = self.peek()
            what = "unbalanced ')'" if c == ")" else f"unexpected {c!r}"
            raise _syntax(self.s, self.i, what, "join terms with '|' (or), '&' (and), '!' (not)")
        return tree

    def or_(self) -> Selector:
        node = self.and_()
        while self.peek() == "|":
            self.i += 1
            node = _Or(node, self.and_())
        return node

    def and_(self) -> Selector:
        node = self.not_()
        while self.peek() == "&":
            self.i += 1
            node = _And(node, self.not_())
        return node

    def not_(self) -> Selector:
        c = self.peek()
        if c == "!":
            self.i += 1
            return _Not(self.not_())
        if c == "(":
            start = self.i
            self.i += 1
            node = self.or_()
            if self.peek() != ")":
                raise _syntax(self.s, start, "this '(' is never closed", "add the missing ')'")
            self.i += 1
            return node
        return self.term()

    def term(self) -> Selector:
        s, start = self.s, self.i
        if start >= len(s) or s[start] in "|&)":
            what = "end of selector" if start >= len(s) else repr(s[start])
            raise _syntax(s, start, f"expected a term, found {what}",
                          "put a role, glob, type:, module:, ndim or re: term here")
        m = _NDIM.match(s, start)
        if m:
            self.i = m.end()
            return _Ndim(m.group(1), int(m.group(2)), m.group(0))
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
                return _Type(arg, word, start, s)
            if kind == "module":
                return _Module(arg, word)
            if kind == "name":
                return _Glob(arg, word)
            if arg not in ROLES:
                raise _syntax(s, start + 5, f"unknown role {arg!r}{did_you_mean(arg, ROLES)}",
                              f"roles are {', '.join(ROLES)}")
            return _Role(arg)
        if sep and kind in ("ndim",):
            raise _syntax(s, start, "ndim needs a comparison", "write ndim<2, ndim>=2, ndim==1")
        if word.startswith("ndim"):
            raise _syntax(s, start, "ndim needs a comparison and a number",
                          "write ndim<2, ndim>=2 or ndim==1")
        if word in ROLES:
            return _Role(word)
        if word in ("all", "*"):
            return _All()
        if sep and not any(ch in kind for ch in "*?[."):
            raise _syntax(s, start, f"unknown prefix {kind + ':'!r}"
                          f"{did_you_mean(kind, ['type', 'module', 'name', 'role', 're'])}",
                          "prefixes are type:, module:, name:, role: and re:")
        if word.count("[") != word.count("]"):
            raise _syntax(s, start + word.index("[") if "[" in word else j,
                          "unbalanced '[' in glob", "close the character class, e.g. blocks.[0-5].*")
        return _Glob(word, word)

    def regex(self, start: int) -> Selector:
        s = self.s
        j = start + 3
        if j < len(s) and s[j] in "\"'":
            q = s[j]
            end = s.find(q, j + 1)
            if end < 0:
                raise _syntax(s, j, "unterminated quoted regex", f"close it with {q}")
            self.i = end + 1
            return _Regex(s[j + 1:end], s[start:end + 1], start + 1, s)
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
        return _Regex(s[j:k], s[start:k], start, s)
