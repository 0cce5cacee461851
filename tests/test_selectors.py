"""The selector language: every term kind, combinators, callables, and errors with positions."""

import re

import pytest
from torch import nn

import paramwise
from paramwise.grouping.inventory import Inventory, mask_to_str
from paramwise.grouping.selectors import as_selector, parse


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(8)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


@pytest.fixture(scope="module")
def inv():
    return Inventory.build(Net())


def selected(sel, inv):
    bits = mask_to_str(as_selector(sel).mask(inv), len(inv))
    return [n for n, b in zip(inv.names, bits) if b == "1"]


def brute(pred, inv):
    return [n for n, p, m in zip(inv.names, inv.params, inv.modules) if pred(n, p, m)]


CASES = [
    ("bias", lambda n, p, m: n.endswith(".bias")),
    ("norm", lambda n, p, m: isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))),
    ("weight", lambda n, p, m: p.dim() >= 2),
    ("*.bias", lambda n, p, m: n.endswith(".bias")),
    ("blocks.[0-5].*", lambda n, p, m: n.startswith("blocks.") and int(n.split(".")[1]) <= 5),
    ("blocks.[!0-5].*", lambda n, p, m: n.startswith("blocks.") and int(n.split(".")[1]) > 5),
    (r"re:blocks\.(1|3)\..*", lambda n, p, m: n.split(".")[:2] in (["blocks", "1"], ["blocks", "3"])),
    ('re:"head\\.(weight|bias)"', lambda n, p, m: n.startswith("head.")),
    ("type:Linear", lambda n, p, m: isinstance(m, nn.Linear)),
    ("type:torch.nn.Conv2d", lambda n, p, m: isinstance(m, nn.Conv2d)),
    ("type:_BatchNorm", lambda n, p, m: isinstance(m, nn.BatchNorm2d)),  # base classes too
    ("module:backbone", lambda n, p, m: n.startswith("backbone.")),
    ("module:blocks.1", lambda n, p, m: n.startswith("blocks.1.")),
    ("ndim<2", lambda n, p, m: p.dim() < 2),
    ("ndim >= 2", lambda n, p, m: p.dim() >= 2),
    ("ndim==4", lambda n, p, m: p.dim() == 4),
    ("ndim!=1", lambda n, p, m: p.dim() != 1),
    ("all", lambda n, p, m: True),
    ("bias | norm", lambda n, p, m: n.endswith(".bias") or isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))),
    ("weight & !module:head", lambda n, p, m: p.dim() >= 2 and not n.startswith("head.")),
    ("!(bias | norm) & type:Linear", lambda n, p, m: isinstance(m, nn.Linear) and n.endswith("weight")),
    ("bias & norm | module:head", lambda n, p, m: (n.endswith(".bias") and isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))) or n.startswith("head.")),
    ("!!bias", lambda n, p, m: n.endswith(".bias")),
    ("name:norm.*", lambda n, p, m: n.startswith("norm.")),
    ("role:norm", lambda n, p, m: isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))),
]


@pytest.mark.parametrize("text,pred", CASES, ids=[c[0] for c in CASES])
def test_terms_match_a_brute_force_reference(inv, text, pred):
    assert selected(text, inv) == brute(pred, inv)


def test_python_combinators_and_callables(inv):
    sel = parse("bias") | (lambda n, p, m: n == "head.weight")
    assert selected(sel, inv) == brute(lambda n, p, m: n.endswith(".bias") or n == "head.weight", inv)
    # a string or a callable on the left works too
    assert selected("module:head" & parse("weight"), inv) == ["head.weight"]
    assert selected((lambda n, p, m: n == "norm.bias") | parse("module:head"), inv) == [
        "norm.bias", "head.weight", "head.bias"]
    assert selected(~parse("all"), inv) == []
    assert selected(parse("weight") & "module:head", inv) == ["head.weight"]


def test_precedence_and_binds_tighter_than_or(inv):
    assert selected("bias & norm | module:head", inv) == selected("(bias & norm) | module:head", inv)
    assert selected("bias & (norm | module:head)", inv) != selected("bias & norm | module:head", inv)


BAD = [
    ("bias | (norm", 7, "never closed"),
    ("bias |", 6, "expected a term"),
    ("& bias", 0, "expected a term"),
    ("bias norm", 5, "unexpected 'n'"),
    ("bias)", 4, "unbalanced ')'"),
    ("", 0, "empty"),
    ("type:", 5, "'type:' needs a value"),
    ("ndim<", 0, "ndim needs"),
    ("re:(a|b", 3, "invalid regular expression"),
    ("role:nrom", 5, "unknown role 'nrom' (did you mean 'norm'?)"),
    ("tpye:Linear", 0, "unknown prefix 'tpye:' (did you mean 'type'?)"),
    ("blocks.[0-5.*", 7, "unbalanced '['"),
    ("type:Lin-ear", 5, "'Lin-ear' is not a class name"),
    ("(bias norm)", 6, "unexpected 'n'"),
    ("bias | ()", 8, "expected a term, found ')'"),
    ("re:(a+)+b", 3, "the regex '(a+)+b' could hang"),
]


@pytest.mark.parametrize("text,pos,what", BAD, ids=[b[0] or "empty" for b in BAD])
def test_malformed_selectors_fail_at_construction_with_position(text, pos, what):
    with pytest.raises(paramwise.ParamwiseError) as e:
        paramwise.Rule(text, weight_decay=0.0)
    msg = str(e.value)
    assert f"at position {pos}" in msg and what in msg
    # the caret sits under the problem
    lines = msg.splitlines()
    assert lines[-1].index("^") - 4 == pos and lines[-2] == "    " + text


def test_selector_must_be_string_or_callable():
    with pytest.raises(paramwise.ParamwiseError, match="string, a Selector or a callable"):
        paramwise.Rule(42, lr=0.1)


def test_unmatched_rules_suggest_names():
    model = Net()
    cases = {
        "*.bais": "did you mean '*.bias'?",
        "encoder.*": "top-level names are 'backbone', 'blocks', 'head', 'norm'",
        "type:Linaer": "did you mean 'type:Linear'?",
        "module:backbnoe": "did you mean 'module:backbone'?",
        "embedding": "the model has no 'embedding' parameters",
    }
    for text, hint in cases.items():
        with pytest.raises(paramwise.ParamwiseError, match=re.escape(hint)):
            paramwise.param_groups(model, [paramwise.Rule(text, lr=0.1)])
    with pytest.warns(UserWarning, match="matched no parameter"):
        paramwise.param_groups(model, [paramwise.Rule("*.bais", lr=0.1)], strict=False)


def test_callable_receives_name_param_module():
    seen = []

    def pick(name, param, module):
        seen.append((name, tuple(param.shape), type(module).__name__))
        return name == "head.bias"

    groups = paramwise.param_groups(Net(), [paramwise.Rule(pick, lr=0.5)], lr=0.1)
    assert ("head.bias", (2,), "Linear") in seen
    assert [g["param_names"] for g in groups if g["lr"] == 0.5] == [["head.bias"]]
