"""examples/muon_adamw.py (AdamW alone vs Muon + AdamW on a tiny GPT) in its quick form, and
examples/muon.yaml through ``paramwise inspect``: the split they show is the one chosen by hand."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import paramwise
from paramwise.cli import main as cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example():
    path = EXAMPLES / "muon_adamw.py"
    spec = importlib.util.spec_from_file_location("example_muon_adamw", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def hidden_by_hand(model) -> list[str]:
    """The 2-D weights inside the blocks, listed from the model's own code."""
    return [f"blocks.{i}.{m}.weight" for i in range(len(model.blocks))
            for m in ("qkv", "proj", "fc", "fc_out")]


def names_of(opt) -> set[str]:
    return {n for g in opt.param_groups for n in g["param_names"]}


@pytest.fixture(scope="module")
def example():
    return load_example()


def test_quick_form_trains_both_and_plots(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    runs = example.main(["--quick"])
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []              # --quick writes no PNG unless asked
    assert torch.get_num_threads() == threads          # the example leaves the process as found
    assert list(runs) == ["AdamW", "Muon + AdamW"]
    chance = math.log(example.VOCAB)
    for name, run in runs.items():
        assert len(run["losses"]) == 30 and all(math.isfinite(x) for x in run["losses"]), name
        assert run["last"] < run["first"] - 0.15, (name, run["first"], run["last"])
        assert run["eval"] < chance - 0.1, (name, run["eval"])     # better than guessing
        assert run["floor"] < run["eval"], (name, run["eval"])     # the language's own loss
        assert re.search(rf"^{re.escape(name)}\s+train {run['first']:.3f} -> {run['last']:.3f}"
                         rf"\s+eval {run['eval']:.3f}", out, re.M), out
    # the first run is AdamW alone; the second one optimizer over a Muon and an AdamW part
    adamw, hybrid = runs["AdamW"]["optimizer"], runs["Muon + AdamW"]["optimizer"]
    assert type(adamw) is torch.optim.AdamW
    assert isinstance(hybrid, paramwise.Hybrid)
    assert [type(o) for o in hybrid.optimizers] == [torch.optim.AdamW, torch.optim.Muon]
    model = example.build()
    assert names_of(hybrid.part("muon")) == set(hidden_by_hand(model))
    assert names_of(hybrid.part("adamw")) == {n for n, _ in model.named_parameters()} - \
        set(hidden_by_hand(model))
    # the same start: both runs' first loss is the one of build()'s weights on batch 0
    with torch.no_grad():
        first = example.loss_of(model, example.batch(16, seed=0)).item()
    assert runs["AdamW"]["losses"][0] == pytest.approx(first, abs=1e-6)
    assert runs["Muon + AdamW"]["losses"][0] == pytest.approx(first, abs=1e-6)
    # the report is printed once, for the hybrid
    assert out.count("Muon") >= 1 and re.search(r"^2\s+8\s+98,304\s+Muon\s", out, re.M), out
    example.plot(runs, runs["AdamW"]["floor"], str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def config_with_hand_rule() -> dict:
    cfg = yaml.safe_load((EXAMPLES / "muon.yaml").read_text())
    assert cfg["rules"][1] == {"hidden_matrices": {"momentum": 0.95}}
    cfg["rules"][1] = {"select": "weight & ndim==2 & module:blocks", "optimizer": "muon",
                       "momentum": 0.95, "adjust_lr_fn": "match_rms_adamw"}
    return cfg


def test_config_builds_the_split_a_hand_written_rule_builds(example):
    model = example.build()
    opt = paramwise.from_config(model, EXAMPLES / "muon.yaml")
    ref = paramwise.from_config(model, config_with_hand_rule())
    assert [type(o) for o in opt.optimizers] == [type(o) for o in ref.optimizers]
    for a, b in zip(opt.param_groups, ref.param_groups):
        assert a["param_names"] == b["param_names"]
        assert {k: v for k, v in a.items() if k != "params"} == \
            {k: v for k, v in b.items() if k != "params"}
    muon = opt.part("muon").param_groups
    assert len(muon) == 1 and muon[0]["param_names"] == hidden_by_hand(model)
    assert (muon[0]["momentum"], muon[0]["adjust_lr_fn"], muon[0]["lr"]) == \
        (0.95, "match_rms_adamw", 1e-2)
    adamw = opt.part("adamw")
    assert adamw.defaults["betas"] == (0.9, 0.95) and "betas" not in muon[0]


def test_inspect_shows_the_split(capsys):
    rc = cli(["inspect", str(EXAMPLES / "muon_adamw.py") + ":build", "--config",
              str(EXAMPLES / "muon.yaml"), "--explain", "blocks.1.fc.weight"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r":build: Hybrid, 3 group\(s\)$", out, re.M), out
    assert re.search(r"^group\s+tensors\s+elements\s+optimizer\s", out, re.M), out
    assert re.search(r"^2\s+8\s+98,304\s+Muon\s.*blocks\.0\.qkv\.weight", out, re.M), out
    assert re.search(r"^1\s+1\s+1,536\s+AdamW\s.*head\.weight$", out, re.M), out
    assert re.search(r"^\s+optimizer\s+Muon \(set by rules\[1\]\)$", out, re.M), out
