"""Error and warning messages follow the project standard: each says what was wrong, in the
user's own names (the rule, the parameter, the value), and the fix. One test (or a few) per
message that did not, found while writing docs/errors.md."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

import paramwise
from paramwise import ParamwiseError, Rule
from paramwise.options.keys import _torch_optimizers, optimizer_defaults


def _tied() -> nn.Module:
    model = nn.Module()
    model.embed = nn.Embedding(10, 4)
    model.head = nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed.weight
    return model


# ----------------------------------------------------------------- "the defaults set" (grammar)
@pytest.mark.parametrize(("call", "pattern"), [
    (lambda m: paramwise.optimizer(m, "sgd", lr=0.1, betas=(0.9, 0.99)),
     r"^the defaults set unknown option 'betas' for SGD"),
    (lambda m: paramwise.optimizer(m, "adamw", lr=-1e-3), r"^the defaults set lr=-0\.001"),
    (lambda m: paramwise.optimizer(m, "lbfgs", lr=1.0, weight_decay=0.1),
     r"^the defaults set weight_decay, but LBFGS has no weight decay"),
    (lambda m: paramwise.optimizer(m, "adamw", lr=1e-3, amsgrad="false"),
     r"^the defaults set amsgrad='false'"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("weight", optimizer="muon")], lr=1e-3,
                                   rho=0.9),
     r"^the defaults set unknown option 'rho' for AdamW or Muon"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("bias", lr=-1.0)], lr=1e-3),
     r"^Rule\('bias'\) sets lr=-1\.0"),
])
def test_the_defaults_set_and_a_rule_sets(call, pattern):
    with pytest.raises(ParamwiseError, match=pattern) as info:
        call(nn.Linear(4, 4))
    assert "the defaults sets" not in str(info.value)


# ----------------------------------------------------------------- tied tensors
def test_tied_conflict_names_the_defaults_not_an_empty_list():
    rules = [Rule("head.weight", weight_decay=0.0)]
    with pytest.raises(ParamwiseError, match=re.escape(
            "weight_decay=0.1 vs 0.0 (set by the defaults vs rule 0)")) as info:
        paramwise.optimizer(_tied(), "adamw", rules, lr=1e-3, weight_decay=0.1)
    assert "[]" not in str(info.value)


def test_tied_conflict_names_only_the_rules_that_set_the_differing_option():
    # rule 1 matches both names but sets lr, which does not differ: it is not named
    rules = [Rule("head.weight", weight_decay=0.0), Rule("head.weight | embed.weight", lr=0.1)]
    with pytest.raises(ParamwiseError, match=re.escape(
            "weight_decay=0.1 vs 0.0 (set by the defaults vs rule 0)")):
        paramwise.optimizer(_tied(), "adamw", rules, lr=1e-3, weight_decay=0.1)
    # a multiplier counts as setting its base option
    with pytest.raises(ParamwiseError, match=re.escape(
            "lr=0.0001 vs 0.001 (set by rule 0 vs the defaults)")):
        paramwise.optimizer(_tied(), "adamw", [Rule("embed.weight", lr_mult=0.1)], lr=1e-3)


# ----------------------------------------------------------------- option values per group
def test_betas_out_of_range_in_a_rule_is_refused_as_torch_refuses_it_as_a_default():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):  # the reference
        torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 1.5))
    with pytest.raises(ParamwiseError, match=re.escape(
            "rule 0 ('bias') sets betas=(0.9, 1.5) for Adam, but betas must be a pair of "
            "numbers, each >= 0 and < 1; e.g. betas=(0.9, 0.999), the default of Adam")) as info:
        paramwise.optimizer(model, "adam", [Rule("bias", betas=(0.9, 1.5))], lr=1e-3)
    assert info.value.fix == "e.g. betas=(0.9, 0.999), the default of Adam"
    with pytest.raises(ParamwiseError, match=r"^the defaults set betas=\(0\.9, 1\.5\) for Adam"):
        paramwise.optimizer(model, "adam", lr=1e-3, betas=(0.9, 1.5))


def _model_for(cls: type) -> nn.Module:
    if cls is torch.optim.SparseAdam:
        return nn.Sequential(nn.Embedding(5, 3, sparse=True), nn.Embedding(5, 3, sparse=True))
    return nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))  # Muon: 2-D


def _candidates(default: object) -> list[object]:
    """Values around the edges torch checks (0, 1), for a number or each number of a tuple."""
    edges = [-1.0, -1e-3, 0.0, 0.5, 1.0, 1.5, 100.0]
    if isinstance(default, bool) or not isinstance(default, (int, float, tuple)):
        return []
    if not isinstance(default, tuple):
        return edges
    return [(*default[:i], e, *default[i + 1:]) for i in range(len(default)) for e in edges
            if default[i] is None or isinstance(default[i], (int, float))]


def _error(fn) -> Exception | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - compared below
        return e
    return None


#: paramwise's own checks are stricter than torch's here (torch takes a negative value).
STRICTER = {("ASGD", "alpha"), ("Muon", "eps"), ("SGD", "dampening")}


@pytest.mark.parametrize("name", sorted(_torch_optimizers()))
def test_every_value_torch_refuses_as_a_default_is_refused_in_a_rule_too(name):
    """torch.optim's constructors check only their defaults. For every option with a numeric
    default, of every torch.optim optimizer, values around the edges: where torch's constructor
    raises ValueError, paramwise refuses the value both in a rule (naming the rule) and in the
    defaults (naming them); where torch takes it, so does paramwise (but for STRICTER)."""
    cls = _torch_optimizers()[name]
    tried = 0
    for key, default in optimizer_defaults(cls).items():
        for value in _candidates(default):
            tried += 1
            ref = _error(lambda: cls([torch.zeros(2, 2, requires_grad=True)], **{key: value}))  # noqa: B023
            in_rule = _error(lambda: paramwise.optimizer(  # noqa: B023
                _model_for(cls), cls, [Rule("*", **{key: value})]))  # noqa: B023
            in_defaults = _error(lambda: paramwise.optimizer(_model_for(cls), cls,  # noqa: B023
                                                             **{key: value}))  # noqa: B023
            case = f"{cls.__name__}({key}={value!r})"
            if ref is None:
                if (cls.__name__, key) in STRICTER and float(value) < 0:  # type: ignore[arg-type]
                    continue
                assert in_rule is None and in_defaults is None, (case, in_rule, in_defaults)
                continue
            assert isinstance(ref, ValueError), (case, ref)
            assert isinstance(in_rule, ParamwiseError), (case, in_rule)
            assert isinstance(in_defaults, ParamwiseError), (case, in_defaults)
            assert re.match(rf"(rule 0 \('\*'\)|Rule\('\*'\)) sets {key}=", str(in_rule)), \
                (case, str(in_rule))
            assert str(in_defaults).startswith(f"the defaults set {key}="), (case, in_defaults)
            assert in_rule.fix and in_defaults.fix, case
    assert tried


def test_the_reference_test_sees_the_range_checks():
    """The sweep above is not vacuous: it meets torch's range checks of these options."""
    seen = set()
    for cls in _torch_optimizers().values():
        for key, default in optimizer_defaults(cls).items():
            for value in _candidates(default):
                if _error(lambda: cls([torch.zeros(1, requires_grad=True)],  # noqa: B023
                                      **{key: value})):  # noqa: B023
                    seen.add((cls.__name__, key))
    assert {("Adam", "betas"), ("AdamW", "betas"), ("NAdam", "momentum_decay"),
            ("Adadelta", "rho"), ("RMSprop", "alpha"), ("Rprop", "etas"), ("SGD", "momentum"),
            ("Adagrad", "initial_accumulator_value"), ("SparseAdam", "lr")} <= seen


