"""The selector language at its limits (issue 13): thousands of or-ed terms, thousands of nesting
levels, regexes that could backtrack forever, ``type:`` names that must not import anything, and
callables that raise or answer with something other than a bool. Every case is either correct
(checked against a reference computed here with plain Python sets, ``fnmatch`` or ``re``) or a
ParamwiseError naming the problem and the fix."""

from __future__ import annotations

import fnmatch
import re
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule
from paramwise.grouping._regexguard import check
from paramwise.grouping.inventory import Inventory, mask_to_str
from paramwise.grouping.selectors import parse


class _Lin(nn.Linear):
    def reset_parameters(self):  # meta tensors: nothing to initialise (and 2,500 are built)
        pass


@pytest.fixture(scope="module")
def wide():
    """2,500 Linear layers on the meta device: 5,000 parameter names."""
    with torch.device("meta"):
        model = nn.Sequential(*[_Lin(2, 2) for _ in range(2500)])
    return model, Inventory.build(model)


def picked(sel, inv):
    bits = mask_to_str(sel.mask(inv), len(inv))
    return {n for n, b in zip(inv.names, bits) if b == "1"}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ scale
def test_a_5000_term_or_of_names_is_fast_and_exact(wide):
    _, inv = wide
    chosen = inv.names[::2] + ["no.such.name"]
    text = " | ".join(f"({n})" for n in chosen)  # the shape a config `select:` list becomes
    sel, secs = timed(lambda: picked(parse(text), inv))
    assert sel == set(inv.names[::2])
    assert secs < 1.0


def test_or_built_in_a_python_loop_3000_times(wide):
    _, inv = wide
    sel = parse(inv.names[0])
    t0 = time.perf_counter()
    for name in inv.names[1:3000]:
        sel = sel | name
    got = picked(sel, inv)
    assert time.perf_counter() - t0 < 1.0
    assert got == set(inv.names[:3000])
    assert sel.text.count(" | ") == 2999 and repr(sel).startswith("Selector('(0.weight) | (")


def test_many_globs_modules_and_other_terms_in_one_or(wide):
    _, inv = wide
    globs = [f"{i}.w*" for i in range(0, 2500, 3)]
    mods = [f"module:{i}" for i in range(1, 2500, 7)]
    text = " | ".join(globs + mods + ["ndim<2 & 24*", "re:2499\\..*"])
    # names are '<i>.weight' and '<i>.bias': '<i>.w*' is '<i>.weight', module:<i> both
    expected = ({f"{i}.weight" for i in range(0, 2500, 3)}
                | {f"{i}.{p}" for i in range(1, 2500, 7) for p in ("weight", "bias")}
                | {f"{i}.bias" for i in range(2500) if str(i).startswith("24")}
                | {"2499.weight", "2499.bias"})
    assert all(fnmatch.fnmatchcase(n, f"{n.split('.')[0]}.w*") for n in expected
               if n.endswith("weight") and int(n.split(".")[0]) % 3 == 0)
    got, secs = timed(lambda: picked(parse(text), inv))
    assert got == expected
    assert secs < 1.5


def test_a_config_select_list_of_1500_names(wide):
    model, inv = wide
    cfg = {"optimizer": "sgd", "lr": 0.1, "rules": [{"select": inv.names[:1500], "lr": 0.5}]}
    opt = paramwise.from_config(model, cfg)
    fast = [g for g in opt.param_groups if g["lr"] == 0.5]
    assert sum(len(g["params"]) for g in fast) == 1500


# ------------------------------------------------------------------------------------ depth
def test_3000_nested_parentheses_and_nots(wide):
    _, inv = wide
    biases = {n for n in inv.names if n.endswith("bias")}
    assert picked(parse("(" * 3000 + "bias" + ")" * 3000), inv) == biases
    assert picked(parse("!" * 3000 + "bias"), inv) == biases
    assert picked(parse("!" * 3001 + "bias"), inv) == set(inv.names) - biases
    assert picked(parse("!(" * 3001 + "bias" + ")" * 3001), inv) == set(inv.names) - biases
    # weight & (bias | (weight & (bias | ... all))) alternates: the innermost 'all' decides
    deep = "(weight & (bias | " * 3000 + "all" + "))" * 3000
    assert picked(parse(deep), inv) == {n for n in inv.names if n.endswith("weight")}


