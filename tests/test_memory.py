"""Extra memory: every allocation paramwise's step hooks make is at most about one chunk, never
a parameter-sized temporary (measured with torch's profiler on a parameter 16x the chunk)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from paramwise.step import _chunks
from paramwise.step.hooks import attach

CONFIGS = [
    (torch.optim.Adam, {}, {"l1": 1e-3}),                      # fused with Adam's update
    (torch.optim.AdamW, {}, {"group_lasso": 1e-3, "l2_to_init": 0.1}),
    (torch.optim.Adam, {}, {"l1": 1e-3, "prox_scale": "lr"}),  # post-step, lr-scaled
    (torch.optim.Adam, {"foreach": True}, {"l1": 1e-3, "l2": 1e-3}),  # post-step, adaptive
    (torch.optim.SGD, {"momentum": 0.9}, {"l1": 1e-3, "prox": False}),
    (torch.optim.SGD, {"momentum": 0.9}, {"group_lasso": 1e-3, "max_norm": 0.5}),
    (torch.optim.RMSprop, {}, {"l1": 1e-3}),
    (torch.optim.Adagrad, {}, {"group_lasso": 1e-3}),
]


def largest_allocation_in_hooks(opt: torch.optim.Optimizer) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = prof.events()
    scopes = [e.time_range for e in events if e.name.startswith("paramwise::")]
    assert len(scopes) == 2
    return max([e.self_cpu_memory_usage for e in events
                if any(s.start <= e.time_range.start and e.time_range.end <= s.end
                       for s in scopes)], default=0)


@pytest.mark.parametrize("cls,kw,reg", CONFIGS, ids=lambda c: getattr(c, "__name__", None))
def test_hooks_allocate_at_most_one_chunk(cls, kw, reg, monkeypatch):
    monkeypatch.setitem(_chunks.DEFAULT_LIMITS, "cpu", 1 << 16)
    w = torch.nn.Parameter(torch.randn(1024, 1024))
    w.grad = torch.randn_like(w)
    opt = cls([{"params": [w], **reg}], lr=1e-3, **kw)
    attach(opt)
    opt.step()                                     # state and anchors exist
    chunk = 2 * (1 << 16) * w.element_size()       # the fused path's work buffer
    largest = largest_allocation_in_hooks(opt)
    assert 0 <= largest <= chunk, f"{largest / 2**20:.1f} MiB in one allocation"
    assert w.numel() * w.element_size() >= 8 * chunk