@pytest.mark.parametrize(("opt", "rule", "defaults", "pattern"), [
    # options torch checks together: the option that alone is refused is named, with its setter
    ("sgd", ("bias", {"nesterov": True}), {"lr": 0.1},
     r"^rule 0 \('bias'\) sets nesterov=True for 1 parameter of SGD \(e\.g\. 'bias'\), which "
     r"SGD refuses: Nesterov momentum requires a momentum and zero dampening; set what SGD asks "
     r"for, or drop nesterov \(its default: nesterov=False\)"),
    ("sgd", ("bias", {"momentum": 0.9}), {"lr": 0.1, "nesterov": True},
     r"^the defaults set nesterov=True for 1 parameter of SGD \(e\.g\. 'weight'\)"),
    ("adam", ("bias", {"betas": (0, 0.99)}), {"lr": 1e-3},
     r"^rule 0 \('bias'\) sets betas=\(0, 0\.99\) for 1 parameter of Adam .*both floats"),
    ("adam", ("bias", {"lr": torch.tensor(0.1)}), {"lr": 1e-3, "foreach": True},
     r"^rule 0 \('bias'\) and the defaults give 1 parameter of Adam \(e\.g\. 'bias'\) options "
     r"it refuses together: lr as a Tensor is not supported"),
    # class-specific ranges
    ("adadelta", ("bias", {"rho": 1.5}), {}, r"^rule 0 \('bias'\) sets rho=1\.5 for Adadelta, but "
     r"rho must be in \[0, 1\]; e\.g\. rho=0\.9, the default of Adadelta"),
    ("rprop", ("bias", {"etas": (0.5, 0.9)}), {}, r"etas must be a pair \(etaminus, etaplus\)"),
    ("adafactor", ("bias", {"eps": (None, -1.0)}), {}, r"^Rule\('bias'\) sets eps=\(None, -1\.0\)"),
    ("muon", ("weight", {"adjust_lr_fn": "fast"}), {},
     r"^rule 0 \('weight'\) sets adjust_lr_fn='fast' for Muon, but adjust_lr_fn must be None, "
     r"'original' or 'match_rms_adamw'"),
])
def test_values_torch_checks_per_class_or_together_are_checked_per_group(opt, rule, defaults,
                                                                         pattern):
    model = nn.Linear(4, 4, bias=opt != "muon")
    select, options = rule
    with pytest.raises(ParamwiseError, match=pattern):
        paramwise.optimizer(model, opt, [Rule(select, **options)], **defaults)


