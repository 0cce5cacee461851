"""paramwise.audit against independent references: torch's own steps (what decays, coupled or
decoupled, what never moves), the model's own module tree (which tensors are BatchNorm weights,
embeddings, biases), HF Trainer's own ``create_optimizer()`` and a hand-written timm-style layer
decay. Every fix a finding names is run, and must remove the finding."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import paramwise
from paramwise import Rule, audit, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_layer() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))


def names_where(model: nn.Module, pred) -> list[str]:
    """``<module>.<attr>`` of every parameter whose (module, attr) satisfies ``pred``, in
    ``named_parameters`` order: the reference, read from the module tree by hand."""
    return [f"{mn}.{a}" if mn else a for mn, m in model.named_modules()
            for a, _ in m.named_parameters(recurse=False) if pred(m, a)]


def numel(model: nn.Module, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def only(rep, kind):
    got = rep.of(kind)
    assert [f.kind for f in rep.findings].count(kind) == 1 and len(got) == 1, str(rep)
    return got[0]


def rule_of(finding):
    """The finding's rule, evaluated as the code it claims to be."""
    return eval(finding.rule, {"paramwise": paramwise, "Rule": Rule})  # noqa: S307


# ---------------------------------------------------------------------------------------------
# the seed's optimizer and its fix


def test_seed_sgd_decays_both_biases_and_its_fix_is_clean():
    net = two_layer()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-5)
    rep = audit(net, opt)
    f = only(rep, "decayed_bias")
    assert len(rep.findings) == 1
    biases = names_where(net, lambda m, a: a == "bias")
    assert list(f.names) == biases == ["0.bias", "2.bias"]
    assert f.elements == numel(net, biases) == 51
    assert f.share == pytest.approx(51 / sum(p.numel() for p in net.parameters()))
    assert f.detail["form"] == "coupled" and f.groups == (0,)
    assert re.fullmatch(r"2 of 2 biases get coupled weight decay \(SGD weight_decay=1e-05 in "
                        r"group 0\): 51 elements, 1\.0% of the trainable ones", f.message)
    assert re.search(r"paramwise\.no_decay\(\)", f.fix)
    assert f.rule == "paramwise.Rule('bias', weight_decay=0.0)"
    # the seed's own fix: two hand-written groups
    weight_p, bias_p = [], []
    for name, p in net.named_parameters():
        (bias_p if "bias" in name else weight_p).append(p)
    fixed = torch.optim.SGD([{"params": weight_p, "weight_decay": 1e-5},
                             {"params": bias_p, "weight_decay": 0}], lr=1e-2, momentum=0.9)
    assert audit(net, fixed).ok and audit(net, fixed).findings == []
    # and the named rule, run
    opt = paramwise.optimizer(net, "sgd", [rule_of(f)], lr=1e-2, momentum=0.9, weight_decay=1e-5)
    assert audit(net, opt).ok


def _decoupled_by_torch(make) -> bool:
    """Two steps with zero gradients: decoupled decay is exactly w <- (1 - lr*wd) w per step;
    coupled decay feeds wd*w through momentum / the adaptive denominator and differs."""
    w = nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = make([w])
    for _ in range(2):
        w.grad = torch.zeros_like(w)
        opt.step()
    g = opt.param_groups[0]
    expect = 2.0 * (1 - g["lr"] * g["weight_decay"]) ** 2
    return torch.allclose(w.detach(), torch.full_like(w, expect), rtol=1e-9, atol=0)


MAKERS = {
    "SGD+momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
    "Adam(decoupled)": lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1,
                                                  decoupled_weight_decay=True),
    "NAdam(decoupled)": lambda p: torch.optim.NAdam(p, lr=0.1, weight_decay=0.1,
                                                    decoupled_weight_decay=True),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.1, weight_decay=0.1),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.1),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.1, weight_decay=0.1),
}


