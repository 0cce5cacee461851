"""Cascade, multipliers, option checks, frozen parameters, optimizer names, layer decay."""

import math
import re

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def by_name(groups):
    return {n: {k: v for k, v in g.items() if k not in ("params", "param_names")}
            for g in groups for n in g["param_names"]}


def test_later_rules_override_earlier_ones():
    g = by_name(paramwise.param_groups(net(), [
        Rule("all", weight_decay=0.1, momentum=0.5),
        Rule("bias", weight_decay=0.0),
        Rule("module:2", momentum=0.9),
    ], optimizer="sgd"))
    assert g["0.weight"] == {"weight_decay": 0.1, "momentum": 0.5}
    assert g["0.bias"] == {"weight_decay": 0.0, "momentum": 0.5}
    assert g["2.bias"] == {"weight_decay": 0.0, "momentum": 0.9}


def test_multipliers_compose_and_resolve_to_concrete_values():
    g = by_name(paramwise.param_groups(net(), [
        Rule("module:2", lr_mult=10),
        Rule("bias", lr_mult=0.5, weight_decay_mult=0.0),
        Rule("2.bias", lr=1.0),  # an absolute lr later still gets every multiplier
    ], lr=0.01, weight_decay=0.05))
    assert g["0.weight"] == {"lr": 0.01, "weight_decay": 0.05}
    assert g["0.bias"] == {"lr": 0.005, "weight_decay": 0.0}
    assert math.isclose(g["2.weight"]["lr"], 0.1)
    assert g["2.bias"] == {"lr": 5.0, "weight_decay": 0.0}
    assert not any("lr_mult" in v for v in g.values())


def test_multiplier_without_base_says_what_to_pass():
    with pytest.raises(ParamwiseError, match=re.escape(
            "rule 0 ('bias') sets lr_mult=0.1 but no lr is set to multiply; pass lr=...")):
        paramwise.param_groups(net(), [Rule("bias", lr_mult=0.1)])


def test_schedulers_keep_the_per_group_ratios():
    model = net()
    opt = paramwise.optimizer(model, "sgd", [Rule("module:2", lr_mult=0.1)], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.5, pytest.approx(0.05)]


def test_unknown_keys_get_the_closest_valid_one():
    with pytest.raises(ParamwiseError, match=re.escape(
            "rule 0 ('bias') sets unknown option 'weight_deacy' for AdamW (did you mean "
            "'weight_decay'?)")):
        paramwise.optimizer(net(), "adamw", [Rule("bias", weight_deacy=0.0)])
    with pytest.raises(ParamwiseError, match="'momentum' for Adam"):
        paramwise.optimizer(net(), "adam", [Rule("bias", momentum=0.9)])
    with pytest.raises(ParamwiseError, match="the defaults set unknown option 'lrr'"):
        paramwise.param_groups(net(), lrr=0.1)
    with pytest.raises(ParamwiseError, match="unknown optimizer 'adamww' \\(did you mean 'adamw'"):
        paramwise.optimizer(net(), "adamww")


def test_third_party_optimizer_keys_come_from_its_signature():
    class Lion(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, kahan=False):
            super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                          kahan=kahan))

    opt = paramwise.optimizer(net(), Lion, [Rule("bias", kahan=True)], lr=3e-4)
    assert type(opt) is Lion
    assert [g["kahan"] for g in opt.param_groups] == [False, True]
    with pytest.raises(ParamwiseError, match="pass optimizer=ThatClass"):
        paramwise.param_groups(net(), [Rule("bias", kahan=True)])


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("AdamW", torch.optim.AdamW),
                                      ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
                                      ("adagrad", torch.optim.Adagrad),
                                      ("adadelta", torch.optim.Adadelta)])
def test_optimizer_names(name, cls):
    assert type(paramwise.optimizer(net(), name, lr=0.1)) is cls


@pytest.mark.parametrize("opts,what", [
    ({"lr": -1.0}, "lr=-1.0; lr must be finite and >= 0"),
    ({"weight_decay": float("nan")}, "weight_decay=nan"),
    ({"lr_mult": float("inf")}, "lr_mult=inf"),
    ({"lr": "0.1"}, "lr='0.1' (str); lr must be a real number"),
    ({"weight_decay": True}, "weight_decay=True (bool)"),
    ({"betas": (0.9,)}, "betas must be a tuple of numbers, two"),
])
def test_bad_values_fail_when_the_rule_is_made(opts, what):
    with pytest.raises(ParamwiseError, match=re.escape(what)):
        Rule("bias", **opts)