def test_a_value_is_checked_against_the_class_its_parameters_go_to():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    rules = [Rule("module:1", optimizer="adam", betas=(0.9, 1.0))]
    with pytest.raises(ParamwiseError, match=r"^rule 0 \('module:1'\) sets betas=\(0\.9, 1\.0\) "
                       r"for Adam, but betas must be"):
        paramwise.optimizer(model, "sgd", rules, lr=0.1)
    # param_groups() checks too: with optimizer=, against that class; without, against the
    # check every torch.optim optimizer agrees on
    with pytest.raises(ParamwiseError, match=r"for NAdam, but momentum_decay must be >= 0"):
        paramwise.param_groups(model, [Rule("bias", momentum_decay=-1.0)], optimizer="nadam")
    with pytest.raises(ParamwiseError, match=r"for the optimizer, but betas must be .*"
                       r"pass optimizer=ThatClass"):
        paramwise.param_groups(model, [Rule("bias", betas=(1.5, 0.9))])
    # a check only one class makes waits for the class (another optimizer's rho may differ)
    assert paramwise.param_groups(model, [Rule("bias", rho=2.0)])[1]["rho"] == 2.0


def test_adafactor_eps_pair_is_taken_as_torch_takes_it():
    model = nn.Linear(4, 4)
    opt = paramwise.optimizer(model, "adafactor", [Rule("bias", eps=(None, 1e-2))], lr=1e-2,
                              eps=(None, 1e-3))
    assert [g["eps"] for g in opt.param_groups] == [(None, 1e-3), (None, 1e-2)]
    with pytest.raises(ParamwiseError, match=r"^the defaults set eps=\(1e-08, 0\.001\) for Adam"):
        paramwise.optimizer(model, "adam", lr=1e-3, eps=(1e-8, 1e-3))


