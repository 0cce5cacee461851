"""The terms of the selector language (roles, globs, ``module:``, ``ndim``, ``re:``, ``all``) and
selector callables; ``type:`` lives in :mod:`paramwise.grouping._seltype`, the grammar in
:mod:`paramwise.grouping.selectors`.

Each term computes its bitmask once per inventory (``Inventory.cached_mask``). A ``re:`` regex
is bounded before it runs (:mod:`paramwise.grouping._regexguard`), and a callable's answer must be a
bool::

    >>> from paramwise.grouping.selectors import parse
    >>> parse("re:(a+)+b")
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: bad selector 're:(a+)+b' at position 3: the regex '(a+)+b' could hang: a repeat over a part that can end in several ways (like (a+)+, (a|ab)* or (\\.\\d+)*) can take exponential time; ...
"""

from __future__ import annotations

import fnmatch
import operator
import re
import sys
from collections.abc import Callable
from itertools import repeat

import torch

from ..errors import ParamwiseError, closest
from ._regexguard import REF_LEN, check
from ._selnodes import Selector, _syntax
from .inventory import Inventory, bools_to_mask

__all__ = ["Role", "All", "Glob", "Module", "Ndim", "Regex", "FromCallable", "glob_mask",
           "longest_name"]

_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "=": operator.eq, "!=": operator.ne}
_REGEX_FIX = ("write it without a repeat inside a repeat (a+b, not (a+)+b), make the inner "
              "repeat possessive (a++) or atomic ((?>a+)) on Python 3.11+, or use a glob "
              "(*a*b*), which never backtracks")


class Role(Selector):
    def __init__(self, role: str) -> None:
        self.role = self.text = role

    def mask(self, inv: Inventory) -> int:
        role = self.role
        return inv.cached_mask(("role", role), lambda: inv.mask_by("roles", lambda r: role in r))

    def describe_miss(self, inv: Inventory) -> str:
        present = sorted({r for rs in inv.roles for r in rs})
        return f"the model has no {self.role!r} parameters (roles present: {', '.join(present)})"


class All(Selector):
    text = "all"

    def mask(self, inv: Inventory) -> int:
        return inv.all_mask


class Glob(Selector):
    """A glob on the canonical name; one without ``*?[`` is an exact name (``literal``)."""

    def __init__(self, pattern: str, text: str) -> None:
        self.pattern, self.text = pattern, text
        if any(ch in pattern for ch in "*?["):
            self.glob = pattern
        else:
            self.literal = pattern

    def mask(self, inv: Inventory) -> int:
        def compute() -> int:
            if self.literal is not None:
                return bools_to_mask(map(operator.eq, inv.names, repeat(self.literal)))
            return glob_mask(self.pattern, inv.names)

        return inv.cached_mask(("glob", self.pattern), compute)

    def describe_miss(self, inv: Inventory) -> str:
        return suggest_glob(self.pattern, inv.names, "")


def glob_mask(pattern: str, names: list[str]) -> int:
    """The names ``pattern`` matches (fnmatch, case-sensitive). A literal prefix then one ``*``
    (``head.*``, and ``module:blocks.3`` is ``blocks.3.*``) is the same as a prefix test, which
    runs at C speed; other globs run fnmatch's regex, which never backtracks between stars
    (atomic groups), so it is safe."""
    head = pattern[:-1]
    if pattern.endswith("*") and not any(ch in head for ch in "*?["):
        return bools_to_mask(map(str.startswith, names, repeat(head)))
    m = re.compile(fnmatch.translate(pattern)).match
    return bools_to_mask([m(n) is not None for n in names])


def suggest_glob(pattern: str, names: list[str], prefix: str, suffix: str = "") -> str:
    """Correct a glob segment by segment against the words the names are made of."""
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


def longest_name(inv: Inventory) -> int:
    """The length of the inventory's longest name (cached)."""
    return inv.cached_mask(("longest name",), lambda: max(map(len, inv.names), default=0))