def test_a_rule_must_set_something_and_rules_must_be_rules():
    with pytest.raises(ParamwiseError, match="sets no option"):
        Rule("bias")
    with pytest.raises(ParamwiseError, match="rule 0 is a dict"):
        paramwise.param_groups(net(), [{"params": "bias", "lr": 0.1}])
    with pytest.raises(ParamwiseError, match="the model has no parameters"):
        paramwise.param_groups(nn.ReLU())
    with pytest.raises(ParamwiseError, match="expected a torch.nn.Module"):
        paramwise.param_groups(list(net().parameters()))


def test_frozen_parameters_are_left_out_and_counted():
    model = net()
    model[0].requires_grad_(False)
    groups = paramwise.param_groups(model, [Rule("bias", weight_decay=0.0)], weight_decay=0.1)
    names = [n for g in groups for n in g["param_names"]]
    assert names == ["1.weight", "2.weight", "1.bias", "2.bias"]
    rep = paramwise.report(model, [Rule("bias", weight_decay=0.0)], weight_decay=0.1)
    assert rep.to_dict()["frozen"] == {"tensors": 2, "elements": 20}
    groups = paramwise.param_groups(model, include_frozen=True)
    assert sum(len(g["params"]) for g in groups) == 6
    with pytest.warns(UserWarning, match="matched only frozen parameters"):
        paramwise.param_groups(model, [Rule("module:0", lr=0.1)])
    model.requires_grad_(False)
    with pytest.raises(ParamwiseError, match="all 6 parameter tensors of the model are frozen"):
        paramwise.param_groups(model)


def test_optimizer_rejection_is_a_paramwise_error():
    with pytest.raises(ParamwiseError,
                       match="the defaults set nesterov=True .*SGD refuses.*Nesterov"):
        paramwise.optimizer(net(), "sgd", lr=0.1, nesterov=True)  # nesterov needs momentum


def test_layer_decay_assigns_depths_from_the_module_tree():
    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.GELU(),
                                                       nn.Linear(4, 4)) for _ in range(3)])
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2)

    g = by_name(paramwise.param_groups(ViT(), [paramwise.layer_decay(0.5)], lr=1.0))
    assert g["embed.weight"]["lr"] == 0.5 ** 4
    assert g["blocks.0.0.weight"]["lr"] == g["blocks.0.2.bias"]["lr"] == 0.5 ** 3
    assert g["blocks.2.2.weight"]["lr"] == 0.5
    assert g["norm.weight"]["lr"] == g["head.bias"]["lr"] == 1.0
    # an explicit regex, and a callable
    g2 = by_name(paramwise.param_groups(ViT(), [paramwise.layer_decay(0.5, depth=r"blocks\.(\d+)\.")],
                                        lr=1.0))
    assert g2 == g
    g3 = by_name(paramwise.param_groups(
        ViT(), [paramwise.layer_decay(0.5, depth=lambda n: 1 if n.startswith("head") else 0)],
        lr=1.0))
    assert g3["head.weight"]["lr"] == 1.0 and g3["embed.weight"]["lr"] == 0.5
    with pytest.raises(ParamwiseError, match="rate=1.5"):
        paramwise.layer_decay(1.5)
    with pytest.raises(ParamwiseError, match="found no blocks matching"):
        paramwise.param_groups(ViT(), [paramwise.layer_decay(0.5, depth=r"layers\.(\d+)")], lr=1.0)


def test_explain_shows_rules_in_order_and_resolution():
    model = net()
    opt = paramwise.optimizer(model, "sgd", [Rule("bias", weight_decay=0.0),
                                             Rule("module:2", lr_mult=0.5)],
                              lr=0.1, weight_decay=1e-4)
    text = paramwise.explain(opt, "2.bias")
    lines = text.splitlines()
    assert lines[0] == "2.bias: shape (2,), roles bias; group 3 of 4"
    assert [ln.split()[0:2] for ln in lines[1:]] == [
        ["defaults", "lr=0.1,"], ["rule", "0"], ["rule", "1"], ["lr", "multipliers"],
        ["resolved", "lr=0.05,"]]
    assert "weight_decay=0.0" in lines[2] and "lr_mult=0.5" in lines[3]
    # the model alone finds the optimizer paramwise built for it
    assert paramwise.explain(model, "2.bias") == text
    with pytest.raises(ParamwiseError, match="no parameter named '2.bais' \\(did you mean '2.bias'"):
        paramwise.explain(opt, "2.bais")