def test_a_config_rule_value_out_of_range_names_the_file_and_rule():
    cfg = {"optimizer": "adamw", "lr": 1e-3, "rules": [{"select": "bias", "betas": [0.9, 1.5]}]}
    with pytest.raises(ParamwiseError, match=re.escape(
            "config: rules[0] ('bias') sets betas=(0.9, 1.5) for AdamW, but betas must be")):
        paramwise.from_config(nn.Linear(4, 4), cfg)
    # whole numbers in a list read from YAML become floats, as torch wants betas
    cfg = {"optimizer": "adamw", "lr": 1e-3, "betas": [0, 0.99],
           "rules": [{"select": "bias", "betas": [0, 0.9]}]}
    opt = paramwise.from_config(nn.Linear(4, 4), cfg)
    assert [g["betas"] for g in opt.param_groups] == [(0.0, 0.99), (0.0, 0.9)]


# ----------------------------------------------------------------- what was passed, and the fix
class MyNorm(nn.Module):
    pass


@pytest.mark.parametrize(("fn", "arg", "pattern"), [
    ("register_norm", "MyNorm", r"got the string 'MyNorm'; pass the class itself: "
     r"paramwise\.register_norm\(MyNorm\)$"),
    ("register_norm", MyNorm(), r"got an instance of MyNorm; pass the class itself: "
     r"paramwise\.register_norm\(MyNorm\)$"),
    ("register_norm", int, r"got the class int, which is not one; pass a class that subclasses "
     r"torch\.nn\.Module, e\.g\. paramwise\.register_norm\(MyNorm\)$"),
    ("register_wrapper", MyNorm(), r"got an instance of MyNorm; pass the class itself: "
     r"paramwise\.register_wrapper\(MyNorm, 'module'\)$"),
])
def test_register_says_what_it_got_and_the_call_that_works(fn, arg, pattern):
    with pytest.raises(ParamwiseError, match=rf"^{fn} expects an nn\.Module subclass, " + pattern):
        getattr(paramwise, fn)(arg)


@pytest.mark.parametrize(("call", "pattern"), [
    (lambda: paramwise.report("adamw"), r"^report\(\) takes a model or an optimizer, got the "
     r"string 'adamw'; pass the nn\.Module or the torch\.optim\.Optimizer itself: "
     r"paramwise\.report\(model\) or paramwise\.report\(optimizer\); to see the plan"),
    (lambda: paramwise.explain(3, "0.weight"), r"^explain\(\) takes a model or an optimizer, got "
     r"int 3; .*paramwise\.explain\(optimizer, name\)"),
    (lambda: paramwise.stats([1]), r"^stats\(\) takes a model or an optimizer, got list \[1\]; "
     r"pass .*paramwise\.stats\(optimizer\)$"),
    (lambda: paramwise.penalty("net"), r"^penalty\(\) takes .*got the string 'net'; pass "),
])
def test_report_and_friends_say_what_they_got_and_the_fix(call, pattern):
    with pytest.raises(ParamwiseError, match=pattern) as info:
        call()
    assert info.value.fix


def test_a_non_string_option_key_has_a_fix():
    from paramwise.options.keys import check_key  # keyword arguments are strings: a dict's key

    with pytest.raises(ParamwiseError, match=r"^rule 0 \('bias'\) has option key 1 \(int\), not a "
                       r"string; option keys are option names, e\.g\. \{'lr': 0\.1\}$"):
        check_key(1, torch.optim.SGD, where="rule 0 ('bias')")


