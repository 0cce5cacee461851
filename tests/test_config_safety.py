"""Nothing in a config runs code, nothing hangs, and values are typed: issue 13's config, value
and message cases. Each asserts the error type, that the message names the problem and the fix,
and (where code could run) that it did not."""

import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule

yaml = pytest.importorskip("yaml")


def net():
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module in the working directory whose import writes a marker file."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "evilmod.py").write_text(textwrap.dedent(f"""
        import torch
        open({str(marker)!r}, "w").write("imported")
        class X(torch.optim.SGD):
            pass
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("evilmod", None)
    yield marker
    sys.modules.pop("evilmod", None)


@pytest.mark.parametrize("cfg", [
    {"optimizer": "evilmod:X", "lr": 0.1},
    {"optimizer": "sgd", "lr": 0.1, "rules": [{"select": "bias", "optimizer": "evilmod:X"}]},
    {"optimizer": "sgd", "lr": 0.1, "rules": [{"hidden_matrices": {"optimizer": "evilmod:X"}}]},
])
def test_a_config_never_imports_a_module(evil_module, cfg):
    with pytest.raises(ParamwiseError, match=r"optimizer 'evilmod:X' lives in module 'evilmod', "
                       r"which is not imported, and a config file never imports a module .*"
                       r"allow_imports=\['evilmod'\]"):
        paramwise.from_config(net(), cfg)
    assert not evil_module.exists()  # its import-time code never ran


def test_allowed_or_already_imported_modules_resolve(evil_module):
    opt = paramwise.from_config(net(), {"optimizer": "evilmod:X", "lr": 0.1},
                                allow_imports=["evilmod"])
    assert type(opt).__name__ == "X" and evil_module.exists()
    # now imported by the caller: a config may name it without an allowance
    opt = paramwise.from_config(net(), {"optimizer": "evilmod:X", "lr": 0.1})
    assert type(opt).__name__ == "X"
    assert type(paramwise.from_config(net(), {"optimizer": "torch.optim:AdamW"})) is \
        torch.optim.AdamW


