"""A saved state value laid out like the parameter it loads into: full tensors cut to a DTensor
parameter's placements, DTensors gathered for a plain parameter, other placements redistributed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..step._chunks import is_dtensor

__all__ = ["match_layout"]


def match_layout(param: torch.Tensor, value: object) -> object:
    """A saved state value laid out like ``param``: a full tensor is cut locally (no
    communication) to a DTensor parameter's placements, a DTensor is gathered for a plain
    parameter (collective: every rank loads), another placement is redistributed.

        >>> match_layout(torch.zeros(3), torch.ones(3))    # plain parameter, plain value
        tensor([1., 1., 1.])
    """
    if isinstance(value, Mapping):
        return {k: match_layout(param, v) for k, v in value.items()}
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    p_dt, v_dt = is_dtensor(param), is_dtensor(value)
    if p_dt and not v_dt and tuple(value.shape) == tuple(param.shape):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(param.device), param.device_mesh,  # type: ignore[attr-defined]
                                 param.placements, src_data_rank=None)  # type: ignore[attr-defined]
    if v_dt and not p_dt:
        return value.full_tensor()  # type: ignore[attr-defined]
    if p_dt and v_dt and value.device_mesh == param.device_mesh and \
            tuple(value.placements) != tuple(param.placements):  # type: ignore[attr-defined]
        return value.redistribute(placements=param.placements)  # type: ignore[attr-defined]
    return value