def test_load_state_dict_strict_says_what_was_wrong():
    model = nn.Linear(2, 2)
    opt = paramwise.optimizer(model, "adamw", lr=1e-3)
    with pytest.raises(ParamwiseError, match=r"^strict must be True or False, not the string "
                       r"'yes'; pass strict=True \(refuse .*\) or strict=False \(load what "
                       r"matches\)$"):
        paramwise.load_state_dict(opt, paramwise.state_dict(opt), strict="yes")


# ----------------------------------------------------------------- Hybrid
def test_hybrid_names_the_shared_parameter_and_both_optimizers():
    m = nn.Linear(4, 4)
    with pytest.raises(ParamwiseError, match=re.escape(
            "parameter of shape (4, 4) is in two of the optimizers: part 0 (SGD, param group 0) "
            "and part 1 (AdamW, param group 0); give every parameter to exactly one optimizer")):
        paramwise.Hybrid([torch.optim.SGD(m.parameters(), lr=0.1),
                          torch.optim.AdamW(m.parameters())])
    named = torch.optim.AdamW([{"params": [m.weight, m.bias], "param_names": ["w", "b"]}])
    with pytest.raises(ParamwiseError, match=re.escape(
            "parameter 'b' is in two of the optimizers: part 0 (SGD, param group 1) and part 1 "
            "(AdamW, param group 0)")):
        paramwise.Hybrid([torch.optim.SGD([{"params": [nn.Parameter(torch.ones(1))]},
                                           {"params": [m.bias]}], lr=0.1), named])


@pytest.mark.parametrize(("arg", "got"), [
    ([], "an empty list"),
    ([torch.optim.SGD], "item 0: the class SGD, not an instance; build it first, e.g. "
     "SGD(params, lr=...)"),
    ("sgd", "a str ('sgd')"),
    (torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), "one SGD, not a list of them"),
])
def test_hybrid_says_what_it_got_instead_of_optimizers(arg, got):
    with pytest.raises(ParamwiseError, match=re.escape(
            f"Hybrid needs a list of torch.optim.Optimizer instances, got {got}")) as info:
        paramwise.Hybrid(arg)
    assert info.value.fix


# ----------------------------------------------------------------- config: problem and fix apart
@pytest.mark.parametrize(("cfg", "problem", "fix"), [
    # an option typo in a rule (_from_config's re-raise)
    ({"rules": [{"select": "bias", "weight_deacy": 0.0}]},
     "config: rules[0] ('bias') sets unknown option 'weight_deacy' for AdamW (did you mean "
     "'weight_decay'?)", "use 'weight_decay'"),
    # a plan error from the build, in the config's words (_in_config_words)
    ({"rules": [{"select": "nomatch", "lr": 0.0}]},
     "config: rules[0] ('nomatch') matched no parameter (names look like 'weight'; top-level "
     "names are 'bias', 'weight')",
     "fix the selector, remove the rule, or set 'strict: false' in the config to only warn"),
    # an unknown optimizer (_resolve_optimizer)
    ({"optimizer": "adamww"}, "config: unknown optimizer 'adamww' (did you mean 'adamw'?)",
     "use one of adadelta, adafactor, ..."),
    # a preset's own error (_preset)
    ({"rules": [{"layer_decay": {"rate": 2.0}}]},
     "config: rules[0] (layer_decay): layer_decay(rate=2.0) must lie in (0, 1]",
     "typical values are 0.65-0.9"),
    # a selector error keeps its caret line too (_rule)
    ({"rules": [{"select": "bias &", "lr": 0.0}]},
     "config: rules[0] key 'select': bad selector 'bias &' at position 6: expected a term, found "
     "end of selector", "put a role, glob, type:, module:, ndim or re: term here"),
])
def test_config_errors_keep_problem_and_fix_apart(cfg, problem, fix):
    import doctest

    cfg = {"optimizer": "adamw", "lr": 1e-3, **cfg}
    with pytest.raises(ParamwiseError) as info:
        paramwise.from_config(nn.Linear(2, 2), cfg)
    e = info.value
    assert e.problem == problem
    assert e.fix is not None
    assert doctest.OutputChecker().check_output(fix, e.fix, doctest.ELLIPSIS), e.fix
    assert str(e).startswith(f"{problem}; {e.fix}")  # the message reads as before


