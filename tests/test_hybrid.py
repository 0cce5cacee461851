"""One optimizer per rule: Muon for the hidden matrices, AdamW for the rest, as one optimizer.

References: the hand-built pair (torch.optim.Muon over the hidden matrices, torch.optim.AdamW
over the rest, each with its own schedule) and SparseAdam + Adam over a sparse embedding; torch's
own state_dict round trip through torch.save.
"""

import io

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError, Rule

STEPS = 30


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.attn(h).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.proj(a)
        return x + self.out(torch.relu(self.fc(x)))


class TinyLM(nn.Module):
    def __init__(self, vocab=32, d=16, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def lm_loss(model, step):
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 32, (4, 12), generator=g)
    logits = model(idx[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, 32), idx[:, 1:].reshape(-1))


def hidden_by_hand(model):
    """The hidden matrices, chosen by hand: the 2-D Linear weights inside the blocks."""
    return [m.weight for b in model.blocks for m in (b.attn, b.proj, b.fc, b.out)]


def train(model, opt, scheds, steps=STEPS, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()
        for s in scheds:
            s.step()


def test_muon_adamw_equals_the_hand_built_pair():
    torch.manual_seed(0)
    ref = TinyLM()
    mine = TinyLM()
    mine.load_state_dict(ref.state_dict())
    # the hand-built pair, each with its own cosine schedule
    hidden = hidden_by_hand(ref)
    ids = {id(p) for p in hidden}
    undecayed = [p for n, p in ref.named_parameters()
                 if id(p) not in ids and (n.endswith("bias") or "norm" in n or "embed" in n)]
    decayed = [p for p in ref.parameters() if id(p) not in ids and
               all(p is not q for q in undecayed)]
    muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1, momentum=0.9,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}],
                              lr=0.02, weight_decay=0.1)
    ref_scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, STEPS) for o in (muon, adamw)]

    class Pair:
        def zero_grad(self):
            muon.zero_grad()
            adamw.zero_grad()

        def step(self):
            muon.step()
            adamw.step()

    train(ref, Pair(), ref_scheds)
    # paramwise: one optimizer, one schedule
    opt = paramwise.optimizer(mine, "adamw", [paramwise.no_decay(),
                                              paramwise.hidden_matrices(momentum=0.9)],
                              lr=0.02, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, paramwise.Hybrid)
    assert [type(o) for o in opt.optimizers] == [torch.optim.AdamW, torch.optim.Muon]
    assert {id(p) for g in opt.part("muon").param_groups for p in g["params"]} == \
        {id(p) for p in hidden_by_hand(mine)}
    train(mine, opt, [torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)])
    for (n, a), b in zip(ref.named_parameters(), mine.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=n)
    assert lm_loss(mine, 99).item() < lm_loss(TinyLM(), 99).item()


class SparseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8, sparse=True)
        self.fc = nn.Linear(8, 1)

    def forward(self, idx):
        return self.fc(self.emb(idx).mean(1))


