"""The report table against golden files, and its data form."""

import os
from pathlib import Path

import torch
from torch import nn

import paramwise

GOLDEN = Path(__file__).parent / "golden"


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16))
                                     for _ in range(4)])
        self.head = nn.Linear(16, 10)
        self.frozen = nn.Linear(16, 2)
        self.frozen.requires_grad_(False)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PARAMWISE_UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text(), f"{name} changed; PARAMWISE_UPDATE_GOLDEN=1 rewrites it"


def build():
    torch.manual_seed(0)
    model = Small()
    return model, paramwise.optimizer(
        model, "adamw", [paramwise.no_decay(), paramwise.Rule("module:head", lr_mult=10)],
        lr=1e-3, weight_decay=0.05)


def test_report_table_golden():
    _, opt = build()
    check_golden("report_adamw.txt", str(paramwise.report(opt)))


def test_report_of_model_and_rules_golden():
    model = Small()
    rep = paramwise.report(model, [paramwise.Rule("bias | norm", weight_decay=0.0)],
                           weight_decay=1e-4, sample=2)
    check_golden("report_rules.txt", str(rep))


def test_explain_golden():
    _, opt = build()
    check_golden("explain_head_bias.txt", paramwise.explain(opt, "head.bias"))


def test_report_data():
    model, opt = build()
    d = paramwise.report(opt).to_dict()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert d["total"] == {"tensors": len(trainable), "elements": sum(p.numel() for p in trainable)}
    assert d["frozen"] == {"tensors": 2, "elements": 34}
    assert [g["tensors"] for g in d["groups"]] == [len(g["params"]) for g in opt.param_groups]
    assert d["groups"][0]["options"]["weight_decay"] == 0.0
    assert d["groups"][-1]["names"] == ["head.bias"]
    assert d["shared"]["betas"] == (0.9, 0.999)