def test_unclosed_parenthesis_deep_inside_names_the_innermost():
    with pytest.raises(ParamwiseError, match=r"at position 2999: this '\(' is never closed; "
                       r"add the missing '\)'"):
        parse("(" * 3000 + "bias")


def test_deep_trees_built_in_python_render_and_evaluate(wide):
    _, inv = wide
    biases = {n for n in inv.names if n.endswith("bias")}
    weights = set(inv.names) - biases

    def build():
        sel = parse("bias")
        for i in range(3000):
            if i % 3 == 0:
                sel = ~sel
            elif i % 3 == 1:
                sel = sel & "weight | bias"
            else:
                sel = "ndim>=3" | sel
        sel = (lambda n, p, m: n == "7.bias") | sel
        return sel, sel.mask(inv), sel.text, repr(sel)

    (sel, _, text, rep), secs = timed(build)
    # 1000 negations of 'bias' (an even count), the rest keeps the set: 'bias', plus 7.bias
    assert picked(sel, inv) == biases | {"7.bias"}
    assert len(text) > 3000 and rep.startswith("Selector(")
    assert secs < 1.0
    chain = parse("weight")
    for _ in range(3000):
        chain = ~chain
    assert chain.text == "!(" * 3000 + "weight" + ")" * 3000
    assert picked(chain, inv) == weights
    assert picked(parse(chain.text), inv) == weights  # the text parses back


# ------------------------------------------------------------------------------------ regex
NAMED = nn.Module()
NAMED.register_parameter("a" * 34, nn.Parameter(torch.zeros(1)))  # the name in the issue

EXPONENTIAL = [r"(a+)+b", r"(a|a)*b", r"(a|aa)+$", r"(.*)*x", r"([a-zA-Z]+)*$", r"(\w+\s?)*$",
               r"(x+x+)+y", r"^(([a-z])+.)+[A-Z]([a-z])+$", r"(a*)*b", r"(\.\d+)*x"]


@pytest.mark.parametrize("regex", EXPONENTIAL)
def test_regexes_that_backtrack_exponentially_are_refused_when_parsed(regex):
    text = f're:"{regex}"'
    t0 = time.perf_counter()
    with pytest.raises(ParamwiseError) as e:
        Rule(text, lr=0.1)
    assert time.perf_counter() - t0 < 0.5
    msg = str(e.value)
    assert msg.splitlines()[-1] == "        ^"  # the caret under the regex
    assert re.search(r"at position 4: the regex .* could hang: a repeat over a part that can "
                     r"end in several ways .* can take exponential time; write it without a "
                     r"repeat inside a repeat .* possessive .* atomic .* or use a glob", msg)


def test_the_issue_regex_no_longer_hangs_the_build():
    t0 = time.perf_counter()
    with pytest.raises(ParamwiseError, match="could hang"):
        paramwise.param_groups(NAMED, [Rule("re:(a+)+b", lr=0.1)], lr=1.0)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("regex,why", [
    (r".*a.*b.*c.*d.*", r"its unbounded repeats in a row .* can take about \de\+\d+ steps on a "
                        r"256-character name"),
    (r"(a|a){30}", r"alternatives that can match the same text, repeated or in a row .* can be "
                   r"tried in about \de\+\d+ ways"),
])
def test_polynomial_and_combinatorial_blowups_are_refused(regex, why):
    with pytest.raises(ParamwiseError, match=why + r"; write it without a repeat inside a repeat"):
        parse(f're:"{regex}"')


# Accepted: each against the input that is worst for it, compared with re itself.
SAFE = [(r"blocks\.\d+\..*", "blocks." + "1" * 250), (r"(?:\w+\.)*weight", "a." * 127 + "weighs"),
        (r".*a.*b.*c", "a" * 128 + "b" * 128), (r".*\.(q|k|v)_proj\..*", "q" + "._proj" * 42),
        (r"(a|b)*c", "ab" * 128), (r"(\d+)\1", "1" * 256), (r"\d*\d*\d*", "1" * 256 + "x")]