def test_a_config_selector_error_keeps_its_caret():
    with pytest.raises(ParamwiseError) as info:
        paramwise.from_config(nn.Linear(2, 2), {"optimizer": "sgd", "lr": 0.1,
                                                "rules": [{"select": "bias &", "lr": 0.0}]})
    assert info.value.detail == "    bias &\n          ^"
    assert str(info.value).endswith("\n    bias &\n          ^")


def test_config_list_too_long_names_the_config_and_the_key():
    for cfg, where in [({"betas": list(range(100))}, "config: the top level"),
                       ({"rules": [{"select": "bias", "betas": [[[[0.9]]]]}]},
                        "config: rules[0] ('bias')")]:
        with pytest.raises(ParamwiseError, match=re.escape(
                f"{where} sets betas to a list too long or too deeply nested")):
            paramwise.from_config(nn.Linear(2, 2), {"optimizer": "adamw", "lr": 1e-3, **cfg})


def test_unknown_top_level_key_lists_what_the_top_level_takes():
    with pytest.raises(ParamwiseError) as info:
        paramwise.from_config(nn.Linear(2, 2), {"optimizer": "adamw", "lr": 1e-3, "fooo": 1})
    fix = info.value.fix
    own = re.search(r"AdamW's options \(([^)]*)\)", fix).group(1).split(", ")
    assert "lr" in own and "betas" in own
    assert not {"optimizer", "lr_mult", "weight_decay_mult", "l1"} & set(own)
    assert fix.startswith("top-level keys are optimizer, rules, strict, include_frozen, ")
    assert "and paramwise's regularizers (decoupled_decay, group_dim, group_lasso, l1," in fix


# ----------------------------------------------------------------- type:, CLI, YAML tags
def test_type_selector_error_reads_lowercase_after_the_semicolon():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ParamwiseError) as info:
        paramwise.optimizer(model, "adamw", [Rule("type:Linaer", lr_mult=0.1)], lr=1e-3)
    e = info.value
    assert e.problem.endswith("names no class in the model, nor a module class loaded in Python "
                              "(did you mean 'type:Linear'?)")
    assert e.fix.startswith("use one of the model's classes: LayerNorm, Linear, Sequential")
    assert not re.search(r"; [A-Z]", str(e)), str(e)


def test_audit_factory_typo_says_the_factory_returns_model_and_optimizer(tmp_path, monkeypatch,
                                                                        capsys):
    from paramwise.cli import main

    (tmp_path / "train.py").write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n    m = nn.Linear(2, 2)\n    return m, torch.optim.SGD(m.parameters(), lr=0.1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["audit", "train:biuld"]) == 2
    assert re.search(r"^paramwise audit: error: 'train' has no attribute 'biuld' \(did you mean "
                     r"'build'\?\); name a function that returns \(model, optimizer\) or \(model, "
                     r"optimizer, scheduler\), e\.g\. train:build$", capsys.readouterr().err, re.M)
    assert main(["inspect", "train:biuld"]) == 2  # inspect's factory builds the model
    assert "name a function that builds the model, e.g. train:build" in capsys.readouterr().err


