"""Error and warning messages follow the project standard: each says what was wrong, in the
user's own names (the rule, the parameter, the value), and the fix. One test (or a few) per
message that did not, found while writing docs/errors.md."""

from __future__ import annotations

import re

import pytest
import torch.nn as nn

import paramwise
from paramwise import ParamwiseError, Rule


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
