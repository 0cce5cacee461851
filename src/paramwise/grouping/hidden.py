"""The ``hidden_matrices`` preset: Muon for the hidden 2-D matrices, the default for the rest.

What it selects, and why, is in :func:`hidden_matrices`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ParamwiseError
from ..options.keys import check_key, check_value, resolve_optimizer
from .inventory import Inventory, bools_to_mask
from .layertree import detect
from .rules import Partition, Preset, Rule
from .selectors import Selector

__all__ = ["HiddenMatrices", "hidden_matrices", "hidden_mask"]


class _Fixed(Selector):
    def __init__(self, mask: int, text: str) -> None:
        self._mask, self.text = mask, text

    def mask(self, inv: Inventory) -> int:
        return self._mask


def hidden_mask(inv: Inventory) -> list[bool]:
    """Per entry: a hidden 2-D matrix (see :func:`hidden_matrices`); every alias of a tensor
    alike."""
    layout = detect(inv)
    per_tensor = []
    if layout is not None and not layout.leaf_blocks:
        for e in inv.first:
            per_tensor.append(layout.in_block[e] and "weight" in inv.roles[e]
                              and len(inv.shape(e)) == 2)
    else:
        weights = [u for u, e in enumerate(inv.first) if "weight" in inv.roles[e]]
        middle = set(weights[1:-1])
        per_tensor = [u in middle and len(inv.shape(e)) == 2 for u, e in enumerate(inv.first)]
    return [per_tensor[u] for u in inv.unique]


@dataclass
class HiddenMatrices(Preset):
    """What :func:`paramwise.hidden_matrices` returns: a preset that a rules list holds and the
    build expands against the model."""

    optimizer: type
    options: dict[str, object] = field(default_factory=dict)
    origin: str | None = None

    def with_origin(self, origin: str) -> HiddenMatrices:
        return HiddenMatrices(self.optimizer, dict(self.options), origin)

    def expand(self, inv: Inventory) -> list[Rule | Partition]:
        bits = hidden_mask(inv)
        if not any(bits):
            raise ParamwiseError(
                "hidden_matrices found no hidden 2-D matrix (no weight matrix inside a block, "
                "nor between the input layer and the head)",
                fix=f"send parameters to {self.optimizer.__name__} with a rule of your own, e.g. "
                f"Rule('weight & ndim==2 & module:<blocks>', optimizer='{self.optimizer.__name__.lower()}')")
        text = f"hidden_matrices -> {self.optimizer.__name__}"
        return [Rule(_Fixed(bools_to_mask(bits), text), origin=self.origin,
                     optimizer=self.optimizer, **self.options)]


def hidden_matrices(optimizer: str | type = "muon", **options: object) -> HiddenMatrices:
    """The hidden 2-D matrices to ``optimizer`` (Muon) with ``options``; the rest to the default.

    Muon orthogonalizes each update of a weight *matrix*, which suits the matrices inside the
    repeated blocks and nothing else: the Muon write-up, Moonlight, torch's docs and timm all send
    embeddings, the output head, norms, biases and gains to AdamW. The preset selects

    - with blocks found (the ``ModuleList``/``Sequential`` of blocks :func:`paramwise.layer_decay`
      finds, stages and towers included): every ``weight``-role tensor with exactly 2 dimensions
      inside a block (a stage's downsampling projection included);
    - without blocks, or when the "blocks" are single layers (a ``Sequential`` MLP or ConvNet): the
      ``weight``-role tensors in registration order,
      minus the first (the input layer) and the last (the head), those with 2 dimensions.

    Embeddings (tied heads included: roles belong to the tensor), norms, biases and gains have other
    roles and never qualify. Conv filters (4-D) and fused expert tensors (3-D) stay with the default
    optimizer: ``torch.optim.Muon`` takes 2-D parameters only (the Muon write-up flattens conv
    filters; paramwise does not reshape parameters).

    ``options`` are the optimizer's (``lr``, ``momentum``, ``weight_decay``, ``ns_steps``,
    ``adjust_lr_fn`` ...). For torch's Muon, ``adjust_lr_fn`` defaults to
    ``"match_rms_adamw"`` (Moonlight's scaling: Muon's update RMS matched to AdamW's), so one
    ``lr`` serves both optimizers; pass ``adjust_lr_fn=None`` for Muon's original scaling.
    :func:`paramwise.optimizer` then returns a :class:`paramwise.Hybrid`.

        >>> import paramwise, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 2))
        >>> opt = paramwise.optimizer(net, "adamw", [paramwise.hidden_matrices()], lr=3e-4)
        >>> [type(o).__name__ for o in opt.optimizers]
        ['AdamW', 'Muon']
        >>> opt.part("muon").param_groups[0]["param_names"]
        ['2.weight']
    """
    cls = resolve_optimizer(optimizer)
    opts = dict(options)
    muon = getattr(torch.optim, "Muon", None)
    if muon is not None and issubclass(cls, muon):
        opts.setdefault("adjust_lr_fn", "match_rms_adamw")
        if opts["adjust_lr_fn"] is None:
            del opts["adjust_lr_fn"]
    for k, v in opts.items():
        check_key(k, cls, where="hidden_matrices()")
        check_value(k, v, where="hidden_matrices()")
    return HiddenMatrices(cls, opts)
