"""Checkpoints of a Muon + AdamW Hybrid, by name: ``paramwise.state_dict`` through ``torch.save``
or ``torch.distributed.checkpoint`` (one process), loaded into a freshly built Hybrid, resumes
bit-identically against the run that never stopped; moments follow the names when the rules
change; a ``torch.compile``d model gives the same split and the same (canonical) names.

References: the uninterrupted run; an optimizer whose state was moved over by hand, name by
name; the hidden matrices listed by hand from the model's code.
"""

import copy
import io
import math

import pytest
import torch
from torch import nn

import paramwise
from paramwise import Rule


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.norm(self.fc1(x))))


class Net(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(2))
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


HIDDEN = [f"blocks.{i}.{fc}.weight" for i in range(2) for fc in ("fc1", "fc2")]  # by hand
TOTAL = 8


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def hybrid(model: nn.Module, momentum: float = 0.95, extra: list | None = None):
    return paramwise.optimizer(model, "adamw", [paramwise.no_decay(),
                                                paramwise.hidden_matrices(momentum=momentum),
                                                *(extra or [])], lr=1e-2, weight_decay=0.1)


def cosine(opt) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / TOTAL)))


def train(model: nn.Module, opt, sched, start: int, stop: int) -> None:
    for t in range(start, stop):
        g = torch.Generator().manual_seed(t)
        idx = torch.randint(0, 16, (4, 6), generator=g)
        logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 16), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def names(opt) -> list[list[str]]:
    return [g["param_names"] for g in opt.param_groups]


def options(opt) -> list[dict]:
    return [{k: v for k, v in g.items() if k not in ("params", "param_names")}
            for g in opt.param_groups]


def assert_same_run(a: nn.Module, b: nn.Module, opt_a, opt_b) -> None:
    """Same weights and the same optimizer state, bit for bit, name by name."""
    pb = dict(b.named_parameters())
    for n, p in a.named_parameters():
        assert torch.equal(p, pb[n]), n
        sa, sb = opt_a.state[p], opt_b.state[pb[n]]
        assert sa.keys() == sb.keys(), (n, sa.keys(), sb.keys())
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), (n, k)