@pytest.mark.parametrize(("yaml_text", "problem", "fix"), [
    ("optimizer: !!python/name:torch.optim.AdamW\nlr: 0.1\n",
     r"^'.*optim\.yaml' at line 1, column 12: the tag !!python/name:torch\.optim\.AdamW would "
     r"build a Python object, and a config is read with YAML's safe loader, which refuses tags "
     r"that run or import code$",
     r"^write plain values instead: an optimizer as its name or import path, without the tag "
     r"\(optimizer: torch\.optim\.AdamW\)"),
    ("optimizer: adamw\nlr: !!python/object/apply:os.system ['echo hi']\n",
     r"the tag !!python/object/apply:os\.system would build a Python object",
     r"\(optimizer: torch\.optim\.AdamW\)"),
    ("optimizer: adamw\nlr: !custom 0.1\n",
     r"at line 2, column 5: the tag !custom is not a standard YAML tag",
     r"^remove the tag and write the value itself"),
])
def test_yaml_tags_are_refused_with_what_to_write_instead(tmp_path, yaml_text, problem, fix):
    pytest.importorskip("yaml")
    path = tmp_path / "optim.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ParamwiseError) as info:
        paramwise.from_config(nn.Linear(2, 2), path)
    assert re.search(problem, info.value.problem), info.value.problem
    assert re.search(fix, info.value.fix), info.value.fix
    assert "fix the YAML syntax" not in str(info.value)


# ----------------------------------------------------------------- warnings point at the user
def _step_warnings(opt: torch.optim.Optimizer, model: nn.Module) -> tuple[list, int]:
    import inspect
    import warnings

    model(torch.randn(2, 3)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        opt.step()
    return [w for w in caught if "prox_scale='adaptive'" in str(w.message)], line


def test_the_unknown_optimizer_warning_points_at_the_users_step_call():
    class PlainStep(torch.optim.Optimizer):  # a fresh class: the warning is said once per class
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"])

    model = nn.Linear(3, 3)
    opt = paramwise.optimizer(model, PlainStep, [Rule("weight", l1=1e-3)], lr=0.1)
    caught, line = _step_warnings(opt, model)
    assert caught and "does not know how PlainStep scales its steps" in str(caught[0].message)
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_the_guessed_step_scale_warning_points_at_the_users_step_call():
    class AdamLike(torch.optim.Optimizer):  # keeps an Adam-like second moment: a guessed scale
        def __init__(self, params, lr=0.1, eps=1e-8):
            super().__init__(params, {"lr": lr, "eps": eps})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        v = self.state[p].setdefault("exp_avg_sq", torch.zeros_like(p))
                        v.mul_(0.99).addcmul_(p.grad, p.grad, value=0.01)
                        p.addcdiv_(p.grad, v.sqrt().add_(g["eps"]), value=-g["lr"])

    model = nn.Linear(3, 3)
    opt = paramwise.optimizer(model, AdamLike, [Rule("weight", l1=1e-3)], lr=0.1)
    caught, line = _step_warnings(opt, model)  # the hook after step() reads the state
    assert caught and "found an Adam-like second moment" in str(caught[0].message)
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_a_config_warning_points_at_the_from_config_call():
    import warnings

    cfg = {"optimizer": "sgd", "lr": 0.1, "strict": False,
           "rules": [{"select": "nomatch", "lr": 0.0}]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paramwise.from_config(nn.Linear(2, 2), cfg)
    assert [w.filename for w in caught] == [__file__]


def test_strict_load_lists_only_the_kinds_of_difference_there_are():
    a = nn.Sequential(nn.Linear(4, 4))
    opt_a = paramwise.optimizer(a, "adam", lr=1e-3)
    a(torch.randn(2, 4)).sum().backward()
    opt_a.step()
    saved = paramwise.state_dict(opt_a)
    b = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))      # two new tensors, none gone
    opt_b = paramwise.optimizer(b, "adam", lr=1e-3)
    with pytest.raises(ParamwiseError) as info:
        paramwise.load_state_dict(opt_b, saved, strict=True)
    msg = str(info.value)
    assert re.search(r"2 new \(e\.g\. \['1\.weight', '1\.bias'\]\); pass strict=False", msg), msg
    assert "vanished" not in msg and "reshaped" not in msg and "[]" not in msg


