"""Regularization through the public face: paramwise.optimizer(model, ..., rules=[Rule(...)])."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import paramwise
from paramwise.step.hooks import handle_of
from paramwise.step.monitor import penalty, stats


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).double()


def batches(n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 12, generator=g, dtype=torch.float64),
             torch.randn(32, 3, generator=g, dtype=torch.float64)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_l1_rule_gives_exact_zeros_only_where_selected():
    model = mlp()
    opt = paramwise.optimizer(model, "adam", [paramwise.Rule("weight & type:Linear", l1=3e-2)],
                              lr=1e-2)
    assert handle_of(opt) is not None
    train(model, opt, batches())
    assert (model[0].weight == 0).float().mean() > 0.2
    assert (model[0].bias != 0).all() and (model[2].bias != 0).all()
    s = stats(opt)
    assert s[0]["zero_fraction"] > 0.2 and s[1]["zeros"] == 0


def test_l2_is_lowered_to_native_weight_decay_and_matches_it():
    a, b = mlp(), mlp()
    opt = paramwise.optimizer(a, "sgd", [paramwise.Rule("weight", l2=1e-2)], lr=0.1,
                              momentum=0.9)
    groups = {tuple(g["param_names"]): g for g in opt.param_groups}
    w = groups[("0.weight", "2.weight")]
    assert w["weight_decay"] == 1e-2 and w["paramwise_lowered"] == ("l2->weight_decay",)
    ref = torch.optim.SGD([{"params": [b[0].weight, b[2].weight], "weight_decay": 1e-2},
                           {"params": [b[0].bias, b[2].bias]}], lr=0.1, momentum=0.9)
    train(a, opt, batches())
    train(b, ref, batches())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_adam_decoupled_decay_rule_is_adamw():
    a, b = mlp(), mlp()
    opt = paramwise.optimizer(a, "adam", [paramwise.Rule("weight", decoupled_decay=0.1)],
                              lr=1e-2)
    ref = torch.optim.AdamW([{"params": [b[0].weight, b[2].weight], "weight_decay": 0.1},
                             {"params": [b[0].bias, b[2].bias], "weight_decay": 0.0}], lr=1e-2)
    train(a, opt, batches())
    train(b, ref, batches())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_group_lasso_rule_prunes_whole_input_features():
    model = mlp()
    opt = paramwise.optimizer(model, "sgd",
                              [paramwise.Rule("0.weight", group_lasso=0.05, group_dim=1)],
                              lr=0.2)
    train(model, opt, batches(60))
    cols = (model[0].weight == 0).all(dim=0)
    assert cols.sum() >= 1
    s = next(v for v in stats(opt).values() if "zero_rows" in v)
    assert s["zero_rows"] == int(cols.sum()) and s["rows"] == 12


@pytest.mark.parametrize("rule, pattern", [
    (lambda: paramwise.Rule("bias", group_lasso=1e-2),
     r"rule 0 \('bias'\).*'0\.bias'.*group_lasso needs"),
    (lambda: paramwise.Rule("weight", max_norm=0.0),
     r"'0\.weight'.*max_norm=0\.0 must be a finite number > 0"),
    # a bool option is typed when the rule is made, before any optimizer
    (lambda: paramwise.Rule("weight", l1=1e-3, prox="yes"), r"prox must be True or False"),
])
def test_bad_regularizer_options_fail_when_the_optimizer_is_built(rule, pattern):
    with pytest.raises(paramwise.ParamwiseError, match=pattern):
        paramwise.optimizer(mlp(), "adam", [rule()], lr=1e-3)


def test_penalty_in_the_loss_equals_the_subgradient_hooks():
    """loss + penalty(opt) without hooks trains exactly like the prox=False hooks."""
    a, b = mlp(), mlp()
    rules = [paramwise.Rule("weight", l1=1e-3, l2=1e-2, prox=False)]
    opt_a = paramwise.optimizer(a, "sgd", rules, lr=0.1)
    opt_b = paramwise.optimizer(b, "sgd", rules, lr=0.1)
    handle_of(opt_b).remove()
    for g in opt_b.param_groups:                 # the lowered l2 lives in weight_decay: undo it
        if g.get("paramwise_lowered"):
            g["weight_decay"] = 0.0
    for x, y in batches():
        opt_a.zero_grad()
        nn.functional.mse_loss(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        (nn.functional.mse_loss(b(x), y) + penalty(opt_b)).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_checkpoint_resume_through_the_face():
    rules = [paramwise.Rule("weight", l1=1e-3, max_norm=3.0, l2_to_init=1e-2),
             paramwise.Rule("bias", decoupled_decay=0.1)]
    model = mlp()
    opt = paramwise.optimizer(model, "adam", rules, lr=1e-2)
    data = batches(10)
    train(model, opt, data[:5])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, data[5:])

    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    model2 = mlp(seed=7)
    opt2 = paramwise.optimizer(model2, "adam", rules, lr=1e-2)
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    train(model2, opt2, data[5:])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