@pytest.mark.parametrize("which", list(MAKERS))
def test_coupled_or_decoupled_as_torch_steps_it(which):
    net = nn.Linear(3, 2)
    f = only(audit(net, MAKERS[which](net.parameters())), "decayed_bias")
    form = "decoupled" if _decoupled_by_torch(MAKERS[which]) else "coupled"
    assert f.detail["form"] == form
    assert f"{form} weight decay" in f.message


# ---------------------------------------------------------------------------------------------
# HF Trainer's own optimizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_create_optimizer(tmp_path_factory):
    pytest.importorskip("accelerate")
    transformers.logging.set_verbosity_error()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("hf")), report_to="none", use_cpu=True,
        weight_decay=0.01)
    return lambda m: transformers.Trainer(model=m, args=args).create_optimizer()


def tiny_resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=3))


def tiny_bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32))


def tiny_gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
        eos_token_id=0))


def test_hf_trainer_resnet_decays_its_batchnorm_weights(hf_create_optimizer):
    model = tiny_resnet()
    rep = audit(model, hf_create_optimizer(model))
    f = only(rep, "decayed_norm")
    assert len(rep.findings) == 1, str(rep)
    bn = names_where(model, lambda m, a: isinstance(m, nn.BatchNorm2d) and a == "weight")
    assert len(bn) == 6 and list(f.names) == bn
    assert f.detail["form"] == "decoupled" and f.detail["of"] == 6
    assert f.elements == numel(model, bn)
    assert f.rule == "paramwise.Rule('norm', weight_decay=0.0)"


def test_hf_trainer_bert_decays_exactly_its_embeddings(hf_create_optimizer):
    model = tiny_bert()
    rep = audit(model, hf_create_optimizer(model))
    f = only(rep, "decayed_embedding")
    assert len(rep.findings) == 1, str(rep)
    assert list(f.names) == names_where(model, lambda m, a: isinstance(m, nn.Embedding))
    assert {n.rsplit(".", 2)[-2] for n in f.names} == {
        "word_embeddings", "position_embeddings", "token_type_embeddings"}
    # excluded by no_decay()
    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-3,
                              weight_decay=0.01)
    assert audit(model, opt).ok


def test_hf_trainer_gpt2_decays_the_tied_embedding_and_says_so(hf_create_optimizer):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    f = only(audit(model, hf_create_optimizer(model)), "decayed_embedding")
    assert f.names == ("transformer.wte.weight", "transformer.wpe.weight")
    assert "tied: 'transformer.wte.weight' = 'lm_head.weight'" in f.message


def test_hf_example_one_liner_and_callback(tmp_path):
    pytest.importorskip("accelerate")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import hf_audit
    finally:
        sys.path.pop(0)
    out = hf_audit.main(steps=2)
    assert out["hf"].kinds() == {"decayed_embedding": 1}
    assert out["callback"] is not None and out["callback"].ok  # audited at on_train_begin
    # strict: HF's own optimizer stops the run before its first step
    model = hf_audit.build_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = transformers.Trainer(model=model, args=hf_audit._args(str(tmp_path), 2),
                                   train_dataset=hf_audit.Toy(),
                                   callbacks=[hf_audit.AuditCallback(strict=True)])
    with pytest.raises(paramwise.ParamwiseError,
                       match=r"the optimizer has 1 audit finding\(s\) \(decayed_embedding\); "
                             r"fix them"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def _models():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(4))
    conv(torch.zeros(1, 3, 6, 6))
    enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    return {"two_layer": two_layer(), "conv_bn": conv, "transformer_layer": enc,
            "resnet": tiny_resnet(), "bert": tiny_bert(), "gpt2_tied": tiny_gpt2()}


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_a_paramwise_no_decay_optimizer_has_no_findings(optim):
    for name, model in _models().items():
        opt = paramwise.optimizer(model, optim, [paramwise.no_decay()], lr=1e-3,
                                  weight_decay=0.05)
        rep = audit(model, opt)
        assert rep.ok and str(rep).endswith("no findings"), (name, str(rep))
        # while the one-group optimizer of the same model does decay something
        assert not audit(model, type(opt)(model.parameters(), lr=1e-3, weight_decay=0.05)).ok


