"""One optimizer per rule: which optimizer class each parameter goes to, and the checks per class.

``optimizer`` is an option like ``lr``: a rule may set it (a class, a ``torch.optim`` name or an
import path) and the last matching rule wins; parameters no such rule reaches go to the default
optimizer (the one passed to :func:`paramwise.optimizer`). Then, per class in play:

- **defaults** (keyword arguments, top-level config keys) go to every class that accepts them;
  a default that no class in play accepts is an error;
- **rule options** are checked against the class of every parameter they reach: a key that class
  does not take is an error naming the rule, the class and the parameters;
- **class constraints** are checked before anything is built: ``Muon`` takes 2-D parameters only,
  ``LBFGS`` one param group (and no other optimizer beside it), ``SparseAdam`` sparse gradients
  (an ``Embedding``/``EmbeddingBag`` with ``sparse=True``).

    >>> import torch
    >>> accepts(torch.optim.Muon, "betas"), accepts(torch.optim.AdamW, "betas")
    (False, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

import torch
from torch import nn

from ..errors import ParamwiseError, closest
from ..options.keys import known_keys, optimizer_defaults, paramwise_keys, sets

__all__ = ["accepts", "bool_options", "check_key_any", "check_constraints", "constrained",
           "class_name"]


def class_name(cls: type | None) -> str:
    return "the optimizer" if cls is None else cls.__name__


@cache
def bool_options(cls: type | None) -> frozenset[str]:
    """The options of ``cls``'s signature whose default is a bool (none for ``None``)."""
    if cls is None:
        return frozenset()
    return frozenset(k for k, v in optimizer_defaults(cls).items() if isinstance(v, bool))


def accepts(cls: type | None, key: str) -> bool:
    """Whether a group of ``cls`` may carry ``key`` (paramwise's own keys always)."""
    if key in paramwise_keys():
        return True
    valid = known_keys(cls)
    return valid is None or key in valid


def check_key_any(key: str, classes: Sequence[type | None], *, where: str) -> None:
    """Raise unless some class in play takes ``key`` (typos get the closest key of any)."""
    if any(accepts(c, key) for c in classes):
        return
    valid: set[str] = set()
    for c in classes:
        valid |= set(known_keys(c) or ())
    hit = closest(key, valid)
    owners = " or ".join(dict.fromkeys(class_name(c) for c in classes))
    fix = f"use {hit[0]!r}" if hit else (
        f"valid options include {', '.join(sorted(valid - paramwise_keys())[:8])}")
    raise ParamwiseError(f"{sets(where)} unknown option {key!r} for {owners}"
                         + (f" (did you mean {hit[0]!r}?)" if hit else ""), fix=fix)


def wrong_class_fix(key: str, cls: type, others: Iterable[type | None]) -> str:
    """How to fix a rule option that ``cls`` does not take."""
    takers = [class_name(c) for c in others if c is not cls and accepts(c, key)]
    if key == "weight_decay":
        return (f"{cls.__name__} has no weight decay of its own: use paramwise's "
                "(no_decay(key='l2') / Rule(..., l2=...)) or scope the rule to the other "
                "optimizer's parameters")
    if takers:
        return (f"{key} is an option of {' and '.join(dict.fromkeys(takers))}: narrow the rule's "
                f"selector to those parameters (e.g. add '& !<selector of the {cls.__name__} "
                "rule>')")
    return f"remove {key} from the rule, or send these parameters to an optimizer that takes it"


def _sample(names: list[str], shapes: list[tuple[int, ...]], k: int = 3) -> str:
    shown = ", ".join(f"{n!r} {tuple(s)}" for n, s in zip(names[:k], shapes[:k]))
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _senders(bad: list[tuple]) -> str:
    return ", ".join(dict.fromkeys(b[3] for b in bad))


#: A parameter as the checks name it: (name, global shape, owning module, what sent it there).
Member = tuple[str, tuple[int, ...], nn.Module, str]


def constrained(cls: type | None) -> bool:
    """Whether :func:`check_constraints` has anything to check for ``cls``."""
    muon = getattr(torch.optim, "Muon", None)
    return cls is not None and (issubclass(cls, (torch.optim.LBFGS, torch.optim.SparseAdam))
                                or (muon is not None and issubclass(cls, muon)))


def check_constraints(n_groups: dict[type | None, int],
                      members: Callable[[type, Callable[[int, nn.Module], bool]], list[Member]]
                      ) -> None:
    """Muon/LBFGS/SparseAdam constraints; ``n_groups`` maps each class in play to its number of
    groups, ``members(cls, test)`` gives the parameters of ``cls`` that fail ``test(ndim,
    owning module)``, in group order (so only those are described)."""
    muon = getattr(torch.optim, "Muon", None)
    for cls in n_groups:
        if cls is None:
            continue
        if muon is not None and issubclass(cls, muon):
            bad = members(cls, lambda ndim, mod: ndim != 2)
            if bad:
                by_default = all(b[3].startswith("the default") for b in bad)
                fix = ("make another optimizer the default and send the hidden matrices to "
                       f"{cls.__name__}: paramwise.optimizer(model, 'adamw', "
                       "[paramwise.hidden_matrices(), ...])") if by_default else (
                       "add '& ndim==2' to that rule's selector, or use "
                       "paramwise.hidden_matrices() (hidden 2-D matrices to Muon, the rest to "
                       "the default optimizer)")
                raise ParamwiseError(
                    f"{cls.__name__} takes only 2-D parameters, but {_senders(bad)} sent it "
                    f"{len(bad)} that are not: {_sample([b[0] for b in bad], [b[1] for b in bad])}",
                    fix=fix)
        if issubclass(cls, torch.optim.LBFGS):
            if len(n_groups) > 1:
                raise ParamwiseError(
                    f"LBFGS re-evaluates the loss inside step() and cannot share a step with "
                    f"{', '.join(class_name(c) for c in n_groups if c is not cls)}",
                    fix="freeze the parameters LBFGS should not train (requires_grad=False) and "
                    "build LBFGS alone")
            if n_groups[cls] > 1:
                raise ParamwiseError(
                    f"LBFGS supports one param group, but the rules give its parameters "
                    f"{n_groups[cls]} different option sets",
                    fix="drop the rules that set per-parameter options (e.g. no_decay(): LBFGS "
                    "has no weight decay), so every parameter shares one set")
        if issubclass(cls, torch.optim.SparseAdam):
            bad = members(cls, lambda ndim, mod: not getattr(mod, "sparse", False))
            if bad:
                raise ParamwiseError(
                    f"SparseAdam needs sparse gradients, but {_senders(bad)} sent it {len(bad)} "
                    f"parameters whose gradients are dense: "
                    f"{_sample([b[0] for b in bad], [b[1] for b in bad])}",
                    fix="send only the weights of nn.Embedding(..., sparse=True) to SparseAdam, "
                    "e.g. Rule('type:Embedding', optimizer='sparseadam'), and the rest to a "
                    "dense optimizer")