def test_a_bad_value_in_an_added_group_says_the_group_was_not_added():
    w, extra = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [w], "l1": 1e-3}], lr=0.1)
    paramwise.attach(opt)
    with pytest.raises(ParamwiseError, match=r"l1=-1.*\(the group was not added\)") as info:
        opt.add_param_group({"params": [extra], "l1": -1.0})
    assert "step()" not in str(info.value)
    assert len(opt.param_groups) == 1


def _same_training(ours, theirs, x, steps=3):
    """Step (model, optimizer) pairs side by side on the same batch: identical weights after."""
    for _ in range(steps):
        for m, o in (ours, theirs):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for p, q in zip(ours[0].parameters(), theirs[0].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_three_betas_reach_an_optimizer_that_takes_three():
    """Adan (pytorch-optimizer) takes betas=(b1, b2, b3); the pair check is torch's, per class.
    Reference: the same groups handed to Adan by hand, stepped side by side."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    ref = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    ref.load_state_dict(model.state_dict())
    opt = paramwise.optimizer(model, po.Adan, [Rule("bias", betas=(0.9, 0.9, 0.9))],
                              lr=1e-2, betas=(0.98, 0.92, 0.99))
    by_hand = po.Adan([{"params": [ref[0].weight, ref[1].weight]},
                       {"params": [ref[0].bias, ref[1].bias], "betas": (0.9, 0.9, 0.9)}],
                      lr=1e-2, betas=(0.98, 0.92, 0.99))
    _same_training((model, opt), (ref, by_hand), torch.randn(8, 4))
    with pytest.raises(ParamwiseError, match=r"betas=\(0\.9, 0\.9, 0\.9\) for Adam.*a pair"):
        paramwise.optimizer(model, "adam", [Rule("bias", betas=(0.9, 0.9, 0.9))], lr=1e-3)


def test_a_group_without_momentum_under_nesterov_defaults_builds_as_torch_steps_it():
    """torch's SGD takes a group with momentum=0 beside nesterov=True defaults and steps it
    (the nesterov branch needs momentum); paramwise must not refuse it. Reference: torch's SGD
    with the same groups by hand, stepped side by side."""
    torch.manual_seed(0)
    net, ref = nn.Linear(4, 3), nn.Linear(4, 3)
    ref.load_state_dict(net.state_dict())
    opt = paramwise.optimizer(net, "sgd", [Rule("bias", momentum=0.0)], lr=0.1, momentum=0.9,
                              nesterov=True)
    by_hand = torch.optim.SGD([{"params": [ref.weight]}, {"params": [ref.bias], "momentum": 0.0}],
                              lr=0.1, momentum=0.9, nesterov=True)
    _same_training((net, opt), (ref, by_hand), torch.randn(5, 4))
    with pytest.raises(ParamwiseError, match="nesterov"):   # nesterov with dampening still is
        paramwise.optimizer(net, "sgd", [Rule("bias", dampening=0.5)], lr=0.1, momentum=0.9,
                            nesterov=True)


def test_a_subclass_that_checks_its_parameters_is_not_built_on_the_placeholder():
    """The per-group check runs torch's own constructor, not a subclass's overrides (which may
    refuse a float32 placeholder whatever the options)."""

    class BF16AdamW(torch.optim.AdamW):
        def add_param_group(self, group):
            if any(p.dtype != torch.bfloat16 for p in group["params"]):
                raise ValueError("BF16AdamW takes bfloat16 parameters only")
            super().add_param_group(group)

    net = nn.Linear(4, 3).to(torch.bfloat16)
    opt = paramwise.optimizer(net, BF16AdamW, [paramwise.no_decay()], lr=1e-3, weight_decay=0.1)
    assert type(opt) is BF16AdamW and len(opt.param_groups) == 2
    with pytest.raises(ParamwiseError, match=r"betas=\(0\.9, 1\.5\)"):   # ranges still checked
        paramwise.optimizer(net, BF16AdamW, [Rule("bias", betas=(0.9, 1.5))], lr=1e-3)