def test_the_zen_of_python_is_not_printed():
    code = ("import paramwise, torch\n"
            "try:\n"
            "    paramwise.from_config(torch.nn.Linear(2, 2), {'optimizer': 'this:s'})\n"
            "except paramwise.ParamwiseError as e:\n"
            "    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Beautiful is better" not in out and "ERR" in out and "'this'" in out


def test_yaml_alias_bomb_and_deep_nesting_are_refused_quickly(tmp_path):
    # 9 levels of 9 aliases: 9**9 values if expanded, 90 nodes as YAML holds them
    lines = ["  - &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for i in range(1, 10):
        lines.append(f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    bombs = "\n".join(lines)
    t0 = time.perf_counter()
    for key, message in (("rules", r"rules\[0\] is \[1, 2, 3, 4, 5, 6, \.\.\.\], not a rule"),
                         ("betas", r"\.yaml: the top level sets betas to a list too long or too deeply nested")):
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"optimizer: adam\nlr: 0.1\n{key}:\n{bombs}\n")
        with pytest.raises(ParamwiseError, match=message):
            paramwise.from_config(net(), path)
    assert time.perf_counter() - t0 < 5
    deep = tmp_path / "deep.yaml"
    deep.write_text("optimizer: sgd\nlr: 0.1\nrules: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ParamwiseError, match=r"nested (too deeply|more than 32 levels)"):
        paramwise.from_config(net(), deep)
    with pytest.raises(ParamwiseError, match=r"nested more than 32 levels deep"):
        nested: list = []
        for _ in range(100):
            nested = [nested]
        paramwise.from_config(net(), {"optimizer": "sgd", "lr": 0.1, "rules": nested})


def test_duplicate_yaml_keys_binary_files_and_bad_interpolations(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("optimizer: sgd\nlr: 0.1\nmomentum: 0.9\nlr: 100.0\n")
    with pytest.raises(ParamwiseError, match=r"dup\.yaml': key 'lr' is written twice in one "
                       r"mapping \(line 2 and line 4\); keep one of them"):
        paramwise.from_config(net(), dup)
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x80\x81\xff\x00PK")
    with pytest.raises(ParamwiseError, match=r"is not UTF-8 text .*; pass a YAML text file"):
        paramwise.from_config(net(), binary)
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"optimizer": "sgd", "lr": "${missing.lr}"})
    with pytest.raises(ParamwiseError, match=r"OmegaConf cannot resolve the config.*"
                       r"fix the interpolation"):
        paramwise.from_config(net(), cfg)


@pytest.mark.parametrize("make", [
    lambda: Rule("all", maximize="False"),
    lambda: Rule("all", amsgrad="False"),
    lambda: Rule("all", nesterov="no"),
    lambda: paramwise.optimizer(net(), "sgd", lr=0.1, maximize="false"),
    lambda: paramwise.from_config(net(), {"optimizer": "sgd", "lr": 0.1, "maximize": "false"}),
])
def test_strings_are_not_booleans(make):
    with pytest.raises(ParamwiseError, match=r"must be True or False, not the string '(False|no|"
                       r"false)'.*write \w+=True or \w+=False"):
        make()


def test_bool_options_of_a_third_party_signature_are_typed_too():
    class Opt(torch.optim.SGD):
        def __init__(self, params, lr=0.1, shuffle_rows=False):
            super().__init__(params, lr=lr)

    with pytest.raises(ParamwiseError, match=r"sets shuffle_rows='yes' for Opt: shuffle_rows must "
                       r"be True or False"):
        paramwise.optimizer(net(), Opt, [Rule("bias", shuffle_rows="yes")])


def test_multipliers_that_overflow_or_underflow_are_errors():
    with pytest.raises(ParamwiseError, match=r"lr = 1e\+308 \* 10.0 overflows to inf "
                       r"\(multipliers from rule 0 \('all'\)\)"):
        paramwise.param_groups(net(), [Rule("all", lr_mult=10.0)], lr=1e308)
    with pytest.raises(ParamwiseError, match=r"underflows to 0.0 .*set lr=0.0 directly"):
        paramwise.param_groups(net(), [Rule("all", lr_mult=1e-300), Rule("bias", lr_mult=1e-300)],
                               lr=1.0)
    # an lr of 0 that was asked for is fine
    groups = paramwise.param_groups(net(), [Rule("all", lr_mult=0.0)], lr=1.0)
    assert all(g["lr"] == 0.0 for g in groups)


def test_kwargs_optimizers_are_checked_against_their_built_defaults():
    class Loose(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)

    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ParamwiseError, match=r"Loose takes \*\*kwargs, and its defaults have no "
                       r"'weight_deacy'.* \(did you mean 'weight_decay'\?\); its options are"):
        paramwise.optimizer(model, Loose, [Rule("bias", weight_deacy=0.0)], lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert type(paramwise.optimizer(model, Loose, [Rule("bias", weight_decay=0.0)], lr=0.1)) is \
        Loose


@pytest.mark.parametrize("optim", ["lbfgs", "rprop"])
def test_no_decay_on_optimizers_without_weight_decay_suggests_a_real_fix(optim):
    with pytest.raises(ParamwiseError) as e:
        paramwise.optimizer(net(), optim, [paramwise.no_decay()], lr=0.1)
    msg = str(e.value)
    assert "has no weight decay" in msg and "no_decay(key='l2')" in msg
    assert "weight_decay_mult" not in msg


def test_explain_with_a_non_string_name():
    opt = paramwise.optimizer(net(), "sgd", lr=0.1)
    with pytest.raises(ParamwiseError, match=r"explain\(\.\.\., name\) takes a parameter name, "
                       r"got 123 \(int\); pass the canonical name"):
        paramwise.explain(opt, 123)


def test_inspect_allows_an_import_only_when_asked(evil_module, tmp_path):
    (tmp_path / "factory.py").write_text("import torch\ndef build():\n"
                                         "    return torch.nn.Linear(3, 2)\n")
    (tmp_path / "cfg.yaml").write_text("optimizer: evilmod:X\nlr: 0.1\n")
    cmd = [sys.executable, "-m", "paramwise", "inspect", "factory:build", "--config", "cfg.yaml"]
    env_run = dict(capture_output=True, text=True, timeout=120, cwd=tmp_path)
    refused = subprocess.run(cmd, **env_run)
    assert refused.returncode == 2 and "--allow-import evilmod" in refused.stderr
    assert not evil_module.exists()
    allowed = subprocess.run([*cmd, "--allow-import", "evilmod"], **env_run)
    assert allowed.returncode == 0, allowed.stderr
    assert evil_module.exists() and "group" in allowed.stdout


def test_omegaconf_values_inside_a_plain_dict_keep_their_own_values():
    omegaconf = pytest.importorskip("omegaconf")
    make = omegaconf.OmegaConf.create
    cfg = {"optimizer": "adamw", "lr": 1e-3, "rules": [
        {"select": "bias", "weight_decay": 0.0, "betas": make([0.5, 0.6])},
        {"select": "0.weight", "betas": make([0.9, 0.95])},
        {"select": "2.weight", "betas": make({"x": 1}) and make([0.8, 0.85])}]}
    groups = paramwise.from_config(net(), cfg).param_groups
    betas = {n: g["betas"] for g in groups for n in g["param_names"]}
    assert betas["0.bias"] == (0.5, 0.6) and betas["0.weight"] == (0.9, 0.95)
    assert betas["2.weight"] == (0.8, 0.85)


def test_a_lazy_module_attribute_is_not_imported_by_a_config():
    import types

    lazy = types.ModuleType("lazypkg_for_test")
    imported = []

    def __getattr__(name):  # a lazy package: attribute access imports a submodule
        imported.append(name)
        return torch.optim.SGD

    lazy.__getattr__ = __getattr__
    sys.modules["lazypkg_for_test"] = lazy
    try:
        with pytest.raises(ParamwiseError):
            paramwise.from_config(net(), {"optimizer": "lazypkg_for_test:Trainer", "lr": 0.1})
        assert imported == []
        opt = paramwise.from_config(net(), {"optimizer": "lazypkg_for_test:Trainer", "lr": 0.1},
                                    allow_imports=["lazypkg_for_test"])
        assert type(opt) is torch.optim.SGD and imported == ["Trainer"]
    finally:
        del sys.modules["lazypkg_for_test"]