def test_sparseadam_for_the_sparse_embedding_adam_for_the_rest():
    torch.manual_seed(0)
    ref, mine = SparseNet(), SparseNet()
    mine.load_state_dict(ref.state_dict())
    sa = torch.optim.SparseAdam([ref.emb.weight], lr=0.01)
    ad = torch.optim.Adam(ref.fc.parameters(), lr=0.01)
    opt = paramwise.optimizer(mine, "adam", [Rule("type:Embedding", optimizer="sparseadam")],
                              lr=0.01)
    assert [type(o) for o in opt.optimizers] == [torch.optim.Adam, torch.optim.SparseAdam]
    for t in range(STEPS):
        g = torch.Generator().manual_seed(t)
        idx, y = torch.randint(0, 50, (6, 3), generator=g), torch.randn(6, 1, generator=g)
        for model, step in ((ref, lambda: (sa.step(), ad.step())), (mine, opt.step)):
            model.zero_grad()
            nn.functional.mse_loss(model(idx), y).backward()
            step()
    for a, b in zip(ref.parameters(), mine.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def build(model):
    return paramwise.optimizer(model, "adamw", [paramwise.no_decay(), paramwise.hidden_matrices()],
                               lr=0.01, weight_decay=0.1)


def test_state_dict_through_torch_save_resumes_bit_identically():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build(model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 20)
    train(model, opt, [sched], steps=5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    train(model, opt, [sched], steps=5, start=5)
    # a fresh process: the model, the optimizer and the schedule rebuilt, then loaded
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = TinyLM()
    model2.load_state_dict(saved["model"])
    opt2 = build(model2)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, 20)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert all(g is h for g, h in zip(opt2.param_groups,
                                      [g for o in opt2.optimizers for g in o.param_groups]))
    train(model2, opt2, [sched2], steps=5, start=5)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    # and by name, through paramwise's name-keyed checkpoints
    model3 = TinyLM()
    model3.load_state_dict(saved["model"])
    opt3 = build(model3)
    report = paramwise.load_state_dict(opt3, paramwise.state_dict(opt2))
    assert report.exact


def test_groups_are_shared_so_schedulers_clipping_and_scaler_reach_the_parts():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build(model)
    muon = opt.part(torch.optim.Muon)
    opt.param_groups[-1]["lr"] = 0.123
    assert muon.param_groups[-1]["lr"] == 0.123
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    plateau.step(1.0)
    plateau.step(2.0)
    assert muon.param_groups[-1]["lr"] == pytest.approx(0.0615)
    assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)
    # OneCycleLR cycles momentum or betas in *every* group: with Muon and AdamW mixed torch
    # refuses at construction (defaults shares neither); cycle_momentum=False works
    with pytest.raises(ValueError, match="momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    one = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10,
                                              cycle_momentum=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    before = [p.detach().clone() for p in model.parameters()]
    for t in range(3):
        opt.zero_grad()
        scaler.scale(lm_loss(model, t)).backward()
        scaler.unscale_(opt)
        total = nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        assert torch.isfinite(total)
        scaler.step(opt)
        scaler.update()
        one.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # state: each parameter's state lives in its part
    w = model.blocks[0].attn.weight
    assert "momentum_buffer" in opt.state[w] and opt.state[w] is muon.state[w]
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers)


def test_closure_is_called_once_and_add_param_group_goes_to_the_named_part():
    model = TinyLM()
    opt = build(model)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = lm_loss(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss)
    extra = nn.Parameter(torch.zeros(3, 3))
    opt.add_param_group({"params": [extra], "param_names": ["extra"], "optimizer": "muon",
                         "lr": 0.5})
    assert opt.part("muon").param_groups[-1]["params"] == [extra]
    assert opt.param_groups[-1] is opt.part("muon").param_groups[-1]
    bias = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [bias], "param_names": ["bias"]})  # the default part
    assert opt.optimizers[0].param_groups[-1]["params"] == [bias]
    where = [i for i, g in enumerate(opt.param_groups) if g is opt.optimizers[0].param_groups[-1]]
    assert where == [len(opt.optimizers[0].param_groups) - 1]  # after the default part's groups


def test_report_and_explain_show_the_split():
    model = TinyLM()
    opt = build(model)
    text = str(paramwise.report(opt))
    assert text.splitlines()[0].split()[:4] == ["group", "tensors", "elements", "optimizer"]
    assert "Muon" in text and "AdamW" in text
    why = paramwise.explain(opt, "blocks.0.fc.weight")
    assert "optimizer" in why and "Muon (set by rule 1)" in why
    opt2 = paramwise.optimizer(TinyLM(), "adamw", [paramwise.hidden_matrices()], lr=0.01,
                               betas=(0.9, 0.95))
    line = [x for x in paramwise.explain(opt2, "blocks.0.fc.weight").splitlines()
            if "defaults" in x][0]
    assert "lr=0.01" in line and "betas" not in line  # betas is AdamW's, not Muon's
    line = [x for x in paramwise.explain(opt2, "head.weight").splitlines() if "defaults" in x][0]
    assert "betas=(0.9, 0.95)" in line
    assert "AdamW (the default" in paramwise.explain(opt, "head.weight")


def test_config_rules_choose_the_optimizer():
    model = TinyLM()
    opt = paramwise.from_config(model, {
        "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1, "momentum": 0.9,
        "rules": [{"no_decay": True}, {"hidden_matrices": {"ns_steps": 4}},
                  {"select": "head.weight", "optimizer": "sgd", "lr": 0.1}]})
    assert [type(o).__name__ for o in opt.optimizers] == ["AdamW", "Muon", "SGD"]
    # momentum is a default only Muon and SGD take: it goes to them, not to AdamW
    assert opt.part("sgd").param_groups[0]["momentum"] == 0.9
    assert opt.part("muon").param_groups[0]["ns_steps"] == 4
    assert all("momentum" not in g for g in opt.part("adamw").param_groups)


