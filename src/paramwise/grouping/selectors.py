"""Selectors: the small language that says *where* a rule applies.

One grammar, the same in Python and in config files; :func:`parse` writes it out.

Strings are parsed once into :class:`Selector` objects, which combine in Python with
``&``, ``|`` and ``~`` and also accept callables ``(name, param, module) -> bool``::

    >>> sel = parse("weight & !module:head")
    >>> sel
    Selector('weight & !module:head')
    >>> (parse("bias") | parse("norm")).text
    '(bias) | (norm)'

A selector evaluates to a bitmask over the entries of an
:class:`~paramwise.grouping.inventory.Inventory`
(bit i set when entry i matches), so ``&``/``|``/``!`` cost one big-integer operation each.

Limits, none of them Python's recursion limit: ``|`` and ``&`` are n-ary (a ``select:`` list of
thousands of names is one node, and exact names are looked up in one set); nesting depth
(parentheses, ``!``, combining in Python) is unbounded, since parsing, evaluating and rendering
walk the tree with explicit stacks. The parts that run user input are bounded too:

- ``re:`` regexes are refused when parsed if their backtracking could hang: paramwise bounds the
  steps of Python's ``re`` from the pattern (:mod:`paramwise.grouping._regexguard`) and refuses a regex
  that could take more than 10**8 on a 256-character name (or on the model's longest name, when
  longer): a repeat over a part that can end in several ways (``(a+)+``, ``(a|ab)*``) or four
  unbounded repeats in a row (``.*a.*b.*c.*``). Globs never backtrack (fnmatch's regexes use
  atomic groups).
- ``type:`` names are resolved against the classes in the model (and module classes already
  loaded), never by importing (:mod:`paramwise.grouping._seltype`).
- a callable must return a ``bool`` (or a NumPy bool, or a 0-d bool tensor); what it raises is
  re-raised as a :class:`ParamwiseError` naming it and the parameter.
"""

from __future__ import annotations

from ..errors import ParamwiseError
from ._selnodes import Selector, SelectorLike, _Parsed, coerce_with
from ._selparse import Parser
from ._selterms import FromCallable

__all__ = ["Selector", "parse", "as_selector", "SelectorLike"]

_CACHE: dict[str, Selector] = {}
_CACHE_SIZE = 4096


def parse(text: str) -> Selector:
    """Parse a selector string into a :class:`paramwise.Selector` (cached by text).

    The grammar, the same in Python and in config files::

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

    Names are canonical: wrapper segments (``module.`` of DDP, ``_orig_mod.`` of
    ``torch.compile``, ``_fsdp_wrapped_module.``, ...) removed. A syntax error raises
    :class:`paramwise.ParamwiseError` with the position and a caret; a ``re:`` regex whose
    backtracking could hang is refused, and ``type:`` never imports anything.

        >>> import paramwise
        >>> paramwise.parse("weight & !module:head")
        Selector('weight & !module:head')
    """
    if not isinstance(text, str):
        raise ParamwiseError(f"a selector must be a string, got {type(text).__name__} {text!r}",
                             fix="join several with '|', e.g. 'bias | norm'")
    sel = _CACHE.get(text)
    if sel is None:
        sel = _Parsed(Parser(text).parse(), text)
        if len(_CACHE) >= _CACHE_SIZE:  # selectors built in a loop: keep memory bounded
            _CACHE.clear()
        _CACHE[text] = sel
    return sel


def as_selector(obj: SelectorLike) -> Selector:
    """A string, a :class:`Selector` or a ``(name, param, module) -> bool`` callable → Selector."""
    if isinstance(obj, Selector):
        return obj
    if isinstance(obj, str):
        return parse(obj)
    if callable(obj):
        return FromCallable(obj)
    raise ParamwiseError(
        f"a rule's selector must be a string, a Selector or a callable (name, param, module) -> "
        f"bool; got {type(obj).__name__} {obj!r}",
        fix="e.g. Rule('bias | norm', weight_decay=0.0)",
    )


coerce_with(as_selector)  # the operators of every Selector accept strings and callables
