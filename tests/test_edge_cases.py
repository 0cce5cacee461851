"""Edge cases found in review: each was a silent misbehaviour or a raw error before."""

import re
import warnings

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule
from paramwise.grouping.inventory import Inventory


def names_by_group(groups):
    return [g["param_names"] for g in groups]


def test_register_wrapper_applies_below_its_own_class_only():
    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)  # a user's own submodule called 'inner'
            self.weight = nn.Parameter(torch.ones(2, 2))

    paramwise.register_wrapper(Wrap, attr="inner")
    bare = Model()
    assert Inventory.build(bare).names == ["weight", "inner.weight", "inner.bias"]
    assert Inventory.build(Wrap(bare)).names == ["weight", "inner.weight", "inner.bias"]
    with pytest.raises(ParamwiseError, match="expects an nn.Module subclass"):
        paramwise.register_wrapper(int)


def test_two_tensors_with_one_canonical_name_is_an_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self._orig_mod = nn.Module()
            self._orig_mod.weight = nn.Parameter(torch.ones(2))

    with pytest.raises(ParamwiseError, match=re.escape(
            "two different parameters, 'weight' and '_orig_mod.weight', both become 'weight'")):
        paramwise.param_groups(Odd())


def test_param_names_is_not_an_option():
    with pytest.raises(ParamwiseError, match="rule 0 \\('bias'\\) sets 'param_names'"):
        paramwise.optimizer(nn.Linear(2, 2), "sgd", [Rule("bias", param_names=["x"])], lr=0.1)


def test_multipliers_in_defaults_are_rejected():
    with pytest.raises(ParamwiseError, match=re.escape(
            "the defaults set lr_mult=0.5, but a multiplier only scales what rules select; "
            "pass lr=<value> directly, or use Rule('all', lr_mult=0.5)")):
        paramwise.param_groups(nn.Linear(2, 2), lr=0.1, lr_mult=0.5)


def test_lazy_modules_get_a_clear_error():
    with pytest.raises(ParamwiseError, match="'weight' of a lazy module is not initialized yet; "
                       "run one forward pass"):
        paramwise.param_groups(nn.LazyLinear(3))


def test_meta_device_models_group_fine():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = paramwise.param_groups(model, [paramwise.no_decay()], weight_decay=0.1)
    assert names_by_group(groups) == [["0.weight"], ["0.bias", "1.weight", "1.bias"]]


def test_tensor_lr_stays_a_tensor_under_multipliers():
    lr = torch.tensor(0.01)
    groups = paramwise.param_groups(nn.Linear(2, 2), [Rule("bias", lr_mult=0.5)], lr=lr)
    assert groups[0]["lr"] is lr
    assert isinstance(groups[1]["lr"], torch.Tensor) and groups[1]["lr"].item() == pytest.approx(0.005)


def test_equal_numbers_share_a_group_whatever_their_type():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = paramwise.param_groups(model, [Rule("bias", weight_decay=0),
                                            Rule("1.weight", weight_decay=0.0)], weight_decay=0.1)
    assert names_by_group(groups) == [["0.weight"], ["0.bias", "1.weight", "1.bias"]]


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
                                     for _ in range(2)])
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_layer_decay_on_tied_weights_uses_the_first_names_depth():
    groups = paramwise.param_groups(TiedLM(), [paramwise.layer_decay(0.5)], lr=1.0)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["emb.weight"] == 0.5 ** 2  # depth 0 of D=2 (no head depth: the head is tied)
    assert lr["blocks.0.0.weight"] == lr["blocks.0.2.bias"] == 0.5
    assert lr["blocks.1.2.weight"] == 1.0
    assert "head.weight" not in lr


def test_layer_decay_picks_the_outer_blocks_and_puts_embeddings_first():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # blocks whose MLP is a 3-entry Sequential: more numbered children than the 2 blocks
            self.blocks = nn.ModuleList([nn.Module() for _ in range(2)])
            for b in self.blocks:
                b.mlp = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
            self.embed = nn.Embedding(5, 4)  # registered after the blocks
            self.head = nn.Linear(4, 2)

    groups = paramwise.param_groups(Net(), [paramwise.layer_decay(0.5)], lr=1.0)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["embed.weight"] == 0.5 ** 3
    assert lr["blocks.0.mlp.2.weight"] == 0.5 ** 2 and lr["blocks.1.mlp.0.weight"] == 0.5
    assert lr["head.weight"] == 1.0


def test_rule_numbers_are_the_users_own_after_layer_decay():
    model = TiedLM()
    with pytest.raises(ParamwiseError, match=r"^rule 1 \('encoder\.\*'\) matched no parameter"):
        paramwise.param_groups(model, [paramwise.layer_decay(0.5), Rule("encoder.*", lr=0.1)],
                               lr=1.0)
    opt = paramwise.optimizer(model, "sgd", [paramwise.layer_decay(0.5),
                                             Rule("bias", weight_decay=0.0)], lr=1.0)
    text = paramwise.explain(opt, "blocks.0.0.bias")
    assert "rule 0 ('layer_decay depth 1/2')" in text and "rule 1 ('bias')" in text


def test_warnings_point_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paramwise.param_groups(nn.Linear(2, 2), [Rule("nope", lr=0.1)], strict=False)
    assert caught and caught[0].filename == __file__


def test_report_and_explain_check_what_they_are_given():
    model = nn.Linear(2, 2)
    with pytest.raises(ParamwiseError, match="unknown option 'weight_deacy' for AdamW"):
        paramwise.report(model, optimizer="adamw", weight_deacy=0.1)
    opt = paramwise.optimizer(model, "sgd", lr=0.1)
    with pytest.raises(ParamwiseError, match="already built an optimizer for this model"):
        paramwise.report(model, lr=5.0)
    with pytest.raises(ParamwiseError, match="got rules or options as well"):
        paramwise.explain(opt, "weight", lr=5.0)


def test_odd_inputs_get_paramwise_errors():
    class NoneDecl(nn.Linear):
        def no_weight_decay(self):
            return None

    class BadDecl(nn.Linear):
        def no_weight_decay(self):
            return 3

    assert len(paramwise.param_groups(NoneDecl(2, 2))) == 1
    with pytest.raises(ParamwiseError, match="no_weight_decay\\(\\) .* returned 3"):
        paramwise.param_groups(BadDecl(2, 2))
    with pytest.raises(ParamwiseError, match="a selector must be a string, got list"):
        paramwise.parse(["bias"])
    opt = paramwise.optimizer(nn.Linear(2, 2), "torch.optim.AdamW", lr=1e-3)
    assert type(opt) is torch.optim.AdamW
