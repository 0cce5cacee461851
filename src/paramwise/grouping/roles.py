"""Roles: what a parameter *is* (``bias``, ``norm``, ``embedding``, ``gain``, ``weight``), read
from the class of its owning module, the attribute that holds it and its shape; and the
registries users extend (:func:`register_norm`, :func:`register_wrapper`).

    >>> import torch.nn as nn
    >>> is_norm_module(nn.LayerNorm(4)), is_norm_module(nn.Linear(4, 4))
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..errors import ParamwiseError

__all__ = ["ROLES", "WRAPPER_ATTRS", "NORM_CLASSES", "EMBEDDING_CLASSES", "register_norm",
           "register_wrapper", "is_norm_module", "wrapper_attrs", "is_layer_class", "attr_flags",
           "tensor_roles"]

ROLES = ("bias", "norm", "embedding", "gain", "weight")

# Layer classes whose ``weight*`` parameters are weight matrices/filters whatever their shape
# (a ``Linear(d, 1).weight`` of shape (1, d) is a weight, not a gain). Other classes qualify by
# name (``Conv1D`` of Hugging Face GPT-2, ``ScaledStdConv2d``, ``QuantLinear`` ...).
_LAYER_CLASSES: tuple[type, ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd,
                                    nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase)
# Bare parameters (not a layer's weight or bias) that are learned positions or tokens: the
# ``cls_token``/``pos_embed`` of ViTs, Swin's ``relative_position_bias_table``, CLIP's
# ``class_embedding``. Matched on the attribute name, lower-cased.
_EMBEDDING_WORDS = ("embed", "token", "position")

NORM_CLASSES: list[type] = [
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
]
if hasattr(nn, "RMSNorm"):
    NORM_CLASSES.append(nn.RMSNorm)

EMBEDDING_CLASSES: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)

# Edges that are always wrapper edges, whatever the parent: torch.compile, FSDP1, activation
# checkpointing (names no user module takes). Other edges are wrapper edges only below the
# classes registered for them: ``module`` below DDP/DataParallel, and register_wrapper's pairs.
WRAPPER_ATTRS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
_CLASS_WRAPPERS: list[tuple[type, str]] = [
    (nn.DataParallel, "module"), (nn.parallel.DistributedDataParallel, "module")]


def register_norm(cls: type) -> type:
    """Treat every parameter of modules of class ``cls`` (and subclasses) as role ``norm``.

    Without it, a module is a norm layer when it is one of torch's (BatchNorm, InstanceNorm,
    LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm), or when its class name contains ``norm``,
    it has no submodules and every parameter it owns is at most 1-D. Returns ``cls``, so it is
    usable as a decorator:

        >>> import paramwise, torch
        >>> @paramwise.register_norm
        ... class ScaleNorm(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.scale = torch.nn.Parameter(torch.ones(()))
        >>> paramwise.report(torch.nn.Sequential(ScaleNorm()), [paramwise.no_decay()],
        ...                  optimizer="sgd").rows[0]["names"]
        ['0.scale']
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise _not_a_module_class("register_norm", cls)
    if cls not in NORM_CLASSES:
        NORM_CLASSES.append(cls)
    return cls


def register_wrapper(cls: type, attr: str = "module") -> type:
    """Declare ``cls`` a wrapper whose child ``attr`` holds the real model: below instances of
    ``cls`` (only there) the ``attr`` segment is dropped from canonical names, as the ``module``
    segment of ``DistributedDataParallel`` and ``DataParallel`` is (and ``_orig_mod``,
    ``_fsdp_wrapped_module`` and ``_checkpoint_wrapped_module`` everywhere). Returns ``cls``.

        >>> import paramwise, torch
        >>> class Wrapper(torch.nn.Module):
        ...     def __init__(self, inner):
        ...         super().__init__()
        ...         self.inner = inner
        >>> _ = paramwise.register_wrapper(Wrapper, "inner")
        >>> groups = paramwise.param_groups(Wrapper(torch.nn.Linear(2, 2)))
        >>> groups[0]["param_names"]
        ['weight', 'bias']
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise _not_a_module_class("register_wrapper", cls, f", {attr!r}")
    if (cls, attr) not in _CLASS_WRAPPERS:
        _CLASS_WRAPPERS.append((cls, attr))
    return cls


def _not_a_module_class(fn: str, cls: object, more: str = "") -> ParamwiseError:
    """What ``register_norm``/``register_wrapper`` got instead of a module class, and the call
    that works."""
    name = "MyNorm" if fn == "register_norm" else "MyWrapper"
    fix = "pass the class itself:"
    if isinstance(cls, str):
        got, name = f"the string {cls!r}", cls if cls.isidentifier() else name
    elif isinstance(cls, nn.Module):
        got, name = f"an instance of {type(cls).__name__}", type(cls).__name__
    else:
        got = f"the class {cls.__name__}, which is not one" if isinstance(cls, type) else \
            f"{type(cls).__name__} {cls!r}"[:120]
        fix = "pass a class that subclasses torch.nn.Module, e.g."
    return ParamwiseError(f"{fn} expects an nn.Module subclass, got {got}",
                          fix=f"{fix} paramwise.{fn}({name}{more})")


def wrapper_attrs(t: type) -> frozenset[str]:
    return frozenset(a for c, a in _CLASS_WRAPPERS if issubclass(t, c))


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module``'s parameters get role ``norm``.

    Known classes (BatchNorm*, SyncBatchNorm, InstanceNorm*, LayerNorm, GroupNorm, RMSNorm,
    LocalResponseNorm and anything passed to :func:`register_norm`) always do. Other modules do
    when all three hold: the class name contains ``norm`` (any case: ``MyRMSNorm``,
    ``T5LayerNorm``), the module has no submodules, and every parameter it owns is at most 1-D
    (a per-feature scale or shift, never a weight matrix).
    """
    if isinstance(module, tuple(NORM_CLASSES)):
        return True
    if "norm" not in type(module).__name__.lower() or next(module.children(), None) is not None:
        return False
    own = list(module._parameters.values())
    return bool(own) and all(p is None or p.dim() <= 1 for p in own)


def is_layer_class(t: type) -> bool:
    if issubclass(t, _LAYER_CLASSES):
        return True
    low = t.__name__.lower()
    return "linear" in low or "conv" in low


_BIAS, _NORM, _EMB, _LAYER_WEIGHT = 1, 2, 4, 8
_FLAG_ROLES = ((_BIAS, "bias"), (_NORM, "norm"), (_EMB, "embedding"))


def attr_flags(attr: str, is_norm: bool, is_emb: bool, is_layer: bool) -> int:
    """What one name says of its tensor, as bits: bias, norm, embedding, a layer's weight."""
    bias = _is_bias_attr(attr)
    weightish = attr.startswith("weight") or attr.endswith("_weight")
    flags = _BIAS * bias | _NORM * is_norm | _EMB * is_emb
    if is_layer and weightish:
        flags |= _LAYER_WEIGHT
    elif not (bias or is_norm or is_emb or weightish):
        low = attr.lower()
        if any(w in low for w in _EMBEDDING_WORDS):
            flags |= _EMB
    return flags


def tensor_roles(unique: Sequence[int], shape: Callable[[int], tuple[int, ...]],
                 first: Sequence[int], flags: list[int], emb_extra: set[int]
                 ) -> list[frozenset[str]]:
    """Roles per entry, the same for every name of a tensor: the union of what its names say.
    ``unique``: each entry's tensor; ``shape``: an entry's global shape; ``first``: each
    tensor's first entry; ``flags``: each entry's :func:`attr_flags`; ``emb_extra``: entries
    that are embeddings by their owner.

    ``bias``/``norm``/``embedding`` come from the names; a tensor with none of them is a
    ``gain`` when at most one of its dimensions is larger than 1 (0-d, (C,), (1, 1, C),
    (C, 1, 1)) and it is no layer's weight, else a ``weight`` when it has 2 or more dimensions.
    Only those tensors' shapes are read.
    """
    if len(flags) == len(first):  # no tied tensor: entry i is tensor i
        per_tensor = flags if not emb_extra else [f | _EMB if i in emb_extra else f
                                                 for i, f in enumerate(flags)]
    else:
        per_tensor = [0] * len(first)
        for i, (u, f) in enumerate(zip(unique, flags)):
            per_tensor[u] |= f | _EMB if i in emb_extra else f
    named = _BIAS | _NORM | _EMB
    interned: dict[int, frozenset[str]] = {}
    says: dict[tuple[int, ...], int] = {}  # per shape: 2 = at most one dim > 1, 1 = 2-D or more
    out_t: list[frozenset[str]] = []
    for u, f in enumerate(per_tensor):
        if f & named:
            key = f << 2
        else:  # the shape decides
            s = shape(first[u])
            b = says.get(s)
            if b is None:
                b = says[s] = 2 * (sum(1 for d in s if d > 1) <= 1) | (len(s) >= 2)
            key = f << 2 | b
        fs = interned.get(key)
        if fs is None:
            got = {r for bit, r in _FLAG_ROLES if f & bit}
            if not got:
                if key & 2 and not (f & _LAYER_WEIGHT and key & 1):
                    got = {"gain"}
                elif key & 1:
                    got = {"weight"}
            fs = interned[key] = frozenset(got)
        out_t.append(fs)
    return out_t if len(flags) == len(first) else [out_t[u] for u in unique]


def _is_bias_attr(attr: str) -> bool:
    # Linear/Conv ``bias``, MultiheadAttention ``in_proj_bias``/``bias_k``/``bias_v``,
    # RNN ``bias_ih_l0``/``bias_hh_l0``: read from the owning module's attribute, not the path.
    return attr == "bias" or attr.endswith("_bias") or attr.startswith("bias_")