def resumed(load) -> tuple[Net, paramwise.Hybrid, Net, paramwise.Hybrid]:
    """Run A: TOTAL steps straight. Run B: half, saved, rebuilt from scratch, loaded with
    ``load(opt, sched, saved_optim_state)``, the other half."""
    ref = net()
    ref_opt = hybrid(ref)
    ref_sched = cosine(ref_opt)
    train(ref, ref_opt, ref_sched, 0, TOTAL)

    model = net()
    opt = hybrid(model)
    sched = cosine(opt)
    train(model, opt, sched, 0, TOTAL // 2)
    saved = {"model": model.state_dict(), "sched": sched.state_dict()}
    model2 = net(seed=7)                         # other weights until loaded
    model2.load_state_dict(saved["model"])
    opt2 = hybrid(model2)
    sched2 = cosine(opt2)
    sched2.load_state_dict(saved["sched"])
    load(opt, opt2)
    train(model2, opt2, sched2, TOTAL // 2, TOTAL)
    return ref, ref_opt, model2, opt2


def test_name_keyed_state_dict_through_torch_save_resumes_bit_identically():
    def load(old, new):
        buf = io.BytesIO()
        torch.save(paramwise.state_dict(old), buf)
        buf.seek(0)
        sd = torch.load(buf)                     # weights_only: plain tensors and containers
        assert sorted(sd["state"]) == sorted(n for n, _ in net().named_parameters())
        assert set(sd["state"]["blocks.0.fc1.weight"]) == {"momentum_buffer"}      # Muon's
        assert set(sd["state"]["head.weight"]) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's
        report = paramwise.load_state_dict(new, sd, keep_saved_options=("lr", "initial_lr"))
        assert report.exact and {k for c in report.changed.values() for k in c} == {"lr"}, \
            str(report)                          # the scheduled lr, restored
        assert sorted(report.loaded) == sorted(sd["state"])

    ref, ref_opt, model, opt = resumed(load)
    assert isinstance(opt, paramwise.Hybrid)
    assert_same_run(ref, model, ref_opt, opt)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]


def test_dcp_checkpoint_loads_by_name_and_resumes_bit_identically(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")

    def load(old, new):
        dcp.save({"optim": paramwise.state_dict(old)}, checkpoint_id=str(tmp_path))
        report = paramwise.load_dcp(new, str(tmp_path), keep_saved_options=("lr", "initial_lr"))
        assert report.exact and sorted(report.loaded) == sorted(n for n, _ in net().named_parameters()), \
            str(report)

    ref, ref_opt, model, opt = resumed(load)
    assert_same_run(ref, model, ref_opt, opt)


def test_moments_follow_names_when_the_rules_change():
    """Muon's momentum and the head's lr change between save and load: every parameter keeps
    its own moments; the options are the new rules'."""
    model = net()
    opt = hybrid(model)
    train(model, opt, None, 0, 4)
    sd = copy.deepcopy(paramwise.state_dict(opt))     # loading shares tensors, as torch's does

    def rebuilt(m):
        return hybrid(m, momentum=0.8, extra=[Rule("module:head", lr=3e-3)])

    model2 = net(seed=3)
    model2.load_state_dict(model.state_dict())
    opt2 = rebuilt(model2)
    report = paramwise.load_state_dict(opt2, sd)
    assert report.exact, str(report)
    assert report.changed["blocks.1.fc2.weight"] == {"momentum": (0.95, 0.8)}, report.changed
    assert report.changed["head.weight"] == {"lr": (1e-2, 3e-3)}, report.changed
    # reference: the original run's state moved over by hand into an optimizer with the new rules
    ref_opt = rebuilt(model)
    for p in model.parameters():
        ref_opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
    train(model, ref_opt, None, 4, 8)
    train(model2, opt2, None, 4, 8)
    assert_same_run(model, model2, ref_opt, opt2)


def test_compiled_model_builds_the_same_split_with_canonical_names():
    plain = net()
    compiled = torch.compile(net())              # wraps lazily: nothing is compiled here
    assert next(n for n, _ in compiled.named_parameters()).startswith("_orig_mod.")
    opt_c, opt_p = hybrid(compiled), hybrid(plain)
    assert isinstance(opt_c, paramwise.Hybrid)
    assert names(opt_c) == names(opt_p) and options(opt_c) == options(opt_p)
    assert [n for g in opt_c.part("muon").param_groups for n in g["param_names"]] == HIDDEN
    # the report and explain speak the canonical names too
    assert "_orig_mod" not in str(paramwise.report(opt_c))
    assert "Muon" in paramwise.explain(opt_c, "blocks.0.fc1.weight")
    # a checkpoint of the compiled run is keyed like the plain model, and loads into it
    train(compiled._orig_mod, opt_c, None, 0, 3)          # the same parameters, run eagerly
    sd = copy.deepcopy(paramwise.state_dict(opt_c))   # loading shares tensors, as torch's does
    assert sorted(sd["state"]) == sorted(n for n, _ in plain.named_parameters())
    plain.load_state_dict(compiled._orig_mod.state_dict())
    report = paramwise.load_state_dict(opt_p, sd)
    assert report.exact and not report.renamed, str(report)
    train(compiled._orig_mod, opt_c, None, 3, 5)
    train(plain, opt_p, None, 3, 5)
    assert_same_run(compiled._orig_mod, plain, opt_c, opt_p)


def adamw_alone(model: nn.Module):
    return paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("before, after", [(adamw_alone, hybrid), (hybrid, adamw_alone)],
                         ids=["adamw_to_hybrid", "hybrid_to_adamw"])
def test_a_changed_split_keeps_the_moments_that_still_fit(before, after):
    """The hidden matrices change optimizer (AdamW <-> Muon): they start fresh in the new one;
    everything that stays with AdamW keeps its moments."""
    model = net()
    opt = before(model)
    train(model, opt, None, 0, 3)
    sd = copy.deepcopy(paramwise.state_dict(opt))
    model2 = net(seed=3)
    model2.load_state_dict(model.state_dict())
    opt2 = after(model2)
    report = paramwise.load_state_dict(opt2, sd)
    moved = {n for n, p in model2.named_parameters() if n in HIDDEN}
    assert set(report.moved) == moved and "moved to another optimizer" in str(report)
    for n, p in model2.named_parameters():
        if n in moved:
            assert p not in opt2.state or not opt2.state[p], (n, list(opt2.state[p]))
    # reference: the state of what stayed with AdamW moved over by hand; the rest fresh
    ref_opt = after(model)
    for n, p in model.named_parameters():
        if n not in moved:
            ref_opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
    train(model, ref_opt, None, 3, 6)
    train(model2, opt2, None, 3, 6)
    assert_same_run(model, model2, ref_opt, opt2)
