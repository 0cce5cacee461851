"""Roles come from the module tree: bias, norm, embedding, gain, weight; they belong to a tensor."""

import pytest
import torch
from torch import nn

import paramwise
from paramwise.grouping.inventory import Inventory
from paramwise.grouping.roles import is_norm_module


class MyRMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.scale


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.rms = nn.RMSNorm(8)
        self.myrms = MyRMSNorm(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.act = nn.PReLU()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied input/output embeddings


def roles_by_name(model):
    inv = Inventory.build(model)
    return {n: set(r) for n, r in zip(inv.names, inv.roles)}, inv


def test_roles_on_a_mixed_model():
    roles, inv = roles_by_name(Zoo())
    expected = {
        "embed.weight": {"embedding"},
        "conv.weight": {"weight"}, "conv.bias": {"bias"},
        "bn.weight": {"norm"}, "bn.bias": {"norm", "bias"},
        "ln.weight": {"norm"}, "ln.bias": {"norm", "bias"},
        "gn.weight": {"norm"}, "gn.bias": {"norm", "bias"},
        "rms.weight": {"norm"},
        "myrms.scale": {"norm"},
        "attn.in_proj_weight": {"weight"}, "attn.in_proj_bias": {"bias"},
        "attn.out_proj.weight": {"weight"}, "attn.out_proj.bias": {"bias"},
        "act.weight": {"gain"},  # PReLU's slope: a per-channel scale
        "fc.weight": {"weight"}, "fc.bias": {"bias"},
        # the tied alias: a Linear's weight there, but one tensor has one set of roles (the
        # union over its names), so the head is an embedding too
        "head.weight": {"embedding"},
    }
    assert roles == expected
    # the tied tensor is one tensor with two names, first name first
    u = inv.unique[inv.index("head.weight")]
    assert [inv.names[i] for i in inv.aliases(u)] == ["embed.weight", "head.weight"]
    assert inv.num_tensors == len(expected) - 1


def test_roles_never_come_from_name_substrings():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias_net = nn.Linear(3, 3)   # 'bias' in the path, but its weight is a weight
            self.normal = nn.Linear(3, 3)     # 'norm' in the path, not a norm layer
            self.embedding_proj = nn.Linear(3, 3)

    roles, _ = roles_by_name(M())
    assert roles["bias_net.weight"] == {"weight"}
    assert roles["normal.weight"] == {"weight"}
    assert roles["embedding_proj.weight"] == {"weight"}
    assert roles["bias_net.bias"] == {"bias"}


@pytest.fixture
def restore_norm_classes():
    from paramwise.grouping import roles

    saved = list(roles.NORM_CLASSES)
    yield
    roles.NORM_CLASSES[:] = saved


def test_norm_heuristic_and_registration(restore_norm_classes):
    class WeightNormish(nn.Module):  # 'norm' in the name but owns a matrix: not a norm layer
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 3))

    class ScaleOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.Parameter(torch.ones(1))

    assert not is_norm_module(WeightNormish())
    assert not is_norm_module(ScaleOnly())
    paramwise.register_norm(ScaleOnly)
    assert is_norm_module(ScaleOnly())
    with pytest.raises(paramwise.ParamwiseError, match="nn.Module subclass"):
        paramwise.register_norm(int)


def test_rnn_biases_and_no_weight_decay_declarations():
    class TimmLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.rnn = nn.GRU(8, 8)
            self.blocks = nn.ModuleList([nn.Linear(8, 8)])

        def no_weight_decay(self):
            return {"pos_embed", "cls_token"}

    roles, _ = roles_by_name(TimmLike())
    assert roles["pos_embed"] == {"embedding"}
    assert roles["cls_token"] == {"embedding"}
    assert roles["rnn.bias_ih_l0"] == {"bias"} and roles["rnn.bias_hh_l0"] == {"bias"}
    assert roles["rnn.weight_ih_l0"] == {"weight"}
    assert roles["blocks.0.weight"] == {"weight"}


def test_no_decay_preset_selects_roles_and_tied_conflict_is_an_error():
    model = Zoo()
    # the preset selects by role, and roles belong to the tensor: both names of the tied
    # embedding/head get weight_decay=0 and it lands in one group only
    groups = paramwise.param_groups(model, [paramwise.no_decay()], weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert "head.weight" not in wd and wd["embed.weight"] == 0.0
    # a rule that names one alias and not the other is still an error, with the fix
    with pytest.raises(paramwise.ParamwiseError) as e:
        paramwise.param_groups(model, [paramwise.Rule("embed.*", lr_mult=0.1)], lr=1.0)
    msg = str(e.value)
    assert "'embed.weight' and 'head.weight' are the same (tied) tensor" in msg
    assert "lr=0.1 vs 1.0" in msg and "Rule('embed.weight | head.weight'" in msg
    assert "add '| head.weight' to their selectors" in msg
    for name in ("bn.weight", "ln.bias", "gn.weight", "rms.weight", "myrms.scale",
                 "attn.in_proj_bias", "conv.bias", "act.weight"):
        assert wd[name] == 0.0, name
    for name in ("conv.weight", "attn.in_proj_weight", "fc.weight"):
        assert wd[name] == 0.1, name
