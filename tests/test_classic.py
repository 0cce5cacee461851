"""The classic recipe (decay weights, not biases) against the hand-written loop it replaces."""

import torch
from torch import nn

import paramwise


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))


def hand_written(model: nn.Module) -> torch.optim.Optimizer:
    weight_p, bias_p = [], []
    for name, p in model.named_parameters():
        if "bias" in name:
            bias_p += [p]
        else:
            weight_p += [p]
    return torch.optim.SGD(
        [{"params": weight_p, "weight_decay": 1e-5}, {"params": bias_p, "weight_decay": 0}],
        lr=1e-2, momentum=0.9,
    )


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 100, generator=g)
        y = torch.randn(32, 1, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_same_groups_as_hand_written_split():
    model = mlp()
    ours = paramwise.optimizer(model, "sgd", paramwise.Rule("bias", weight_decay=0.0),
                               lr=1e-2, momentum=0.9, weight_decay=1e-5)
    ref = hand_written(model)
    assert len(ours.param_groups) == len(ref.param_groups) == 2
    for g, h in zip(ours.param_groups, ref.param_groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in h["params"]]
        for key in ("lr", "momentum", "weight_decay", "dampening", "nesterov"):
            assert g[key] == h[key], key
    assert ours.param_groups[0]["param_names"] == ["0.weight", "2.weight"]
    assert ours.param_groups[1]["param_names"] == ["0.bias", "2.bias"]
    assert type(ours) is torch.optim.SGD  # the real optimizer, not a wrapper


def test_bit_identical_after_20_steps():
    a, b = mlp(), mlp()
    train(a, paramwise.optimizer(a, torch.optim.SGD, [paramwise.Rule("bias", weight_decay=0.0)],
                                 lr=1e-2, momentum=0.9, weight_decay=1e-5))
    train(b, hand_written(b))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb), na
    # And the run really moved the weights (so equality above is not vacuous).
    assert not torch.equal(a[0].weight, mlp()[0].weight)


def test_param_groups_are_plain_torch_groups():
    model = mlp()
    groups = paramwise.param_groups(model, [paramwise.Rule("bias", weight_decay=0.0)],
                                    weight_decay=1e-5)
    # options the rules did not set are left to the optimizer's defaults, as torch does
    assert "momentum" not in groups[0] and "lr" not in groups[0]
    opt = torch.optim.SGD(groups, lr=1e-2, momentum=0.9)
    assert opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 1e-5
    assert opt.param_groups[1]["weight_decay"] == 0.0
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