class Regex(Selector):
    """``re:<regex>``: a full match, refused when its backtracking could hang (see
    :mod:`paramwise.grouping._regexguard`): checked for names of 256 characters when parsed, and again
    for the model's longest name if that is longer."""

    def __init__(self, regex: str, text: str, pos: int, source: str) -> None:
        try:
            self._match = re.compile(regex).fullmatch
        except re.error as e:
            raise _syntax(source, pos + 3 + (e.pos or 0), f"invalid regular expression: {e.msg}",
                          "check the regex, or quote it: re:\"...\"") from None
        except RecursionError:
            raise _syntax(source, pos, "the regular expression is nested too deeply for Python's "
                          "re", "use fewer nested groups") from None
        why = check(regex)
        if why is not None:
            raise _syntax(source, pos + 3, f"the regex {regex!r} could hang: {why}", _REGEX_FIX)
        self.regex, self.text = regex, text

    def mask(self, inv: Inventory) -> int:
        longest = longest_name(inv)
        if longest > REF_LEN:
            why = check(self.regex, longest)
            if why is not None:
                name = max(inv.names, key=len)
                raise ParamwiseError(
                    f"selector {self.text!r} could hang on the model's longest name ({longest} "
                    f"characters, {name[:60]!r}...): {why}", fix=_REGEX_FIX)
        m = self._match
        return inv.cached_mask(("re", self.regex),
                               lambda: bools_to_mask([m(n) is not None for n in inv.names]))


class Module(Selector):
    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text
        self.glob = path + ".*"

    def mask(self, inv: Inventory) -> int:
        return inv.cached_mask(("module", self.path),
                               lambda: glob_mask(self.glob, inv.names))  # type: ignore[arg-type]

    def describe_miss(self, inv: Inventory) -> str:
        return suggest_glob(self.path, inv.names, "module:", ".*")


class Ndim(Selector):
    def __init__(self, op: str, value: int, text: str) -> None:
        self.op, self.value, self.text = op, value, text

    def mask(self, inv: Inventory) -> int:
        f, v = _CMP[self.op], self.value
        return inv.cached_mask(("ndim", self.op, v),
                               lambda: inv.mask_by("ndims", lambda d: f(d, v)))


class FromCallable(Selector):
    """A callable ``(name, param, module) -> bool``, called once per parameter name.

    It must answer with a ``bool`` (a NumPy bool or a 0-d bool tensor also counts); anything
    else (``None``, ``'False'``, ``1``, a float tensor) is an error rather than a truthiness
    guess, and an exception it raises comes back as a :class:`ParamwiseError` naming the
    callable and the parameter, chained to the original.
    """

    def __init__(self, fn: Callable[..., bool]) -> None:
        self.fn = fn
        self.text = getattr(fn, "__name__", None) or repr(fn)
        code = getattr(fn, "__code__", None)
        self.where = f" (defined at {code.co_filename}:{code.co_firstlineno})" if code else ""

    def mask(self, inv: Inventory) -> int:
        fn, bits = self.fn, []
        for n, p, m in zip(inv.names, inv.params, inv.modules):
            try:
                r = fn(n, p, m)
            except Exception as e:
                raise ParamwiseError(
                    f"selector callable {self.text!r}{self.where} raised "
                    f"{type(e).__name__}: {e} on parameter {n!r}",
                    fix="fix the callable: it is called as fn(name, param, module) for every "
                    "parameter, with the canonical name (e.g. 'encoder.0.weight'), the tensor "
                    "and the module that owns it") from e
            bits.append(r if type(r) is bool else self._as_bool(r, n))
        return bools_to_mask(bits)

    def _as_bool(self, r: object, name: str) -> bool:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(r, np.bool_):
            return bool(r)
        what = f"{type(r).__name__} {r!r}"
        if isinstance(r, torch.Tensor):
            what = f"a {r.dtype} tensor of shape {tuple(r.shape)}"
            if r.dtype == torch.bool and r.dim() == 0:
                if r.device.type != "meta":
                    return bool(r.item())
                what = "a bool tensor on the meta device (it holds no value)"
        raise ParamwiseError(
            f"selector callable {self.text!r}{self.where} returned {what} for parameter "
            f"{name!r}; a selector callable must return a bool",
            fix="return True or False, e.g. `return name.endswith('.bias')` or "
            "`return p.dim() >= 2` (paramwise does not guess from truthiness: 'False' is a "
            "true string, and None usually means a missing return)")