# ---------------------------------------------------------------------------------------------
# timm-style layer decay under a torch scheduler


class ViTish(nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(12, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(depth)])
        self.head = nn.Linear(8, 2)


def timm_style_groups(model: ViTish, rate: float) -> list[dict]:
    """timm's param_groups_layer_decay, by hand: layer 0 = patch_embed, i+1 = block i,
    L+1 = head; lr_scale = rate ** (L+1 - layer); 1-d tensors without decay."""
    n = len(model.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        layer = 0 if name.startswith("patch_embed") else (
            int(name.split(".")[1]) + 1 if name.startswith("blocks") else n)
        decay = p.ndim > 1
        g = groups.setdefault((layer, decay), {"params": [], "weight_decay": 0.05 if decay
                                               else 0.0, "lr_scale": rate ** (n - layer)})
        g["params"].append(p)
    return list(groups.values())


def test_timm_lr_scale_under_lambdalr_is_reported_and_its_rule_reproduces_the_scales():
    model = ViTish()
    opt = torch.optim.AdamW(timm_style_groups(model, 0.5), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    opt.step()
    sched.step()
    # the reference: torch never reads lr_scale, every group runs at the same lr
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    rep = audit(model, opt, scheduler=sched)
    f = only(rep, "unread_key")
    assert f.detail["key"] == "lr_scale" and f.groups == tuple(range(len(opt.param_groups)))
    assert set(f.names) == {n for n, _ in model.named_parameters()}
    assert re.search(r"sets? 'lr_scale' \(\d+ values: .*\), which AdamW never reads; it is "
                     r"read by timm's schedulers .*; the scheduler given, LambdaLR, does not "
                     "either", f.message)
    assert f.rule == "paramwise.layer_decay(0.5)"
    # the rule gives each parameter the lr timm's scheduler would: base lr x lr_scale
    want = {id(p): 1e-3 * g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    pw = paramwise.optimizer(model, "adamw", [paramwise.no_decay(), rule_of(f)], lr=1e-3,
                             weight_decay=0.05)
    got = {id(p): g["lr"] for g in pw.param_groups for p in g["params"]}
    assert got.keys() == want.keys()
    assert all(math.isclose(got[k], want[k], rel_tol=1e-12) for k in want)
    assert audit(model, pw).ok
    # a timm scheduler reads the key: nothing to report
    timm_sched = type("CosineLRScheduler", (), {"__module__": "timm.scheduler.cosine_lr"})()
    timm_sched.optimizer = opt
    assert audit(model, opt, scheduler=timm_sched).ok
    # no scheduler given: reported, with what would read it
    assert "pass it: audit(..., scheduler=s)" in only(audit(model, opt), "unread_key").message


# ---------------------------------------------------------------------------------------------
# typos, missing and frozen parameters


def test_weight_deacy_is_reported_with_the_real_key_and_the_rule_sets_it():
    net = two_layer()
    opt = torch.optim.SGD([{"params": [net[0].weight], "weight_deacy": 0.0},
                           {"params": [net[0].bias, net[2].weight, net[2].bias],
                            "weight_decay": 0.0}], lr=0.1, weight_decay=1e-4)
    assert opt.param_groups[0]["weight_decay"] == 1e-4  # torch kept the typo, and the decay
    rep = audit(net, opt)
    f = only(rep, "unread_key")
    assert len(rep.findings) == 1
    assert f.names == ("0.weight",) and f.groups == (0,) and f.detail["closest"] == "weight_decay"
    assert re.fullmatch(r"group 0 sets 'weight_deacy' \(0\.0\), which SGD never reads \(did you "
                        r"mean 'weight_decay'\? It runs with weight_decay=0\.0001\)", f.message)
    assert re.fullmatch(r"rename it to 'weight_decay': paramwise\.Rule\('0\.weight', "
                        r"weight_decay=0\.0\) sets it, checked", f.fix)
    fixed = paramwise.optimizer(net, "sgd", [rule_of(f), Rule("bias", weight_decay=0.0)],
                                lr=0.1, weight_decay=1e-4)
    assert audit(net, fixed).ok


def test_a_key_nothing_resembles_is_reported_with_what_the_optimizer_reads():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": list(net.parameters()), "frobnicate": 3}], lr=0.1)
    f = only(audit(net, opt), "unread_key")
    assert re.fullmatch(r"group 0 sets 'frobnicate' \(3\), which SGD never reads; SGD reads "
                        r"dampening, differentiable, .*", f.message)
    assert f.rule is None and re.match(r"remove it", f.fix)
    # labels (string values) are not options: Lightning's LearningRateMonitor reads "name"
    assert audit(net, torch.optim.SGD([{"params": list(net.parameters()), "name": "all"}],
                                      lr=0.1)).ok


def test_a_parameter_in_no_group_is_reported_and_never_moves():
    net = two_layer()
    opt = torch.optim.SGD([net[0].weight, net[0].bias], lr=0.1)
    before = net[2].weight.detach().clone()
    net(torch.randn(4, 100)).sum().backward()
    opt.step()
    assert torch.equal(net[2].weight, before)  # the reference: it never trains
    f = only(audit(net, opt), "not_in_optimizer")
    assert f.names == ("2.weight", "2.bias") and f.elements == 51
    assert re.fullmatch(r"2 trainable parameter\(s\) of Sequential are in no group \('2\.weight', "
                        r"'2\.bias'; 51 elements, 1\.0%\): they never update", f.message)
    assert re.search(r"add_param_group", f.fix)


def test_a_frozen_parameter_in_a_group_is_reported():
    net = two_layer()
    net[0].bias.requires_grad_(False)
    opt = torch.optim.SGD([{"params": list(net.parameters()), "weight_decay": 0.0}], lr=0.1)
    f = only(audit(net, opt), "frozen_in_optimizer")
    assert f.names == ("0.bias",) and f.groups == (0,) and f.share is None
    assert re.match(r"1 requires_grad=False parameter\(s\) sit in group 0 \('0\.bias'\)", f.message)
    assert re.search(r"include_frozen=True", f.fix)
    assert len(audit(net, opt).findings) == 1


def test_an_optimizer_of_another_copy_of_the_model():
    net = two_layer()
    opt = torch.optim.SGD(copy.deepcopy(net).parameters(), lr=0.1)
    rep = audit(net, opt)
    foreign = only(rep, "not_in_model")
    assert foreign.names[0] == "<group 0 tensor 0, shape (50, 100)>" and len(foreign.names) == 4
    assert only(rep, "not_in_optimizer").names == tuple(n for n, _ in net.named_parameters())


# ---------------------------------------------------------------------------------------------
# regularizers, lr 0


def test_regularizer_keys_do_nothing_until_attached():
    def make():
        torch.manual_seed(0)
        net = nn.Linear(4, 3)
        return net, torch.optim.SGD([{"params": [net.weight], "l1": 0.5},
                                     {"params": [net.bias]}], lr=0.1)

    def moved(net, opt):
        before = net.weight.detach().clone()
        net.weight.grad, net.bias.grad = torch.zeros_like(net.weight), torch.zeros_like(net.bias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step may warn about the keys too
            opt.step()
        return not torch.equal(before, net.weight)

    net, opt = make()
    f = only(audit(net, opt), "regularizer_not_attached")
    assert f.names == ("weight",) and f.detail["keys"] == ["l1"]
    assert re.fullmatch(r"group 0 sets paramwise regularizer options \(l1=0\.5\) but paramwise is "
                        r"not attached to SGD: nothing applies them", f.message)
    assert f.rule == "paramwise.attach(optimizer)"
    assert not moved(net, opt)  # the reference: l1 did nothing
    net, opt = make()
    paramwise.attach(opt)
    assert audit(net, opt).ok and moved(net, opt)
    net = nn.Linear(4, 3)
    assert audit(net, paramwise.optimizer(net, "sgd", [Rule("weight", l1=1e-3)], lr=0.1)).ok


def test_lr_zero_is_reported_but_not_a_warmup_that_starts_at_zero():
    net = two_layer()
    opt = torch.optim.AdamW([{"params": [net[0].weight], "lr": 0.0},
                             {"params": [net[0].bias, net[2].weight, net[2].bias],
                              "weight_decay": 0.0}], lr=1e-3, weight_decay=0.05)
    before = net[0].weight.detach().clone()
    net(torch.randn(4, 100)).sum().backward()
    opt.step()
    assert torch.equal(before, net[0].weight)  # the reference: lr 0, decay or not, no change
    f = only(audit(net, opt), "zero_lr")
    assert f.names == ("0.weight",) and f.groups == (0,)
    assert re.fullmatch(r"group 0 has lr=0 \(and no scheduler's initial_lr above 0\): their 1 "
                        r"trainable tensor\(s\) never change; their weight_decay=0\.05 does "
                        r"nothing at lr 0 either", f.message)
    assert f.rule == "paramwise.Rule('0.weight', lr=0.001)"
    warm = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(warm, lambda s: s / 10)
    assert warm.param_groups[0]["lr"] == 0.0 and audit(net, warm).ok


# ---------------------------------------------------------------------------------------------
# hybrids: keys per owning optimizer, tied and duplicated tensors


class Pair(torch.optim.Optimizer):
    """A hand-made hybrid as users write them: ``optimizers`` plus their groups, no checks."""

    def __init__(self, optimizers):
        super().__init__([torch.zeros(0, requires_grad=True)], {})
        self.optimizers = list(optimizers)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()


def test_hybrid_groups_are_checked_against_their_own_optimizer():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    muon = torch.optim.Muon([model[0].weight, model[1].weight], lr=0.02, weight_decay=0.1)
    adamw = torch.optim.AdamW([model[0].bias, model[1].bias], lr=1e-3, weight_decay=0.0)
    hybrid = paramwise.Hybrid([adamw, muon])
    assert "ns_steps" in muon.param_groups[0]
    rep = audit(model, hybrid)
    assert rep.ok and rep.optimizer == "Hybrid(AdamW, Muon)", str(rep)
    adamw.param_groups[0]["ns_steps"] = 3  # a Muon key in AdamW's group: nothing reads it
    f = only(audit(model, hybrid), "unread_key")
    assert f.names == ("0.bias", "1.bias") and "which AdamW never reads" in f.message


def test_a_tied_tensor_in_two_inner_optimizers_is_stepped_twice_and_reported():
    model = tiny_gpt2()
    wte = model.transformer.wte.weight
    rest = [(n, p) for n, p in model.named_parameters() if p is not wte]
    pair = Pair([torch.optim.SGD([{"params": [wte], "param_names": ["transformer.wte.weight"],
                                   "weight_decay": 0.0},
                                  {"params": [p for _, p in rest],
                                   "param_names": [n for n, _ in rest]}], lr=0.1),
                 torch.optim.SGD([{"params": [model.lm_head.weight],
                                   "param_names": ["lm_head.weight"], "weight_decay": 0.1}],
                                 lr=0.1)])
    before = wte.detach().clone()
    wte.grad = torch.ones_like(wte)
    pair.step()
    once = before - 0.1 * 1.0                      # SGD, weight_decay 0
    twice = once - 0.1 * (1.0 + 0.1 * once)         # SGD, weight_decay 0.1, on the result
    assert torch.allclose(wte, twice)  # the reference: each appearance stepped it
    rep = audit(model, pair)
    f = only(rep, "tied_split")
    assert f.names == ("transformer.wte.weight",) and f.groups == (0, 2)
    assert re.match(r"'transformer\.wte\.weight' = 'lm_head\.weight' appears in group 0 \(SGD, as "
                    r"'transformer\.wte\.weight', weight_decay=0\.0\), group 2 \(SGD, as "
                    r"'lm_head\.weight', weight_decay=0\.1\)", f.message)
    untied = nn.Linear(2, 2)
    dup = Pair([torch.optim.SGD(untied.parameters(), lr=0.1),
                torch.optim.SGD([untied.bias], lr=0.1)])
    d = only(audit(untied, dup), "duplicate")
    assert d.names == ("bias",) and d.detail["appearances"] == {"bias": [0, 1]}


# ---------------------------------------------------------------------------------------------
# wrappers, errors, rendering


def test_accelerate_and_lightning_style_wrappers_are_unwrapped():
    net = two_layer()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-4)
    wrapper = type("AcceleratedOptimizer", (), {})()
    wrapper.optimizer = opt
    assert [f.kind for f in audit(net, wrapper).findings] == ["decayed_bias"]


def test_bad_calls_are_clear_errors():
    net = two_layer()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    cases = [
        (lambda: audit(opt, net), r"audit\(\) got the optimizer first and the model second; "
                                  r"call paramwise\.audit\(model, optimizer\)"),
        (lambda: audit(net, list(net.parameters())),
         r"audit\(\) needs a torch\.optim\.Optimizer, got list; pass the optimizer instance"),
        (lambda: audit(net, opt, ignore=["decayed_bais"]),
         r"audit\(ignore=\.\.\.\) names unknown finding kind 'decayed_bais' \(did you mean "
         r"'decayed_bias'\?\); kinds are decayed_bias, "),
        (lambda: audit(net, opt, scheduler=torch.optim.lr_scheduler.LambdaLR(other, lambda s: 1)),
         r"the LambdaLR drives another optimizer \(SGD\), not the one audited; pass the "
         r"scheduler built on this optimizer"),
        (lambda: audit(net, opt, scheduler=42), r"got a int, which has no optimizer"),
        (lambda: audit(net.state_dict(), opt), r"expected a torch\.nn\.Module, got "),
        (lambda: audit(net, opt).of("zero-lr"),
         r"AuditReport\.of\(\) names unknown finding kind 'zero-lr' \(did you mean 'zero_lr'\?\)"),
    ]
    for call, pattern in cases:
        with pytest.raises(paramwise.ParamwiseError, match=pattern):
            call()


def test_report_renders_a_table_and_plain_data_and_ignores_kinds():
    net = two_layer()
    opt = torch.optim.SGD([{"params": [net[0].weight, net[0].bias], "weight_deacy": 0}],
                          lr=0.1, weight_decay=1e-4)
    rep = audit(net, opt)
    assert rep.kinds() == {"decayed_bias": 1, "unread_key": 1, "not_in_optimizer": 1}
    lines = str(rep).splitlines()
    assert lines[0] == ("SGD, 1 group(s), 4 trainable tensor(s) (5,101 elements): "
                        "3 finding(s)")
    assert lines[1].split() == ["#", "kind", "tensors", "elements", "share", "names"]
    assert lines[2].split()[:5] == ["1", "decayed_bias", "1", "50", "1.0%"]
    assert sum(line.startswith("[") for line in lines) == 3
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["counts"] == rep.kinds() and data["findings"][1]["detail"]["key"] == "weight_deacy"
    quiet = audit(net, opt, ignore=["decayed_bias", "unread_key"])
    assert quiet.kinds() == {"not_in_optimizer": 1} and "(ignored: decayed_bias, unread_key)" \
        in str(quiet).splitlines()[0]


def test_each_kind_is_documented():
    from paramwise.audit import KINDS

    assert set(KINDS) == {"decayed_bias", "decayed_norm", "decayed_embedding", "decayed_gain",
                          "unread_key", "regularizer_not_attached", "not_in_optimizer",
                          "frozen_in_optimizer", "tied_split", "duplicate", "not_in_model",
                          "zero_lr"}
    gain = nn.Module()
    gain.lin = nn.Linear(4, 4, bias=False)
    gain.layer_scale = nn.Parameter(torch.ones(4))
    f = only(audit(gain, torch.optim.AdamW(gain.parameters())), "decayed_gain")
    assert f.names == ("layer_scale",) and f.rule == "paramwise.Rule('gain', weight_decay=0.0)"


# ---------------------------------------------------------------------------------------------
# the command line

FACTORIES = textwrap.dedent("""
    import sys
    import torch, torch.nn as nn
    import paramwise

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def tutorial():
        m = net()
        return m, torch.optim.SGD(m.parameters(), lr=0.01, weight_decay=1e-5)

    def clean():
        m = net()
        return m, paramwise.optimizer(m, "sgd", [paramwise.no_decay()], lr=0.01,
                                      weight_decay=1e-5)

    def with_scheduler():
        m, opt = clean()
        return m, opt, torch.optim.lr_scheduler.StepLR(opt, 10)

    def model_only():
        return net()

    def exits():
        sys.exit(3)
""")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "audit_factories.py").write_text(FACTORIES)
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_audit_exit_status_tells_ci_whether_there_are_findings(factories, capsys):
    code, out, err = run(["audit", "audit_factories.py:tutorial"], capsys)
    assert code == 1 and err == ""
    assert out.startswith("audit_factories.py:tutorial: SGD, 1 group(s), 4 trainable tensor(s)")
    assert "decayed_bias" in out and "rule: paramwise.Rule('bias', weight_decay=0.0)" in out
    for spec in ("clean", "with_scheduler"):
        code, out, err = run(["audit", f"audit_factories.py:{spec}"], capsys)
        assert (code, err) == (0, "") and out.rstrip().endswith("no findings")
    code, out, _ = run(["audit", "audit_factories.py:tutorial", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["factory"] == "audit_factories.py:tutorial"
    assert [f["kind"] for f in data["findings"]] == ["decayed_bias"]
    assert data["findings"][0]["names"] == ["0.bias", "2.bias"]
    code, out, _ = run(["audit", "audit_factories.py:tutorial", "--ignore", "decayed_bias"], capsys)
    assert code == 0


@pytest.mark.parametrize("argv, pattern", [
    (["audit", "audit_factories.py:model_only"],
     r"paramwise audit: error: audit_factories\.py:model_only\(\) returned a Sequential, not "
     r"\(model, optimizer\); return \(model, optimizer\) or \(model, optimizer, scheduler\)"),
    (["audit", "audit_factories.py:tutorial", "--ignore", "decayed_bais"],
     r"paramwise audit: error: audit\(ignore=\.\.\.\) names unknown finding kind 'decayed_bais' "
     r"\(did you mean 'decayed_bias'\?\)"),
    (["audit", "exits_at_import.py:build"],
     r"paramwise audit: error: running 'exits_at_import\.py' called sys\.exit\(5\); a factory "
     r"must not exit: put the script part of that file under `if __name__ == '__main__':`"),
    (["inspect", "exits_at_import.py:build"],
     r"paramwise inspect: error: running 'exits_at_import\.py' called sys\.exit\(5\)"),
    (["audit", "audit_factories.py:exits"],
     r"paramwise audit: error: audit_factories\.py:exits\(\) called sys\.exit\(3\); "),
])
def test_cli_usage_errors_exit_2_with_one_line(factories, capsys, argv, pattern):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and re.match(pattern, err), err


def test_cli_output_into_a_closed_pipe_exits_quietly(tmp_path):
    (tmp_path / "wide.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(2000)])\n")
    proc = subprocess.Popen([sys.executable, "-m", "paramwise", "inspect", "wide.py:build",
                             "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT + "/src"})
    assert proc.stdout.readline().strip() == b"{"  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_benchmark_script_runs_and_prints_both_times():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_audit
    finally:
        sys.path.pop(0)
    rows = bench_audit.main(["--tensors", "300", "--repeat", "1"])
    assert len(rows) == 3 and all(r["audit_ms"] >= 0 and r["build_ms"] >= 0 for r in rows)
    assert [r["findings"] for r in rows] == [3, 0, 3]  # bias, norm, embedding; clean; the same
