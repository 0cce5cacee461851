r"""A bound on how long Python's backtracking ``re`` can take to match a regex, computed from the
pattern before it ever runs, so a ``re:`` selector cannot hang the build.

``re`` backtracks: ``(a+)+b`` on ``"a" * 34`` tries every way of splitting the ``a``'s between the
two repeats (2**33 of them) before it fails. :func:`worst_steps` walks the parsed pattern and
bounds the steps of a full match on a name of ``n`` characters, by counting, for every part, how
many ways it can end from one start (``exits``) and what trying them all costs (``cost``):

- a sequence multiplies exits (each way the first part ends is a start for the next), except
  where a repeat of one character class is followed by a part that cannot start with that class
  (``\d+\.``, ``\w+_``): then only the repeat's longest run can continue;
- a branch adds its alternatives' exits (takes the largest when their first characters differ);
- a repeat of ``k`` iterations multiplies its body's exits ``k`` times: a body with one way to
  end gives a linear repeat, a body with several (``a+``, ``a|a``, ``.*``) an exponential one;
- atomic groups, possessive repeats and lookarounds end one way.

The bound covers every construct ``re`` parses (an unknown one counts as unbounded) and
over-estimates, sometimes by a lot (``.*a.*b.*c`` by about 3! = 6). :func:`check` refuses a regex whose bound on a name of ``n`` characters passes
:data:`BUDGET` and says why::

    >>> check(r"blocks\.\d+\..*") is None
    True
    >>> print(check(r"(a+)+b"))
    a repeat over a part that can end in several ways (like (a+)+, (a|ab)* or (\.\d+)*) can take exponential time
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

try:  # Python 3.11+
    from re import _compiler as _sre_compile
    from re import _constants as _c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_compile as _sre_compile  # type: ignore[no-redef]
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["BUDGET", "REF_LEN", "worst_steps", "check"]

#: Names are assumed this long when a regex is checked before the model is known.
REF_LEN = 256
#: The most backtracking steps a regex may take on one name (about a second of ``re``).
BUDGET = 1e8

_INF = math.inf
_POSSESSIVE = getattr(_c, "POSSESSIVE_REPEAT", None)
_ATOMIC = getattr(_c, "ATOMIC_GROUP", None)
_CHAR_OPS = {_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN}


class _Part(NamedTuple):
    exits: float  # how many ways the part can end, from one start
    cost: float  # the steps to try all of them, from one start
    first: frozenset[int] | None  # code points a non-empty match can start with (None: any)
    nullable: bool  # may match the empty string
    minw: int  # the fewest characters it consumes
    char: Callable[[str], object] | None  # a one-character part: its matcher
    run: Callable[[str], object] | None  # a variable repeat of one character class: its matcher


def _geo(b: float, lo: int, hi: float) -> float:
    """``b**lo + ... + b**hi`` (``inf`` when it overflows)."""
    if hi < lo:
        return 0.0
    if b == 1 or hi == 0:
        return hi - lo + 1
    if b > 1 and (hi + 1) * math.log(b) > 700:
        return _INF
    return (b ** (hi + 1) - b ** lo) / (b - 1)


class _Walker:
    def __init__(self, state: object, n: int) -> None:
        self.state, self.n = state, n

    def matcher(self, node: tuple, flags: int) -> Callable[[str], object] | None:
        """``re``'s own test of one character against a one-character node (exact, also under
        ignore-case); None when it cannot be built (then nothing is assumed about it)."""
        try:
            sub = _sre_parse.SubPattern(self.state, [node])
            return _sre_compile.compile(sub, flags).fullmatch
        except Exception:  # pragma: no cover - a parse tree this Python cannot recompile
            return None

    def seq(self, items: list, flags: int) -> _Part:
        parts = [self.node(op, av, flags) for op, av in items]
        exits, cost, first, nullable, minw = 1.0, 0.0, frozenset(), True, 0
        for i, p in enumerate(parts):
            e = p.exits
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            if (p.run is not None and nxt is not None and not nxt.nullable
                    and nxt.first is not None
                    and not any(p.run(chr(ch)) for ch in nxt.first)):
                cost += exits * e  # each shorter run fails on the next part's first character
                e = 1.0
            cost += exits * p.cost
            exits *= e
            if nullable:
                first = None if first is None or p.first is None else first | p.first
            nullable = nullable and p.nullable
            minw += p.minw
        char = parts[0].char if len(parts) == 1 else None
        run = parts[0].run if len(parts) == 1 else None
        return _Part(exits, cost, first, nullable, minw, char, run)

    def node(self, op: object, av: object, flags: int) -> _Part:
        n = self.n
        if op in _CHAR_OPS:
            first: frozenset[int] | None = None
            if not flags & re.IGNORECASE:
                if op is _c.LITERAL:
                    first = frozenset([av])  # type: ignore[list-item]
                elif op is _c.IN and all(o is _c.LITERAL or (o is _c.RANGE and a[1] - a[0] < 256)
                                         for o, a in av):  # type: ignore[union-attr]
                    first = frozenset(ch for o, a in av  # type: ignore[union-attr]
                                      for ch in ([a] if o is _c.LITERAL else range(a[0], a[1] + 1)))
            return _Part(1.0, 1.0, first, False, 1, self.matcher((op, av), flags), None)
        if op is _c.AT:
            return _Part(1.0, 1.0, frozenset(), True, 0, None, None)
        if op is _c.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            return self.seq(sub, (flags | add) & ~remove)
        if op is _c.BRANCH:
            alts = [self.seq(a, flags) for a in av[1]]  # type: ignore[index]
            firsts = [a.first for a in alts]
            disjoint = (all(f is not None for f in firsts) and not any(a.nullable for a in alts)
                        and sum(len(f) for f in firsts) == len(frozenset().union(*firsts)))
            exits = max(a.exits for a in alts) if disjoint else sum(a.exits for a in alts)
            first = None if any(f is None for f in firsts) else frozenset().union(*firsts)
            return _Part(exits, sum(a.cost for a in alts), first, any(a.nullable for a in alts),
                         min(a.minw for a in alts), None, None)
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT) or (_POSSESSIVE is not None and op is _POSSESSIVE):
            lo, hi, sub = av  # type: ignore[misc]
            body = self.seq(sub, flags)
            cap = n // body.minw + 1 if body.minw else n + 1
            lo_e, top = min(lo, cap), min(hi, cap)
            exits = _geo(body.exits, lo_e, top)
            cost = body.cost * _geo(body.exits, 0, top - 1) + exits
            run = body.char if lo != hi and op is not _POSSESSIVE else None
            return _Part(1.0 if op is _POSSESSIVE else exits, cost, body.first,
                         lo == 0 or body.nullable, lo * body.minw, None, run)
        if _ATOMIC is not None and op is _ATOMIC:
            body = self.seq(av, flags)  # type: ignore[arg-type]
            return _Part(1.0, body.cost, body.first, body.nullable, body.minw, None, None)
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            body = self.seq(av[1], flags)  # type: ignore[index]
            return _Part(1.0, body.cost + body.exits, frozenset(), True, 0, None, None)
        if op is _c.GROUPREF:
            return _Part(1.0, n + 1.0, None, True, 0, None, None)
        if op is _c.GROUPREF_EXISTS:
            _group, yes, no = av  # type: ignore[misc]
            a, b = self.seq(yes, flags), self.seq(no or [], flags)
            return _Part(a.exits + b.exits, a.cost + b.cost + 1, None, True, 0, None, None)
        return _Part(_INF, _INF, None, True, 0, None, None)  # a construct we cannot bound


def worst_steps(regex: str | re.Pattern[str], n: int, search: bool = False) -> float:
    """An upper bound on ``re``'s steps to ``fullmatch`` the regex against any ``n``-character
    string (``search=True``: to ``search`` it, i.e. from each of the ``n + 1`` starts);
    ``inf``: exponential. Raises ``RecursionError`` for a regex nested too deeply."""
    tree = _sre_parse.parse(regex.pattern if isinstance(regex, re.Pattern) else regex)
    whole = _Walker(tree.state, n).seq(list(tree), tree.state.flags)
    return (whole.cost + whole.exits) * (n + 1 if search else 1)


def check(regex: str | re.Pattern[str], n: int = REF_LEN, search: bool = False) -> str | None:
    """None when the regex matches (or, with ``search=True``, searches) an ``n``-character name
    within :data:`BUDGET` steps, else why not (the regex must compile)."""
    try:
        steps = worst_steps(regex, n, search)
    except RecursionError:
        return "it is nested too deeply to bound its backtracking"
    if steps <= BUDGET:
        return None
    growth = worst_steps(regex, 2 * n, search) / steps if steps < _INF else _INF
    if growth > (128 if search else 64):  # faster than n**6: exponential
        return ("a repeat over a part that can end in several ways (like (a+)+, (a|ab)* or "
                "(\\.\\d+)*) can take exponential time")
    if growth < (3 if search else 1.5):  # barely grows with n: alternatives, not repeats
        return (f"alternatives that can match the same text, repeated or in a row (like "
                f"(a|a){{30}}), can be tried in about {steps:.0e} ways")
    return (f"its unbounded repeats in a row (like .*a.*b.*c.*) can take about {steps:.0e} "
            f"steps on a {n}-character name")
