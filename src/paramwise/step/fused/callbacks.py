r"""The two callbacks a fused update calls, shared by its eager and traced forms
(:mod:`paramwise.step.fused._eager`, :mod:`paramwise.step.fused._traced`) and by the caller that
builds them (:mod:`paramwise.step._groupstep`).

``Before`` adds the gradient terms ahead of each batch's update; ``Apply`` runs the proximal maps
and the projection after it. A :data:`~paramwise.step.regularizers.Tail` is the last operation of
an adaptive update, :math:`w ← w - a\,u/d`, as ``(u, a)``: with ``defer=True`` the update leaves
it undone and hands ``apply`` :math:`\tilde d = -d/a` instead of :math:`d`, and ``apply`` folds
both into its proximal map (a pass less; see :func:`paramwise.step.regularizers.prox_l1_scaled_`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .._chunks import Piece
from ..regularizers import Tail

__all__ = ["Apply", "Before"]

#: Receives each updated batch: its pieces, the parameter slices, then per piece the
#: denominator :math:`d` (:math:`\tilde d` with a tail), one scratch tensor, the number
#: :math:`k` of the step scale :math:`s = k/d` and the deferred tails
#: (:data:`paramwise.step.regularizers.Tail`; SGD: four empty lists; no tails unless deferred).
Apply = Callable[[list[Piece], list[Tensor], list[Tensor], list[Tensor], list[float],
                  list[Tail]], None]
#: Receives each batch before its update: its pieces, the parameter and gradient slices (to add
#: gradient terms in place, as a step pre-hook would have).
Before = Callable[[list[Piece], list[Tensor], list[Tensor]], None]
