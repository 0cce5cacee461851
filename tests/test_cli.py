"""The command line: `paramwise inspect` prints the groups a config gives a model; mistakes exit 2
with one line; `python -m paramwise` is the same program."""

import itertools
import json
import re
import subprocess
import sys
import textwrap

import pytest

from paramwise import cli

MODEL = textwrap.dedent("""
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
            self.head = nn.Linear(8, 2)

    def build():
        return Net()

    def needs_args(width):
        return nn.Linear(width, 2)

    def broken():
        raise RuntimeError("weights file is corrupt")

    def not_a_model():
        return 42

    model = build()
""")

CONFIG = textwrap.dedent("""
    optimizer: adamw
    lr: 1.0e-3
    weight_decay: 0.05
    rules:
      - preset: no_decay
      - select: "module:head"
        lr_mult: 10
""")


_COUNT = itertools.count()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A directory with a model module (unique name per test) and a config; cwd is there."""
    name = f"cli_models_{next(_COUNT)}"
    (tmp_path / f"{name}.py").write_text(MODEL)
    (tmp_path / "optim.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_the_group_table_and_explains(project, capsys):
    code, out, err = run(["inspect", f"{project}:build", "--config", "optim.yaml",
                          "--explain", "head.bias"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{project}:build: AdamW, 4 group(s)"
    assert lines[1].split() == ["group", "tensors", "elements", "lr", "weight_decay", "names"]
    assert lines[2].split()[:5] == ["0", "1", "32", "0.001", "0.05"]  # body.0.weight
    assert lines[5].split()[:5] == ["3", "1", "2", "0.01", "0.0"]  # head.bias
    assert "head.bias: shape (2,), roles bias; group 3 of 4" in out
    assert re.search(r"rules\[1\] \('module:head'\) +lr_mult=10\n", out)


def test_inspect_without_config_uses_adamw_or_the_named_optimizer(project, capsys):
    code, out, _ = run(["inspect", f"{project}:model"], capsys)  # an nn.Module object works too
    assert code == 0 and out.startswith(f"{project}:model: AdamW, 1 group(s)")
    code, out, _ = run(["inspect", f"{project}:build", "--config", "optim.yaml",
                        "--optimizer", "sgd"], capsys)
    assert code == 0 and "SGD, 4 group(s)" in out and "momentum" in out


def test_inspect_json(project, capsys):
    code, out, _ = run(["inspect", f"{project}:build", "--config", "optim.yaml", "--json",
                        "--explain", "body.1.weight"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["optimizer"] == "AdamW"
    assert [g["tensors"] for g in data["groups"]] == [1, 3, 1, 1]
    assert data["groups"][1]["names"] == ["body.0.bias", "body.1.weight", "body.1.bias"]
    assert data["groups"][3]["options"]["lr"] == pytest.approx(0.01)
    assert data["groups"][0]["options"]["betas"] == [0.9, 0.999]
    assert data["total"] == {"tensors": 6, "elements": 74}
    assert "roles norm" in data["explain"]["body.1.weight"]


def test_inspect_a_python_file_that_imports_its_sibling(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "blocks_sibling.py").write_text("import torch.nn as nn\nWIDTH = 3\n")
    (pkg / "net.py").write_text("import torch.nn as nn\nfrom blocks_sibling import WIDTH\n"
                                "def build():\n    return nn.Linear(WIDTH, 2)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, out, _ = run(["inspect", str(pkg / "net.py") + ":build", "--optimizer", "sgd"], capsys)
    sys.modules.pop("blocks_sibling", None)
    assert code == 0 and "SGD, 1 group(s)" in out and "weight, bias" in out


@pytest.mark.parametrize("args, message", [
    (["{m}"], r"'{m}' is not MODULE:FACTORY; write e\.g\. mypkg\.models:build"),
    (["no_such_module_xyz:build"], r"no module named 'no_such_module_xyz'"),
    (["{m}:biuld"], r"'{m}' has no attribute 'biuld' \(did you mean 'build'\?\)"),
    (["{m}:broken"], r"{m}:broken\(\) raised RuntimeError: weights file is corrupt"),
    (["{m}:needs_args"], r"calling {m}:needs_args\(\) failed: .*missing 1 required positional"),
    (["{m}:not_a_model"], r"{m}:not_a_model\(\) returned a int, not an nn\.Module"),
    (["missing/model.py:build"], r"file 'missing/model\.py' does not exist"),
    (["{m}:build", "--config", "nope.yaml"], r"config file 'nope\.yaml' does not exist"),
    (["{m}:build", "--optimizer", "adamx"], r"unknown optimizer 'adamx' \(did you mean"),
    (["{m}:build", "--explain", "head.bais"],
     r"no parameter named 'head\.bais' \(did you mean 'head\.bias'\?\)"),
    (["{m}:build", "--config", "bad.yaml"],
     r"bad\.yaml: rules\[0\] key 'select': bad selector 'bias &' at position 6"),
])
def test_errors_exit_2_with_one_line(project, capsys, tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("optimizer: sgd\nlr: 0.1\nrules:\n"
                                       "  - select: 'bias &'\n    lr: 1.0\n")
    args = [a.replace("{m}", project) for a in args]
    code, out, err = run(["inspect", *args], capsys)
    assert code == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("paramwise inspect: error: ")
    assert re.search(message.replace("{m}", project), err), err


def test_debug_shows_the_traceback(project, capsys):
    code, _, err = run(["inspect", f"{project}:broken", "--debug"], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: weights file is corrupt" in err


def test_usage_errors_are_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect"])
    assert info.value.code == 2
    assert "MODULE:FACTORY" in capsys.readouterr().err


def test_demo_command_passes_its_options(monkeypatch, capsys):
    import paramwise.demo

    seen = {}
    monkeypatch.setattr(paramwise.demo, "run", lambda **kw: seen.update(kw))
    assert cli.main(["demo", "--quick", "--out", "x.png", "--parts", "1,3"]) == 0
    assert seen == {"quick": True, "out": "x.png", "parts": "1,3"}


def test_demo_rejects_bad_parts(capsys):
    code, _, err = run(["demo", "--parts", "4"], capsys)
    assert code == 2
    assert err == "paramwise demo: error: --parts '4' is not a list of 1, 2, 3; write e.g. " \
                  "--parts 1,3\n"


def test_python_dash_m_runs_the_same_program(tmp_path):
    (tmp_path / "m_dash.py").write_text(MODEL)
    ok = subprocess.run([sys.executable, "-m", "paramwise", "inspect", "m_dash:build"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("m_dash:build: AdamW, 1 group(s)")


def test_inspect_the_shipped_example_model_and_config(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    code, out, _ = run(["inspect", f"{root / 'tiny_model.py'}:build", "--config",
                        str(root / "optim.yaml"), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    by_name = {n: g["options"] for g in data["groups"] for n in g["names"]}
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-2)           # lr_mult 10
    assert by_name["embed.weight"]["lr"] == pytest.approx(1e-3 * 0.75 ** 5)  # layer_decay
    assert by_name["embed.weight"]["weight_decay"] == 0.0                # no_decay
    assert by_name["blocks.2.mlp.0.weight"]["l1"] == 1e-5
    assert "l1" not in by_name["blocks.2.attn.in_proj_weight"]  # owned by MultiheadAttention