if sys.version_info >= (3, 11):
    SAFE += [(r"(?:a++)+b", "a" * 256), (r"(?>a+)+b", "a" * 256)]


def holding(*names):
    """A module tree with a parameter at each dotted name."""
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(torch.zeros(1)))
    return root


@pytest.mark.parametrize("regex,evil", SAFE, ids=[s[0] for s in SAFE])
def test_accepted_regexes_finish_fast_on_their_worst_input(regex, evil):
    inv = Inventory.build(holding(evil, "blocks.3.weight", "a.b.c.q_proj.x"))
    assert evil in inv.names
    got, secs = timed(lambda: picked(parse(f're:"{regex}"'), inv))
    assert got == {n for n in inv.names if re.fullmatch(regex, n)}
    assert secs < 0.5


def test_a_regex_is_checked_again_for_a_model_with_longer_names():
    mod = nn.Module()
    mod.register_parameter("x" * 2000, nn.Parameter(torch.zeros(1)))
    sel = parse(r"re:.*a.*b.*c")  # fine for 256-character names, not for 2,000
    with pytest.raises(ParamwiseError, match=r"selector 're:\.\*a\.\*b\.\*c' could hang on the "
                       r"model's longest name \(2000 characters, 'xxx.*: its unbounded repeats "
                       r".*; write it without a repeat inside a repeat"):
        sel.mask(Inventory.build(mod))


def test_regex_nested_too_deeply():
    with pytest.raises(ParamwiseError, match=r"nested too deeply for Python's re; use fewer"):
        parse("re:" + "(" * 3000 + "a" + ")" * 3000)


GLOBS = ["*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "*?*?*?*?*?*?*?*?*?*?*?*?*x",
         "[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*!"]


@pytest.mark.parametrize("glob", GLOBS)
def test_globs_cannot_hang(glob):
    assert check(fnmatch.translate(glob)) is None  # the bound the regexes must pass, too
    mod = nn.Module()
    mod.register_parameter("a" * 5000, nn.Parameter(torch.zeros(1)))
    inv = Inventory.build(mod)
    got, secs = timed(lambda: picked(parse(glob), inv))
    assert got == set() and secs < 0.5


# ------------------------------------------------------------------------------------ type:
class Block(nn.Module):
    class Inner(nn.Linear):
        pass

    def __init__(self):
        super().__init__()
        self.fc = Block.Inner(2, 2)
        self.norm = nn.LayerNorm(2)


