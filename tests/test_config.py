"""from_config: dicts, Mappings, OmegaConf and YAML files build the groups Python rules build;
every mistake names the config, the rule and the key."""

import re
import sys
import types
import warnings

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule
from paramwise.config import from_config, load_config


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x).mean(1)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def groups(opt):
    """Comparable view of an optimizer's groups: names and options, params left out."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


ISSUE_YAML = """\
optimizer: adamw
lr: 3.0e-4
weight_decay: 0.05
rules:
  - select: "bias | norm | embedding"
    weight_decay: 0.0
  - select: "module:head"
    lr_mult: 10
  - select: "weight & type:Linear"
    l1: 1.0e-5
"""


def test_the_issue_example_yaml_equals_the_python_rules(tmp_path):
    path = tmp_path / "optim.yaml"
    path.write_text(ISSUE_YAML)
    from_yaml = from_config(Net(), path)
    by_hand = paramwise.optimizer(Net(), "adamw", [
        Rule("bias | norm | embedding", weight_decay=0.0),
        Rule("module:head", lr_mult=10),
        Rule("weight & type:Linear", l1=1e-5),
    ], lr=3e-4, weight_decay=0.05)
    assert type(from_yaml) is torch.optim.AdamW
    assert groups(from_yaml) == groups(by_hand)
    head_w = next(g for g in from_yaml.param_groups if "head.weight" in g["param_names"])
    assert head_w["lr"] == pytest.approx(3e-3) and head_w["l1"] == 1e-5


def test_a_path_string_a_dict_and_a_mapping_give_the_same_groups(tmp_path):
    path = tmp_path / "optim.yaml"
    path.write_text(ISSUE_YAML)
    import yaml

    as_dict = yaml.safe_load(ISSUE_YAML)
    as_proxy = types.MappingProxyType({**as_dict, "rules": tuple(as_dict["rules"])})
    expected = groups(from_config(Net(), str(path)))
    assert groups(from_config(Net(), as_dict)) == expected
    assert groups(from_config(Net(), as_proxy)) == expected


def test_yaml_numbers_are_read_like_python_numbers(tmp_path):
    # YAML 1.1 reads 1e-5 as a string and 0 as an int; the Python rules use floats.
    path = tmp_path / "o.yaml"
    path.write_text("optimizer: sgd\nlr: 1e-2\nweight_decay: 1e-5\nmomentum: 0.9\n"
                    "rules:\n  - select: bias\n    weight_decay: 0\n")
    cfg_groups = groups(from_config(Net(), path))
    py_groups = groups(paramwise.optimizer(Net(), "sgd", [Rule("bias", weight_decay=0.0)],
                                           lr=1e-2, weight_decay=1e-5, momentum=0.9))
    assert cfg_groups == py_groups
    assert all(type(g["weight_decay"]) is float for g in cfg_groups)


def test_lists_become_tuples_and_overrides_win():
    opt = from_config(Net(), {"optimizer": "adam", "lr": 1e-3, "betas": [0.8, 0.9]}, lr=5e-4)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert opt.param_groups[0]["lr"] == 5e-4


def test_presets_long_and_short_forms():
    long = from_config(Net(), {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "rules": [
        {"preset": "no_decay", "embedding": False},
        {"preset": "layer_decay", "rate": 0.5},
    ]})
    short = from_config(Net(), {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "rules": [
        {"no_decay": {"embedding": False}},
        {"layer_decay": 0.5},
    ]})
    python = paramwise.optimizer(Net(), "adamw", [paramwise.no_decay(embedding=False),
                                                  paramwise.layer_decay(0.5)],
                                 lr=1e-3, weight_decay=0.1)
    assert groups(long) == groups(short) == groups(python)
    lr = {n: g["lr"] for g in long.param_groups for n in g["param_names"]}
    assert lr["head.weight"] == pytest.approx(1e-3)
    assert lr["blocks.2.0.weight"] == pytest.approx(5e-4)
    assert lr["embed.weight"] == pytest.approx(1e-3 * 0.5 ** 4)
    wd = {n: g["weight_decay"] for g in long.param_groups for n in g["param_names"]}
    assert wd["embed.weight"] == 0.1 and wd["head.bias"] == 0.0


def test_layer_decay_with_a_depth_regex():
    opt = from_config(Net(), {"optimizer": "sgd", "lr": 1.0, "rules": [
        {"layer_decay": {"rate": 0.5, "depth": r"blocks\.(\d+)\."}}]})
    lr = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert lr["blocks.0.0.weight"] == pytest.approx(0.5 ** 3)


def test_rules_as_a_named_mapping_keep_order_and_null_switches_a_rule_off():
    cfg = {"optimizer": "sgd", "lr": 0.1, "rules": {
        "all_slow": {"select": "all", "lr": 0.01},
        "head": {"select": "module:head", "lr": 1.0},
        "off": None,
    }}
    lr = {n: g["lr"] for g in from_config(Net(), cfg).param_groups for n in g["param_names"]}
    assert lr["head.weight"] == 1.0 and lr["embed.weight"] == 0.01


def test_select_may_be_a_list_of_selectors_or_ed():
    a = from_config(Net(), {"optimizer": "sgd", "lr": 0.1, "rules": [
        {"select": ["bias", "norm"], "lr": 0.5}]})
    b = paramwise.optimizer(Net(), "sgd", [Rule("bias | norm", lr=0.5)], lr=0.1)
    assert [g["param_names"] for g in a.param_groups] == [g["param_names"] for g in b.param_groups]


def test_optimizer_by_import_path_and_the_flags():
    model = Net()
    model.embed.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="matched no parameter"):
        opt = from_config(model, {"optimizer": "torch.optim:SGD", "lr": 0.1,
                                  "include_frozen": True, "strict": False,
                                  "rules": [{"select": "nothing.*", "lr": 1.0}]})
    assert type(opt) is torch.optim.SGD
    assert "embed.weight" in [n for g in opt.param_groups for n in g["param_names"]]
    assert type(from_config(Net(), {"optimizer": "torch.optim.Adagrad", "lr": 0.1})) \
        is torch.optim.Adagrad


def test_strict_false_warns_instead_of_raising():
    with pytest.warns(UserWarning, match=r"rules\[0\] \('nothing\.\*'\) matched no parameter"):
        from_config(Net(), {"optimizer": "sgd", "lr": 0.1, "strict": False,
                            "rules": [{"select": "nothing.*", "lr": 1.0}]})


def test_explain_and_report_work_on_a_config_built_optimizer():
    opt = from_config(Net(), {"optimizer": "adamw", "lr": 1e-3,
                              "rules": [{"select": "bias", "weight_decay": 0.0}]})
    text = paramwise.explain(opt, "head.bias")
    assert "rules[0] ('bias')" in text and "weight_decay=0.0" in text
    rep = paramwise.report(opt).to_dict()
    assert [g["options"]["weight_decay"] for g in rep["groups"]] == [0.01, 0.0]
    assert "head.bias" in rep["groups"][1]["names"]


def test_omegaconf_dictconfig_with_interpolation():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({
        "base_lr": 1e-3,
        "optim": {"optimizer": "adamw", "lr": "${base_lr}", "weight_decay": 0.05,
                  "rules": [{"preset": "no_decay"}, {"select": "module:head", "lr_mult": 10}]},
    })
    opt = from_config(Net(), cfg.optim)
    python = paramwise.optimizer(Net(), "adamw", [paramwise.no_decay(),
                                                  Rule("module:head", lr_mult=10)],
                                 lr=1e-3, weight_decay=0.05)
    assert groups(opt) == groups(python)
    assert "omegaconf" not in type(opt.param_groups[0]["lr"]).__module__


def test_optional_dependencies_are_imported_only_when_used():
    import subprocess

    code = ("import sys, torch; before = set(sys.modules); "
            "import paramwise, paramwise.config, paramwise.cli, paramwise.demo; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & "
            "{'omegaconf', 'yaml', 'sklearn', 'matplotlib', 'hydra'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------- errors
BASE = {"optimizer": "adamw", "lr": 1e-3}


@pytest.mark.parametrize("cfg, message", [
    ({**BASE, "rule": []},
     r"^config: unknown top-level key 'rule' \(did you mean 'rules'\?\); top-level keys are "
     r"optimizer, rules, strict, include_frozen, AdamW's options \(.*weight_decay"),
    ({**BASE, "weight_deacy": 0.1},
     r"unknown top-level key 'weight_deacy' \(did you mean 'weight_decay'\?\)"),
    ({"lr": 0.1}, r"^config has no 'optimizer' key; add e\.g\. 'optimizer: adamw'"),
    ({"optimizer": "adamww", "lr": 0.1},
     r"^config: unknown optimizer 'adamww' \(did you mean 'adamw'\?\)"),
    ({"optimizer": "mypkg_missing.optim:Lion"},
     r"optimizer 'mypkg_missing\.optim:Lion' lives in module 'mypkg_missing\.optim', which is "
     r"not imported, and a config file never imports a module"),
    ({**BASE, "lr": -1.0}, r"^config: the top level sets lr=-1\.0; lr must be finite and >= 0"),
    ({**BASE, "strict": "yes"}, r"'strict' is 'yes'; write strict: true or strict: false"),
    ({**BASE, "rules": "bias"}, r"^config: 'rules' is a str, not a list; write rules as a list"),
    ({**BASE, "rules": [{"select": "bias", "weight_deacy": 0.0}]},
     r"^config: rules\[0\] \('bias'\) sets unknown option 'weight_deacy' for AdamW "
     r"\(did you mean 'weight_decay'\?\); use 'weight_decay'"),
    ({**BASE, "rules": [{"preset": "no_decay"}, {"select": "bias", "lr": "fast"}]},
     r"^config: rules\[1\] \('bias'\) sets lr='fast' \(str\); lr must be a real number"),
    ({**BASE, "rules": [{"select": "bias &", "lr": 0.1}]},
     r"^config: rules\[0\] key 'select': bad selector 'bias &' at position 6"),
    ({**BASE, "rules": [{"select": "bias"}]},
     r"^config: rules\[0\] \('bias'\) sets no option; add the options"),
    ({**BASE, "rules": [{"selcet": "bias", "lr": 0.1}]},
     r"^config: rules\[0\] has no 'select' key \(keys: selcet, lr\); rename 'selcet' to "
     r"'select'"),
    ({**BASE, "rules": [{"select": 3, "lr": 0.1}]}, r"rules\[0\] key 'select' is 3 \(int\)"),
    ({**BASE, "rules": ["no_decay"]}, r"rules\[0\] is 'no_decay', not a rule; write "
                                      r"\{preset: no_decay\}"),
    ({**BASE, "rules": [{"preset": "no_decy"}]},
     r"rules\[0\] has unknown preset 'no_decy' \(did you mean 'no_decay'\?\); presets are "
     r"no_decay, layer_decay"),
    ({**BASE, "rules": {"nd": {"preset": "no_decay", "nrom": False}}},
     r"^config: rules\.nd \(no_decay\) has unknown key 'nrom' \(did you mean 'norm'\?\); "
     r"no_decay takes bias, norm, embedding, gain, key"),
    ({**BASE, "rules": [{"layer_decay": 2.0}]},
     r"^config: rules\[0\] \(layer_decay\): layer_decay\(rate=2\.0\) must lie in \(0, 1\]"),
    ({**BASE, "rules": [{"layer_decay": {"rate": 0.5, "depth": 3}}]},
     r"key 'depth' is 3; in a config, depth is a regex"),
    ({"optimizer": "sgd", "rules": [{"select": "bias", "lr_mult": 2}]},
     r"^config: rules\[0\] \('bias'\) sets lr_mult=2\.0 but no lr is set to multiply; "
     r"add 'lr: \.\.\.' at the top level of the config"),
])
def test_errors_name_the_rule_and_the_key(cfg, message):
    with pytest.raises(ParamwiseError, match=message):
        from_config(Net(), cfg)


def test_plan_errors_point_at_the_config_rule_even_after_layer_decay_expands():
    # layer_decay expands into 5 rules; the unmatched rule is still reported as rules[1].
    cfg = {**BASE, "rules": [{"layer_decay": 0.5}, {"select": "encoder.*", "lr_mult": 2}]}
    with pytest.raises(ParamwiseError, match=re.escape(
            "config: rules[1] ('encoder.*') matched no parameter")) as info:
        from_config(Net(), cfg)
    assert "set 'strict: false' in the config" in str(info.value)


def test_tied_conflicts_name_config_rules():
    model = Net()
    model.head = nn.Linear(8, 10, bias=False)
    model.head.weight = model.embed.weight  # tied (10, 8)
    cfg = {**BASE, "rules": [{"preset": "no_decay"}, {"select": "module:head", "lr": 0.5}]}
    with pytest.raises(ParamwiseError, match=re.escape(
            "lr=0.001 vs 0.5 (set by the top level vs rules[1]); a tensor has one set of "
            "options: make the rules that differ select both names (or neither), e.g. add "
            "'| head.weight' to their selectors, or set the option for both last with "
            "{select: 'embed.weight | head.weight', ...}")):
        from_config(model, cfg)


def test_regularizer_checks_name_the_config_rule():
    cfg = {**BASE, "rules": [{"select": "bias", "group_lasso": 0.1}]}
    with pytest.raises(ParamwiseError, match=r"^config: rules\[0\] \('bias'\): for parameter "
                       r"'blocks\.0\.0\.bias' of shape \(8,\): group_lasso needs"):
        from_config(Net(), cfg)


def test_file_errors(tmp_path):
    with pytest.raises(ParamwiseError, match=r"config file '.*missing\.yaml' does not exist"):
        from_config(Net(), tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: adamw\nrules:\n  - select: bias\n   lr: 0.1\n")
    with pytest.raises(ParamwiseError, match=r"'.*bad\.yaml' is not valid YAML at line 4, "
                       r"column 4"):
        from_config(Net(), bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ParamwiseError, match=r"config file '.*empty\.yaml' is empty"):
        from_config(Net(), empty)
    listy = tmp_path / "list.yaml"
    listy.write_text("- optimizer: adamw\n")
    with pytest.raises(ParamwiseError, match=r"holds a list, not a mapping"):
        from_config(Net(), listy)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("optimizer: sgd\nlr: 0.1\nrulez: []\n")
    with pytest.raises(ParamwiseError, match=r"^'?.*u\.yaml: unknown top-level key 'rulez' "
                       r"\(did you mean 'rules'\?\)"):
        from_config(Net(), unknown)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("optimizer: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ParamwiseError, match="the tag !!python/object/apply:os.system would "
                       "build a Python object"):
        from_config(Net(), evil)


def test_missing_pyyaml_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "o.yaml"
    path.write_text("optimizer: sgd\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ParamwiseError, match=re.escape("pip install 'paramwise[yaml]'")):
        from_config(Net(), path)


def test_wrong_argument_types():
    with pytest.raises(ParamwiseError, match="a config must be a mapping or a path"):
        from_config(Net(), 3)
    with pytest.raises(ParamwiseError, match=r"takes the model first, got dict"):
        from_config({"optimizer": "sgd"}, Net())
    with pytest.raises(ParamwiseError, match="non-string key 1"):
        load_config({1: "x"})


def test_no_warnings_on_a_clean_config():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_config(Net(), {**BASE, "rules": [{"preset": "no_decay"}]})
