"""Wrapped models (DataParallel/DDP ``module.``, torch.compile ``_orig_mod.``, activation
checkpointing ``_checkpoint_wrapped_module.``) give exactly the bare model's groups.

Real DDP and FSDP1 (``_fsdp_wrapped_module.``) need a process group: tests/test_distributed.py.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

import paramwise
from paramwise.state.checkpoint import load_state_dict, state_dict


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class Net(nn.Module):
    """Has a submodule the *user* called ``module``: that name is not a wrapper edge."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.module = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.module(x))


NAMES = ["emb.weight", "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.fc.weight",
         "blocks.0.fc.bias", "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.fc.weight",
         "blocks.1.fc.bias", "module.weight", "module.bias", "head.weight", "head.bias"]
RULES = [paramwise.no_decay(), paramwise.layer_decay(0.5), paramwise.Rule("type:Linear & weight", momentum=0.8)]


def net() -> Net:
    torch.manual_seed(0)
    return Net()


def groups(model: nn.Module) -> list[dict]:
    return paramwise.param_groups(model, RULES, lr=0.1, weight_decay=0.01, momentum=0.9)


def expected(model: Net) -> list[dict]:
    """The bare model's groups, written out by hand (depths: emb 0, blocks 1-2, rest 3)."""
    p = dict(model.named_parameters())

    def g(names, lr, wd, mom):
        return {"params": [p[n] for n in names], "param_names": names, "lr": lr,
                "weight_decay": wd, "momentum": mom}

    return [
        g(["emb.weight"], 0.1 * 0.125, 0.0, 0.9),
        g(["blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.fc.bias"], 0.1 * 0.25, 0.0, 0.9),
        g(["blocks.0.fc.weight"], 0.1 * 0.25, 0.01, 0.8),
        g(["blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.fc.bias"], 0.1 * 0.5, 0.0, 0.9),
        g(["blocks.1.fc.weight"], 0.1 * 0.5, 0.01, 0.8),
        g(["module.weight", "head.weight"], 0.1, 0.01, 0.8),
        g(["module.bias", "head.bias"], 0.1, 0.0, 0.9),
    ]


def assert_same_groups(got: list[dict], want: list[dict]) -> None:
    assert [g["param_names"] for g in got] == [g["param_names"] for g in want]
    for a, b in zip(got, want):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]], a["param_names"]
        assert {k: v for k, v in a.items() if k != "params"} == \
            {k: v for k, v in b.items() if k != "params"}


def wrap_inner_checkpoint(model: Net) -> Net:
    model.blocks[0] = checkpoint_wrapper(model.blocks[0])
    model.head = checkpoint_wrapper(model.head)
    return model


WRAPPERS = {
    "bare": lambda m: m,
    "module.": nn.DataParallel,                                        # DDP's prefix, on CPU
    "_orig_mod.": torch.compile,
    "module._orig_mod.": lambda m: nn.DataParallel(torch.compile(m)),
    "_orig_mod.module.": lambda m: torch.compile(nn.DataParallel(m)),
    "_checkpoint_wrapped_module.": wrap_inner_checkpoint,
    "everything": lambda m: torch.compile(nn.DataParallel(wrap_inner_checkpoint(m))),
}


def test_the_bare_model_gives_the_hand_written_groups():
    model = net()
    assert [n for n, _ in model.named_parameters()] == NAMES
    assert_same_groups(groups(model), expected(model))


@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_wrapped_model_gives_the_bare_groups(kind):
    model = net()
    want = expected(model)                       # before wrapping: names change in place
    wrapped = WRAPPERS[kind](model)
    raw = [n for n, _ in wrapped.named_parameters()]
    if kind not in ("bare", "everything"):
        assert any(kind in n for n in raw), raw           # the wrapper really is in the names
    assert_same_groups(groups(wrapped), want)


def test_raw_names_seen_by_torch():
    m = net()
    assert next(iter(dict(nn.DataParallel(torch.compile(m)).named_parameters()))) == \
        "module._orig_mod.emb.weight"
    assert next(iter(dict(torch.compile(nn.DataParallel(m)).named_parameters()))) == \
        "_orig_mod.module.emb.weight"
    seq = nn.Sequential(nn.Linear(2, 2))
    seq[0] = checkpoint_wrapper(seq[0])
    assert [n for n, _ in seq.named_parameters()] == ["0._checkpoint_wrapped_module.weight",
                                                      "0._checkpoint_wrapped_module.bias"]
    assert [g["param_names"] for g in paramwise.param_groups(seq, [paramwise.no_decay()],
                                                             weight_decay=0.1)] == \
        [["0.weight"], ["0.bias"]]


def test_model_compile_in_place_gives_the_bare_groups_and_trains():
    model = net()
    want = expected(model)
    model.compile(backend="eager")
    assert_same_groups(groups(model), want)
    opt = paramwise.optimizer(model, "sgd", RULES, lr=0.1, weight_decay=0.01, momentum=0.9)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()


def test_compiled_model_after_compiling_keeps_its_groups():
    model = net()
    want = expected(model)
    compiled = torch.compile(model, backend="eager")
    compiled(torch.tensor([[1, 2, 3]])).sum().backward()      # really compiled once
    assert_same_groups(groups(compiled), want)


def test_explain_and_report_use_canonical_names_on_wrapped_models():
    model = net()
    wrapped = nn.DataParallel(torch.compile(model))
    opt = paramwise.optimizer(wrapped, "sgd", RULES, lr=0.1, weight_decay=0.01, momentum=0.9)
    text = paramwise.explain(opt, "blocks.0.fc.weight")
    assert "blocks.0.fc.weight" in text and "_orig_mod" not in text
    assert paramwise.explain(opt, "module._orig_mod.blocks.0.fc.weight") == text
    assert "_orig_mod" not in str(paramwise.report(opt))


def test_checkpoints_move_between_wrapped_and_bare_models():
    model = net()
    opt = paramwise.optimizer(model, "adamw", RULES[:2], lr=0.1, weight_decay=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.tensor([[1, 2, 3]])).square().mean().backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(state_dict(opt), buf)
    buf.seek(0)
    clone = net()
    clone.load_state_dict(model.state_dict())
    wrapped = torch.compile(nn.DataParallel(wrap_inner_checkpoint(clone)))
    opt2 = paramwise.optimizer(wrapped, "adamw", RULES[:2], lr=0.1, weight_decay=0.01)
    report = load_state_dict(opt2, torch.load(buf, weights_only=True))
    assert report.exact and not report.renamed
    for (n, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"]), n