def tnet():
    return nn.Sequential(Block(), nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("text,owners", [
    ("type:Linear", {"Inner"}), ("type:Inner", {"Inner"}), ("type:Block.Inner", {"Inner"}),
    (f"type:{__name__}.Block.Inner", {"Inner"}), ("type:torch.nn.Conv2d", {"Conv2d"}),
    ("type:torch.nn.modules.conv.Conv2d", {"Conv2d"}), ("type:torch.nn.Linear", {"Inner"}),
    ("type:_ConvNd", {"Conv2d"}), ("type:Module", {"Inner", "LayerNorm", "Conv2d"}),
])
def test_type_names_resolve_against_the_model_classes_and_bases(text, owners):
    inv = Inventory.build(tnet())
    got = picked(parse(text), inv)
    assert got == {n for n, m in zip(inv.names, inv.modules) if type(m).__name__ in owners}


def test_type_never_imports(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "pw_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nimport torch\nclass X(torch.nn.Linear): pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ParamwiseError, match=r"type:pw_evil_mod\.X names no class in the model, "
                       r"nor a module class loaded in Python \(paramwise never imports a module "
                       r"for a selector, and 'pw_evil_mod' is not imported\); use one of the model's "
                       r"classes: "):
        paramwise.param_groups(tnet(), [Rule("type:pw_evil_mod.X", lr=0.1)], lr=1.0)
    assert not marker.exists() and "pw_evil_mod" not in sys.modules


@pytest.mark.parametrize("text,message", [
    ("type:os.system", r"type:os\.system names a builtin_function_or_method, not a "
                       r"torch\.nn\.Module class; name the class of the module that owns"),
    ("type:os.PathLike", r"type:os\.PathLike names a class, not a torch\.nn\.Module class"),
    ("type:Linaer", r"type:Linaer names no class in the model, nor a module class loaded in "
                    r"Python \(did you mean 'type:Linear'\?\); use one of the model's classes: "
                    r"Block, Conv2d"),
])
def test_type_names_that_are_no_module_class(text, message):
    with pytest.raises(ParamwiseError, match=message):
        paramwise.param_groups(tnet(), [Rule(text, lr=0.1)], lr=1.0)


def test_a_loaded_module_class_absent_from_the_model_matches_nothing():
    model = tnet()
    groups = paramwise.param_groups(model, [Rule("type:RMSNorm | bias", lr=0.5)], lr=1.0)
    assert {n for g in groups if g["lr"] == 0.5 for n in g["param_names"]} == {
        n for n, _ in model.named_parameters() if n.endswith("bias")}
    with pytest.raises(ParamwiseError, match=r"rule 0 \('type:RMSNorm'\) matched no parameter "
                       r"\(the model has no RMSNorm; did you mean 'type:LayerNorm'\?\); fix the "
                       r"selector"):
        paramwise.param_groups(model, [Rule("type:RMSNorm", lr=0.5)], lr=1.0)


def test_a_class_that_owns_no_parameter_itself_points_to_module():
    with pytest.raises(ParamwiseError, match=r"modules of class Block own no parameter "
                       r"themselves \(their submodules do\); select what is under one with "
                       r"module:0"):
        paramwise.param_groups(tnet(), [Rule("type:Block", lr=0.5)], lr=1.0)


def test_type_value_must_be_a_class_name():
    with pytest.raises(ParamwiseError, match=r"at position 5: 'Lin-ear' is not a class name; "
                       r"write type:<ClassName>"):
        parse("type:Lin-ear")


# ------------------------------------------------------------------------------------ callables
def test_a_callable_that_raises_is_named_with_the_parameter():
    def pick(name, param, module):
        return 1 / 0 if name == "1.bias" else False

    with pytest.raises(ParamwiseError, match=r"selector callable '.*pick' \(defined at .*"
                       r"test_selector_limits\.py:\d+\) raised ZeroDivisionError: division by zero "
                       r"on parameter '1\.bias'; fix the callable: it is called as "
                       r"fn\(name, param, module\)") as e:
        paramwise.param_groups(tnet(), [Rule(pick, lr=0.1)], lr=1.0)
    assert isinstance(e.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("answer,what", [
    ("False", r"str 'False'"), (None, r"NoneType None"), (1, r"int 1"),
    (torch.tensor(0.0), r"a torch\.float32 tensor of shape \(\)"),
    (torch.tensor([True, False]), r"a torch\.bool tensor of shape \(2,\)"),
    (torch.tensor(True, device="meta"), r"a bool tensor on the meta device \(it holds no value\)"),
])
def test_a_callable_must_return_a_bool(answer, what):
    with pytest.raises(ParamwiseError, match=rf"selector callable '<lambda>' \(defined at .*\) "
                       rf"returned {what} for parameter '0\.fc\.weight'; a selector callable must "
                       rf"return a bool; return True or False"):
        paramwise.param_groups(tnet(), [Rule(lambda n, p, m: answer, lr=0.1)], lr=1.0)


@pytest.mark.parametrize("make", [lambda v: v, np.bool_, torch.tensor],
                         ids=["bool", "numpy", "tensor"])
def test_bool_like_answers_count_by_value(make):
    model = tnet()
    groups = paramwise.param_groups(
        model, [Rule(lambda n, p, m: make(n.endswith("bias")), lr=0.5)], lr=1.0)
    assert {n for g in groups if g["lr"] == 0.5 for n in g["param_names"]} == {
        n for n, _ in model.named_parameters() if n.endswith("bias")}