BAD = [
    (lambda m: Rule("all", optimizer="muonn"),
     r"Rule\('all'\) sets optimizer='muonn': unknown optimizer 'muonn' \(did you mean 'muon'\?\)"),
    (lambda m: Rule("all", optimizer=nn.Linear), r"Linear is not a torch.optim.Optimizer subclass"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("all", momentum=0.9),
                                                paramwise.hidden_matrices()], lr=0.1),
     r"rule 0 \('all'\) sets momentum, which AdamW does not take, for \d+ parameters that go "
     r"to AdamW \(e.g. 'embed.weight'\); momentum is an option of Muon: narrow the rule"),
    (lambda m: paramwise.optimizer(m, "adamw", [paramwise.hidden_matrices()], lr=0.1, rho=0.9),
     r"the defaults set unknown option 'rho' for AdamW or Muon"),
    (lambda m: paramwise.optimizer(m, "muon", [paramwise.no_decay()], lr=0.02),
     r"Muon takes only 2-D parameters, but the default optimizer \(Muon\) sent it \d+ that are "
     r"not: 'blocks.0.norm.weight' \(16,\), .*; make another optimizer the default and send the "
     r"hidden matrices to Muon: paramwise.optimizer\(model, 'adamw', "
     r"\[paramwise.hidden_matrices\(\), ...\]\)"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("module:blocks", optimizer="muon")]),
     r"Muon takes only 2-D parameters, but rule 0 \('module:blocks'\) sent it .*; add '& "
     r"ndim==2' to that rule's selector"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("module:blocks", optimizer="muon")]),
     r"Muon takes only 2-D parameters, but rule 0 \('module:blocks'\) sent it"),
    (lambda m: paramwise.optimizer(m, "lbfgs", [paramwise.no_decay(key="l2")], lr=1.0),
     r"LBFGS supports one param group, but the rules give its parameters 2 different option "
     r"sets"),
    (lambda m: paramwise.optimizer(m, "adamw", [Rule("head.weight", optimizer="lbfgs")]),
     r"LBFGS re-evaluates the loss inside step\(\) and cannot share a step with AdamW"),
    (lambda m: paramwise.optimizer(m, "adam", [Rule("type:Embedding | head.weight",
                                                    optimizer="sparseadam")]),
     r"SparseAdam needs sparse gradients, but rule 0 .* sent it 2 parameters whose gradients "
     r"are dense: 'embed.weight' \(32, 16\), 'head.weight' \(32, 16\)"),
    (lambda m: paramwise.param_groups(m, [paramwise.hidden_matrices()], optimizer="adamw"),
     r"the rules send parameters to 2 optimizers \(AdamW, Muon\)"),
]


@pytest.mark.parametrize("make, message", BAD)
def test_bad_input_is_a_clear_error_and_builds_nothing(make, message):
    model = TinyLM()
    with pytest.raises(ParamwiseError, match=message):
        make(model)
    assert paramwise.api._LAST.get(model) is None  # nothing was built for the model


def test_tied_aliases_sent_to_different_optimizers_are_the_tied_conflict():
    model = TinyLM()
    model.head.weight = model.embed.weight
    with pytest.raises(ParamwiseError, match=r"'embed.weight' and 'head.weight' are the same "
                       r"\(tied\) tensor, but the rules give them different options: "
                       r"optimizer='AdamW' vs 'SGD'"):
        paramwise.optimizer(model, "adamw", [Rule("head.weight", optimizer="sgd")], lr=0.1)
    # the preset never splits a tied embedding/head: both names are embeddings
    opt = paramwise.optimizer(model, "adamw", [paramwise.hidden_matrices()], lr=0.1)
    assert all(p is not model.embed.weight for g in opt.part("muon").param_groups
               for p in g["params"])


def test_hidden_matrices_without_blocks_skips_the_input_layer_and_the_head():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 32), nn.ReLU(),
                        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = paramwise.optimizer(net, "adamw", [paramwise.hidden_matrices()], lr=0.01)
    names = [n for g in opt.part("muon").param_groups for n in g["param_names"]]
    assert names == ["2.weight", "4.weight"]  # conv filter (4-D) and head stay with AdamW


