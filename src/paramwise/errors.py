"""The one error type, and the helpers that make its messages teach.

Every user-facing problem raises :class:`ParamwiseError`, a :class:`ValueError`, with a message
that says what was expected, what came, and how to fix it, in the user's own names::

    >>> raise ParamwiseError("rule 0 ('*.bais') matched no parameter", fix="did you mean '*.bias'?")
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: rule 0 ('*.bais') matched no parameter; did you mean '*.bias'?
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable

__all__ = ["ParamwiseError", "closest", "did_you_mean", "user_stacklevel"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class ParamwiseError(ValueError):
    """Raised for every mistake in rules, selectors, options, models, configs and checkpoints.

    A ``ValueError``. ``fix`` (optional) is appended after a semicolon, so messages read
    ``"<what went wrong>; <how to fix it>"``; ``detail`` (optional) goes on the lines below,
    e.g. a selector with a caret under the problem. ``problem``, ``fix`` and ``detail`` are kept
    as attributes (an error re-raised with more context keeps them apart).

        >>> import paramwise
        >>> e = paramwise.ParamwiseError("rule 0 ('*.bais') matched no parameter",
        ...                              fix="did you mean '*.bias'?")
        >>> str(e)
        "rule 0 ('*.bais') matched no parameter; did you mean '*.bias'?"
        >>> e.problem, e.fix
        ("rule 0 ('*.bais') matched no parameter", "did you mean '*.bias'?")
    """

    def __init__(self, message: str, *, fix: str | None = None, detail: str | None = None) -> None:
        self.problem = message
        self.fix = fix
        self.detail = detail
        text = f"{message}; {fix}" if fix else message
        super().__init__(f"{text}\n{detail}" if detail else text)


def closest(word: str, candidates: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The candidates that look most like ``word`` (best first), case-insensitively."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=cutoff)
    return [lowered[h] for h in hits]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a close candidate exists, else ``""``."""
    hit = closest(word, candidates)
    return f" (did you mean {hit[0]!r}?)" if hit else ""


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside paramwise, torch
    and ``contextlib``, i.e. at the user's call: for a warning from a step hook, the user's
    ``optimizer.step()`` line, not torch's step wrapper that ran the hook."""
    torch = sys.modules.get("torch")
    skip = (_PACKAGE_DIR,) + ((os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,)
                              if torch is not None and getattr(torch, "__file__", None) else ())
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(skip)
                                        or frame.f_code.co_filename.endswith("contextlib.py")):
        frame, level = frame.f_back, level + 1
    return level  # no user frame at all (a step run from a C++ thread): the outermost one
