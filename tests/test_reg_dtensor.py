"""Regularizers on DTensor parameters (one-process gloo mesh): same numbers as plain tensors."""

from __future__ import annotations

import pytest
import torch

from paramwise.step.hooks import attach
from paramwise.step.monitor import penalty, stats

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)
dtensor = pytest.importorskip("torch.distributed.tensor")

F64 = torch.float64


@pytest.fixture(scope="module")
def mesh():
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dtensor.init_device_mesh("cpu", (1,))
    if created:
        dist.destroy_process_group()


GROUPS = [
    {"l1": 1e-2, "l2": 1e-2, "max_norm": 1.5},
    {"group_lasso": 5e-2, "decoupled_decay": 1e-1},
    {"l1": 1e-2, "prox": False, "l2_to_init": 1e-1},
]


def run(cls, make_param, steps=4):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(8, 6, generator=g, dtype=F64) for _ in GROUPS]
    ps = [make_param(t) for t in init]
    opt = cls([{"params": [p], **o} for p, o in zip(ps, GROUPS)], lr=0.05)
    attach(opt)
    for _ in range(steps):
        for p in ps:
            gr = torch.randn(8, 6, generator=g, dtype=F64)
            p.grad = make_param(gr).detach()
        opt.step()
    return opt, ps


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("placement", ["shard", "replicate"])
def test_dtensor_params_match_plain_tensors(mesh, cls, placement):
    place = [dtensor.Shard(0)] if placement == "shard" else [dtensor.Replicate()]

    def as_dtensor(t):
        return torch.nn.Parameter(dtensor.distribute_tensor(t.clone(), mesh, place))

    opt_d, ds = run(cls, as_dtensor)
    opt_p, ps = run(cls, lambda t: torch.nn.Parameter(t.clone()))
    for d, p in zip(ds, ps):
        assert isinstance(d, dtensor.DTensor)
        torch.testing.assert_close(d.full_tensor(), p.detach(), rtol=1e-12, atol=1e-14)
    pen = penalty(opt_d)
    assert not isinstance(pen, dtensor.DTensor)
    torch.testing.assert_close(pen, penalty(opt_p), rtol=1e-12, atol=1e-14)
    pen.backward()
    assert ds[0].grad is not None
    assert stats(opt_d)[1]["zero_rows"] == stats(opt_p)[1]["zero_rows"]
