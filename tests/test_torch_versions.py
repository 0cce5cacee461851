"""The torch versions paramwise declares, and the fused update's version gate
(``paramwise.step.fused.update.TESTED_TORCH``): on a torch whose optimizer steps the fused update was not
checked against, every group keeps torch's own ``step()`` plus the hooks, and still regularizes
as a hand-built reference (torch's optimizer, then the closed-form proximal map) says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import nn

import paramwise
from paramwise.step import _groupstep
from paramwise.step.fused import update as fused
from paramwise.step.hooks import attach, runs_fused

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
F64 = torch.float64


def declared_torch() -> SpecifierSet:
    """The torch specifier in pyproject.toml's ``dependencies`` (read as text: tomllib is 3.11+)."""
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", PYPROJECT.read_text(), re.M | re.S)
    assert deps, "no dependencies list in pyproject.toml"
    (spec,) = re.findall(r'"torch\s*([^"]*)"', deps[1])
    return SpecifierSet(spec)


@pytest.mark.parametrize("version,tested", [
    ("2.13.0", True), ("2.13.0+cpu", True), ("2.14.1", True), ("2.14.1+cu130", True),
    ("2.12.1", False), ("2.15.0", False), ("2.15.0+cpu", False), ("3.13.0", False),
    ("2.14.0a0+gitabc1234", False), ("2.15.0.dev20261101+cpu", False), ("2.14.0rc1", False),
    ("2.13", False), ("", False),
])
def test_only_final_releases_of_tested_lines_count(version, tested):
    assert fused.torch_tested(version) is tested


def test_the_declared_range_is_the_tested_lines_and_admits_this_torch():
    """pyproject.toml admits exactly the release lines the fused update was tested on, and the
    torch running this suite; the gate reads the running version."""
    spec = declared_torch()
    assert spec.contains(Version(torch.__version__).base_version)
    for minor in range(0, 40):
        admitted = spec.contains(f"2.{minor}.0") or spec.contains(f"2.{minor}.9")
        assert admitted == ((2, minor) in fused.TESTED_TORCH), f"torch 2.{minor}"
    assert not spec.contains("3.0.0") and not spec.contains("1.13.1")
    assert fused.TORCH_TESTED is fused.torch_tested(torch.__version__) is True


@pytest.fixture
def untested_torch(monkeypatch):
    """torch reports a release the fused update was not checked against; returns the calls of
    the fused update (which must stay empty)."""
    monkeypatch.setattr(torch, "__version__", "2.15.0")
    monkeypatch.setattr(fused, "TORCH_TESTED", fused.torch_tested())
    calls = []
    real = _groupstep.update_
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: (calls.append(1), real(*a, **k)))
    return calls


def grads(shape, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn(shape, generator=g, dtype=F64) * (1 + step)


def soft(z: torch.Tensor, thr) -> torch.Tensor:
    return torch.sign(z) * torch.clamp(z.abs() - thr, min=0)


CASES = {
    # SGD with momentum μ: the step scale is lr/(1 - μ) (no dampening)
    "sgd_momentum_l1": (torch.optim.SGD, dict(lr=0.05, momentum=0.9), 0.2,
                        lambda st, lr, lam: lr * lam / (1 - 0.9)),
    # Adam: lr/(√v̂ + ε), v̂ with the step's bias correction
    "adam_l1": (torch.optim.Adam, dict(lr=0.1, betas=(0.8, 0.9), eps=1e-3), 2.0,
                lambda st, lr, lam: lr * lam / (
                    (st["exp_avg_sq"] / (1 - 0.9 ** st["step"].item())).sqrt() + 1e-3)),
}


@pytest.mark.parametrize("case", CASES)
def test_untested_torch_keeps_torchs_step_and_the_hooks_regularize(case, untested_torch):
    cls, kw, lam, threshold = CASES[case]
    g0 = torch.Generator().manual_seed(3)
    w = nn.Parameter(torch.randn(30, 7, generator=g0, dtype=F64))
    opt = cls([{"params": [w], "l1": lam}], **kw)
    attach(opt)
    assert not runs_fused(opt, 0)
    plain = cls([w0 := nn.Parameter(w.detach().clone())], **kw)
    for t in range(6):
        g = grads(w.shape, t)
        w0.data.copy_(w.detach())
        w.grad, w0.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
        z = w0.detach()
        torch.testing.assert_close(w.detach(), soft(z, threshold(plain.state[w0], kw["lr"], lam)),
                                   rtol=1e-14, atol=1e-15)
        # the optimizer's own state is torch's, untouched by the regularizer
        for k, v in plain.state[w0].items():
            assert torch.equal(opt.state[w][k], v), k
    assert untested_torch == []
    assert (w == 0).any()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 40) -> None:
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(64, 12, generator=g, dtype=F64), torch.randn(64, 3, generator=g, dtype=F64)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def model_and_optimizer(name: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).to(F64)
    rules = [paramwise.no_decay(), paramwise.Rule("0.weight", l1=2e-2),
             paramwise.Rule("2.weight", group_lasso=5e-2, group_dim=1, max_norm=1.0)]
    kw = dict(lr=0.05, momentum=0.9) if name == "sgd" else dict(lr=0.02)
    return model, paramwise.optimizer(model, name, rules, weight_decay=1e-3, **kw)


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_untested_torch_trains_like_the_fused_path(name, monkeypatch):
    """The same training on the running (tested) torch, where these groups run fused, and on
    a torch the gate does not know: no fused update there, the same weights up to rounding,
    the same exact zeros."""
    fused_model, fused_opt = model_and_optimizer(name)
    assert runs_fused(fused_opt, 0) and "fused" in paramwise.explain(fused_opt, "0.weight")
    train(fused_model, fused_opt)

    monkeypatch.setattr(torch, "__version__", "2.15.0+cpu")
    monkeypatch.setattr(fused, "TORCH_TESTED", fused.torch_tested())
    calls = []
    monkeypatch.setattr(_groupstep, "update_", lambda *a, **k: calls.append(1))
    model, opt = model_and_optimizer(name)
    assert not any(runs_fused(opt, i) for i in range(len(opt.param_groups)))
    assert "fused" not in paramwise.explain(opt, "0.weight")
    train(model, opt)
    assert calls == []
    for (n, p), q in zip(model.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=n)
        assert torch.equal(p == 0, q == 0), n
    assert (model[0].weight == 0).any() and (model[2].weight.norm(dim=0) == 0).any()