def test_a_mismatched_state_dict_loads_no_part_and_saved_options_regroup_within_parts():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build(model)
    train(model, opt, [], steps=2)
    sd = opt.state_dict()
    sd["param_groups"][-1]["params"] = sd["param_groups"][-1]["params"][:-1]  # the Muon part's
    fresh = build(TinyLM())
    before = [dict(g) for g in fresh.param_groups]
    with pytest.raises(ParamwiseError, match=r"saved param group \d+ does not fit group 0 of the "
                       r"Muon part"):
        fresh.load_state_dict(sd)
    assert all(len(o.state) == 0 for o in fresh.optimizers)  # no part was loaded
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in before]
    # keep_saved_options that splits groups keeps every part's groups its own and shared
    saved = paramwise.state_dict(opt)
    groups = []
    for g in saved["param_groups"]:  # the Muon group saved as two, one at another lr
        if "blocks.0.fc.weight" in g["param_names"]:
            half = [n for n in g["params"] if n.startswith("blocks.0.")]
            rest = [n for n in g["params"] if n not in half]
            groups += [{**g, "params": half, "param_names": half, "lr": 0.5},
                       {**g, "params": rest, "param_names": rest}]
        else:
            groups.append(g)
    report = paramwise.load_state_dict(fresh, {**saved, "param_groups": groups},
                                       keep_saved_options=("lr",))
    assert report.regrouped and len(fresh.part("muon").param_groups) == 2
    assert all(g is h for g, h in zip(fresh.param_groups,
                                      [g for o in fresh.optimizers for g in o.param_groups]))
    muon = fresh.part("muon")
    assert all(type(p) is nn.Parameter and p.ndim == 2 for g in muon.param_groups
               for p in g["params"])
    assert {n for g in muon.param_groups for n in g["param_names"]} == \
        {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn", "proj", "fc", "out")}


def test_pickle_deepcopy_state_get_and_a_truncated_parts_list():
    import copy
    import pickle

    model = TinyLM()
    opt = build(model)
    torch.optim.lr_scheduler.StepLR(opt, 1)  # wraps opt.step: must not break pickling
    back = pickle.loads(pickle.dumps(opt))
    assert [type(o) for o in back.optimizers] == [type(o) for o in opt.optimizers]
    assert all(g is h for g, h in zip(back.param_groups,
                                      [g for o in back.optimizers for g in o.param_groups]))
    twin = copy.deepcopy(opt)
    before = [p.detach().clone() for p in model.parameters()]
    for g in twin.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    twin.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # original intact
    frozen = nn.Parameter(torch.zeros(2))
    assert opt.state.get(frozen) is None and opt.state.get(model.head.weight) is None
    assert len(opt.state) == 0  # get() created nothing
    train(model, opt, [], steps=1)
    sd = opt.state_dict()
    sd["paramwise_parts"] = [{}]
    with pytest.raises(ParamwiseError, match=r"'paramwise_parts' holds 1 entries, this "
                       r"Hybrid\(AdamW, Muon\) has 2 parts"):
        build(TinyLM()).load_state_dict(sd)
    with pytest.raises(ParamwiseError, match=r"got optimizer=\.\.\. as a default option"):
        paramwise.optimizer(model, "sgd", [], optimizer="adam")


def test_a_default_that_only_makes_sense_with_a_rule_option_builds():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = paramwise.from_config(net, {"optimizer": torch.optim.AdamW, "lr": 0.01,
                                      "nesterov": True, "rules": [
                                          {"select": "ndim==2", "optimizer": torch.optim.SGD,
                                           "momentum": 0.9}]})
    g = opt.part("sgd").param_groups[0]
    assert (g["nesterov"], g["momentum"]) == (True, 0.9)
    # and a group whose own options torch rejects is still refused, naming the group
    with pytest.raises(ParamwiseError, match=r"config: the top level sets nesterov=True for 2 "
                       r"parameters of SGD \(e.g. '0.weight'\), which SGD refuses: .*Nesterov"):
        paramwise.from_config(net, {"optimizer": "adamw", "lr": 0.01, "nesterov": True, "rules": [
            {"select": "ndim==2", "optimizer": "sgd", "lr": 0.1}, {"select": "bias",
                                                                    "optimizer": "sgd",
                                                                    "momentum": 0.9}]})
