"""Real 2-process jobs on CPU (gloo, 127.0.0.1): DDP, FSDP2, FSDP1 refusal, name-keyed checkpoints,
and the Muon + AdamW Hybrid under DDP and FSDP2 (``hybrid_*``).

One job runs every check: the module-scoped fixture starts this file as a script twice (ranks 0
and 1), each rank runs the checks below in order and writes its results as JSON; each test
asserts one check on both ranks. References are single-process runs over the same global
batch, computed inside each worker (no communication), in float64. Every regularization mode
runs under DDP (ranks must stay bit-identical) and FSDP2 (uneven and empty shards; group norms
along the shard dim and across it). ``PARAMWISE_DIST_ONLY=check1,check2`` runs a subset;
a failing rank prints its traceback to its log. Deselect all with ``-m "not distributed"``.

The optimizer is built *after* ``fully_shard``: FSDP2 replaces the parameters with DTensor
parameters, and an optimizer built before would hold the old, orphaned tensors.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

WORLD = 2
STEPS = 3
CHECKS: dict[str, Callable[[], None]] = {}
# Checks that fail because of a known problem outside this file; strict: a fix turns them red.
KNOWN_FAILURES: dict[str, str] = {}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------------------ the model
class Tiny(nn.Module):
    """Uneven shards over 2 ranks: 7 embedding rows (4/3), 5-row Linears (3/2); ``out`` has one
    row, so rank 1's shards of its weight and bias are empty."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc1 = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 5)
        self.out = nn.Linear(5, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx).mean(1)
        x = self.norm(torch.tanh(self.fc1(x)))
        return self.out(torch.tanh(self.fc2(x)))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().double()


def global_batches(steps: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 7, (8, 3), generator=g), torch.randn(8, 1, generator=g,
                                                                   dtype=torch.float64))
            for _ in range(steps)]


def local(batch, rank: int):
    x, y = batch
    n = x.shape[0] // WORLD
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def train(model, opt, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for m in (model.fc1, model.fc2, model.out):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def same_groups(got: list[dict], want: list[dict]) -> None:
    assert [g["param_names"] for g in got] == [g["param_names"] for g in want], \
        ([g["param_names"] for g in got], [g["param_names"] for g in want])
    for a, b in zip(got, want):
        oa = {k: v for k, v in a.items() if k != "params"}
        ob = {k: v for k, v in b.items() if k != "params"}
        assert oa == ob, (oa, ob)


def rules():
    import paramwise

    return [paramwise.no_decay(), paramwise.layer_decay(0.5, depth=lambda n: {
        "emb": 0, "fc1": 1, "norm": 1, "fc2": 2, "out": 3}[n.split(".")[0]]),
        paramwise.Rule("weight", lr_mult=0.5), paramwise.Rule("ndim<2", momentum=0.8)]


def groups_of(model):
    import paramwise

    return paramwise.param_groups(model, rules(), lr=0.1, weight_decay=0.01, momentum=0.9)


# ------------------------------------------------------------------------------ checks: DDP
@check
def ddp_groups_and_checkpoint_names() -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    import paramwise
    from paramwise.state.checkpoint import state_dict

    ddp = DDP(tiny())
    assert next(n for n, _ in ddp.named_parameters()) == "module.emb.weight"
    same_groups(groups_of(ddp), groups_of(tiny()))
    opt = paramwise.optimizer(ddp, "adamw", [paramwise.no_decay()], lr=1e-2, weight_decay=0.1)
    train(ddp, opt, [local(b, rank()) for b in global_batches(1)])
    ours, theirs = state_dict(opt), get_optimizer_state_dict(ddp, opt)
    assert list(ours["state"]) == list(theirs["state"])
    assert sorted(ours["state"]) == sorted(n for n, _ in tiny().named_parameters())
    for n in ours["state"]:
        assert ours["state"][n]["exp_avg"] is theirs["state"][n]["exp_avg"], n


# ------------------------------------------------------------------------------ checks: FSDP1
def _fsdp1(use_orig_params: bool) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP(tiny(), use_orig_params=use_orig_params, device_id=torch.device("cpu"))


@check
def fsdp1_flat_param_is_refused() -> None:
    import paramwise

    flat = _fsdp1(use_orig_params=False)
    assert [n for n, _ in flat.named_parameters()] == ["_fsdp_wrapped_module._flat_param"]
    for build in (lambda: paramwise.param_groups(flat),
                  lambda: paramwise.optimizer(flat, "sgd", lr=0.1)):
        try:
            build()
        except paramwise.ParamwiseError as e:
            assert "FlatParameter" in str(e) and "use_orig_params=True" in str(e), str(e)
            assert "fully_shard" in str(e), str(e)
        else:
            raise AssertionError("an FSDP1 flat parameter was accepted")


@check
def fsdp1_orig_params_names_are_canonical() -> None:
    import paramwise

    wrapped = _fsdp1(use_orig_params=True)
    assert next(n for n, _ in wrapped.named_parameters()).startswith("_fsdp_wrapped_module.")
    got = [g["param_names"] for g in paramwise.param_groups(wrapped, lr=0.1)]
    assert sorted(n for names in got for n in names) == sorted(n for n, _ in tiny().named_parameters())


@check
def fsdp1_orig_params_roles_use_global_shapes() -> None:
    import paramwise

    wrapped = _fsdp1(use_orig_params=True)   # parameters are flat 1-D views of local shards
    same_groups(groups_of(wrapped), groups_of(tiny()))
    rep = paramwise.report(wrapped, rules(), lr=0.1, weight_decay=0.01, momentum=0.9).to_dict()
    assert rep["total"]["elements"] == sum(p.numel() for p in tiny().parameters())


# ------------------------------------------------------------------------------ checks: FSDP2
@check
def fsdp2_groups_roles_and_report_use_global_shapes() -> None:
    import paramwise

    model = shard(tiny())
    local_rows = {n: p.to_local().shape[0] for n, p in model.named_parameters()}
    assert local_rows["fc1.weight"] == (3, 2)[rank()] and local_rows["emb.weight"] == (4, 3)[rank()]
    assert local_rows["out.weight"] == (1, 0)[rank()]                       # an empty shard
    same_groups(groups_of(model), groups_of(tiny()))
    rep = paramwise.report(model, rules(), lr=0.1, weight_decay=0.01, momentum=0.9).to_dict()
    ref = paramwise.report(tiny(), rules(), lr=0.1, weight_decay=0.01, momentum=0.9).to_dict()
    assert rep["groups"] == ref["groups"] and rep["total"] == ref["total"]
    text = paramwise.explain(model, "out.weight", rules=rules(), lr=0.1, weight_decay=0.01,
                             momentum=0.9)
    assert "(1, 5)" in text, text


def _checkpoint_rules():
    import paramwise

    a = [paramwise.no_decay(), paramwise.Rule("fc2.*", lr_mult=0.5)]
    b = [paramwise.Rule("bias | norm", weight_decay=0.0), paramwise.Rule("embedding | out.*", lr=3e-3),
         paramwise.Rule("fc1.weight", weight_decay=0.2)]
    return a, b


def _adamw(model, rules):
    import paramwise

    return paramwise.optimizer(model, "adamw", rules, lr=1e-2, weight_decay=0.1)


def _by_name(model, opt) -> dict[str, dict]:
    return {n: opt.state[p] for n, p in model.named_parameters() if p in opt.state}


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for k in a:
        x, y = a[k], b[k]
        x = x.to_local() if hasattr(x, "to_local") else x
        y = y.to_local() if hasattr(y, "to_local") else y
        assert torch.equal(x, y), k


@check
def fsdp2_dcp_save_change_rules_load_continue() -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from paramwise.state.checkpoint import state_dict
    from paramwise.state.dcp import load_dcp

    rules_a, rules_b = _checkpoint_rules()
    path = str(OUT / "ckpt")
    model = shard(tiny())
    opt = _adamw(model, rules_a)
    data = global_batches(2 * STEPS)
    train(model, opt, [local(b, rank()) for b in data[:STEPS]])
    dcp.save({"model": get_model_state_dict(model), "optim": state_dict(opt)}, checkpoint_id=path)

    model2 = shard(tiny(seed=5))
    opt2 = _adamw(model2, rules_b)
    msd = get_model_state_dict(model2)
    dcp.load({"model": msd}, checkpoint_id=path)
    set_model_state_dict(model2, msd)
    report = load_dcp(opt2, path)
    assert report.exact and not report.renamed, str(report)
    assert report.changed["fc1.weight"] == {"weight_decay": (0.1, 0.2)}, report.changed
    want = _by_name(model, opt)
    got = _by_name(model2, opt2)
    assert got.keys() == want.keys()
    for n in want:
        _assert_state_equal(got[n], want[n])
    table = {n: (g["lr"], g["weight_decay"]) for g in opt2.param_groups for n in g["param_names"]}
    assert table == {"emb.weight": (3e-3, 0.1), "fc1.weight": (1e-2, 0.2), "fc2.weight": (1e-2, 0.1),
                     "out.weight": (3e-3, 0.1), "fc1.bias": (1e-2, 0.0), "norm.weight": (1e-2, 0.0),
                     "norm.bias": (1e-2, 0.0), "fc2.bias": (1e-2, 0.0), "out.bias": (3e-3, 0.0)}, table

    # Reference: the original run, its state moved by hand into an optimizer with rules B.
    ref_opt = _adamw(model, rules_b)
    for p in model.parameters():
        ref_opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
    more = [local(b, rank()) for b in data[STEPS:]]
    train(model2, opt2, more)
    train(model, ref_opt, more)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(full(p), full(q)), n

    # keep_saved_options restores rules A's options, name by name.
    model3 = shard(tiny(seed=6))
    opt3 = _adamw(model3, rules_b)
    load_dcp(opt3, path, keep_saved_options=True)
    opts = {n: (g["lr"], g["weight_decay"]) for g in opt3.param_groups for n in g["param_names"]}
    assert opts == {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups
                    for n in g["param_names"]}


@check
def fsdp2_dcp_cycle_with_regularizers() -> None:
    """l1 moves to another layer, l2_to_init stays: moments and the *original* anchors follow
    the names through a sharded checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    import paramwise
    from paramwise.state.checkpoint import state_dict
    from paramwise.state.dcp import load_dcp
    from paramwise.step.hooks import handle_of

    R = paramwise.Rule
    rules_a = [paramwise.no_decay(), R("fc1.weight | fc2.weight", l1=1e-2),
               R("out.weight | emb.weight", l2_to_init=0.5)]
    rules_b = [paramwise.no_decay(), R("fc2.weight", l1=2e-2),
               R("out.weight | emb.weight", l2_to_init=0.5)]
    path = str(OUT / "ckpt_reg")
    model = shard(tiny())
    opt = _adamw(model, rules_a)
    data = global_batches(2 * STEPS, seed=9)
    train(model, opt, [local(b, rank()) for b in data[:STEPS]])
    dcp.save({"model": get_model_state_dict(model), "optim": state_dict(opt)}, checkpoint_id=path)

    model2 = shard(tiny(seed=5))
    opt2 = _adamw(model2, rules_b)        # no anchors yet: seed 5's weights are not the ones
    assert handle_of(opt2).anchors == {}  # it will train from
    msd = get_model_state_dict(model2)
    dcp.load({"model": msd}, checkpoint_id=path)
    set_model_state_dict(model2, msd)
    report = load_dcp(opt2, path)
    assert report.exact, str(report)
    anchors = dict(zip([n for n, _ in model.named_parameters()], model2.parameters()))
    for n in ("out.weight", "emb.weight"):
        want = handle_of(opt).anchors[dict(model.named_parameters())[n]]
        _assert_state_equal({"a": handle_of(opt2).anchors[anchors[n]]}, {"a": want})

    ref_opt = _adamw(model, rules_b)
    for p in model.parameters():
        ref_opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
    for p, a in handle_of(opt).anchors.items():
        handle_of(ref_opt).anchors[p] = a.clone()
    more = [local(b, rank()) for b in data[STEPS:]]
    train(model2, opt2, more)
    train(model, ref_opt, more)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(full(p), full(q)), n


@check
def fsdp2_fqn_state_dicts_interoperate() -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from paramwise.state.checkpoint import load_state_dict, state_dict

    rules_a, rules_b = _checkpoint_rules()
    model = shard(tiny())
    opt = _adamw(model, rules_a)
    train(model, opt, [local(b, rank()) for b in global_batches()])
    ours = state_dict(opt)
    theirs = get_optimizer_state_dict(model, opt)
    assert ours["state"].keys() == theirs["state"].keys()
    # A full (unsharded) FQN-keyed dict, as rank 0 would torch.save it, loads by name into
    # sharded parameters under other rules: each rank keeps its own slice.
    full_sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    assert not hasattr(full_sd["state"]["fc1.weight"]["exp_avg"], "to_local")
    model2 = shard(tiny(seed=3))
    opt2 = _adamw(model2, rules_b)
    load_state_dict(opt2, full_sd)
    for n, st in _by_name(model, opt).items():
        _assert_state_equal(_by_name(model2, opt2)[n], st)
    # paramwise's dict goes into torch's set_optimizer_state_dict (same rules).
    model3 = shard(tiny(seed=4))
    opt3 = _adamw(model3, rules_a)
    set_optimizer_state_dict(model3, opt3, state_dict(opt))
    for n, st in _by_name(model, opt).items():
        _assert_state_equal(_by_name(model3, opt3)[n], st)


# ------------------------------------------------------------------------------ checks: regularization
def _modes() -> dict[str, tuple[str, dict, list]]:
    """name -> (optimizer, its options, rules). Strengths are set so that every prox and
    projection really acts within STEPS steps (zeros, zero rows, clipped rows)."""
    import paramwise

    R = paramwise.Rule
    sgd, sgdm, adam = dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=3e-2)
    return {
        "l2_lowered_sgd": ("sgd", sgdm, [R("weight", l2=0.05)]),
        "l2_hook_adamw": ("adamw", dict(lr=1e-2, weight_decay=0.0), [R("weight", l2=0.05)]),
        "l1_prox_adam": ("adam", adam, [R("weight | embedding", l1=0.02)]),
        "l1_prox_lr_adam": ("adam", adam, [R("weight", l1=0.02, prox_scale="lr")]),
        "l1_prox_sgd_momentum": ("sgd", sgdm, [R("weight", l1=0.02)]),
        "l1_subgradient": ("sgd", sgd, [R("weight", l1=0.02, prox=False)]),
        "elastic_net": ("sgd", sgd, [R("weight", l1=0.02, l2=0.05)]),
        "decoupled_decay_sgd": ("sgd", sgdm, [R("weight", decoupled_decay=0.1)]),
        "l2_to_init": ("sgd", sgd, [R("weight", l2_to_init=0.5)]),
        # group dim 0 is FSDP2's shard dim: every row lies on one rank (5 rows: 3/2, 7: 4/3)
        "group_lasso_rows_sgd": ("sgd", sgd, [R("weight | embedding", group_lasso=1.0)]),
        "group_lasso_rows_adam": ("adam", adam, [R("weight | embedding", group_lasso=0.1)]),
        # group dim 1: every column is split across the ranks; its norm needs both halves
        "group_lasso_cols_sgd": ("sgd", sgd, [R("weight", group_lasso=1.0, group_dim=1)]),
        "group_lasso_cols_adam": ("adam", adam, [R("weight", group_lasso=0.5, group_dim=1)]),
        "group_lasso_cols_subgradient": ("sgd", sgd, [R("weight", group_lasso=1.0, group_dim=1,
                                                        prox=False)]),
        "max_norm_rows": ("sgd", dict(lr=0.5), [R("weight | embedding", max_norm=0.3)]),
        "max_norm_cols": ("sgd", dict(lr=0.5), [R("weight", max_norm=0.3, max_norm_dim=1)]),
    }


MODE_NAMES = list(_modes())


def _reference(mode: str):
    """Single process, global batch; and the same run without the rules (must differ)."""
    import paramwise

    optim, kw, rules = _modes()[mode]
    model = tiny()
    opt = paramwise.optimizer(model, optim, rules, **kw)
    train(model, opt, global_batches())
    plain = tiny()
    train(plain, paramwise.optimizer(plain, optim, **kw), global_batches())
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), plain.parameters())), \
        "the rules changed nothing: the reference would prove nothing"
    return model, opt


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")


def _same_stats(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), (got.keys(), want.keys())
    for i in want:
        assert got[i].keys() == want[i].keys(), (i, got[i].keys(), want[i].keys())
        for k, v in want[i].items():
            if isinstance(v, int):
                assert got[i][k] == v, (i, k, got[i][k], v)
            else:
                assert abs(got[i][k] - v) <= 1e-9 * max(1.0, abs(v)), (i, k, got[i][k], v)


def _ddp_mode(mode: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import paramwise
    from paramwise.step.monitor import penalty, stats

    ref, ref_opt = _reference(mode)
    optim, kw, rules = _modes()[mode]
    model = DDP(tiny())
    opt = paramwise.optimizer(model, optim, rules, **kw)
    train(model, opt, [local(b, rank()) for b in global_batches()])
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks diverged"
    for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
        _close(p, q, n)
    _close(penalty(opt), penalty(ref_opt), "penalty")
    _same_stats(stats(opt), stats(ref_opt))


def _fsdp2_mode(mode: str) -> None:
    import paramwise
    from paramwise.step.monitor import penalty, stats

    ref, ref_opt = _reference(mode)
    optim, kw, rules = _modes()[mode]
    model = shard(tiny())
    opt = paramwise.optimizer(model, optim, rules, **kw)
    train(model, opt, [local(b, rank()) for b in global_batches()])
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        _close(full(p), q, n)
    pen = penalty(opt)
    assert not hasattr(pen, "to_local"), "penalty() must be a plain (global) tensor"
    _close(pen, penalty(ref_opt), "penalty")
    _same_stats(stats(opt), stats(ref_opt))


@check
def fsdp2_stats_reads_only_local_shards() -> None:
    """stats() under FSDP2 gathers no parameter (no ``full_tensor``/``redistribute``, no
    all_gather): each rank sums its shard and one all_reduce makes the numbers global, equal to
    the single-process ones. Rows along the shard dim, rows split across ranks, an empty shard,
    DTensor anchors and exact-zero rows are all in play."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.debug import CommDebugMode

    import paramwise
    from paramwise.step.monitor import stats

    R = paramwise.Rule
    rules = [R("fc1.weight", group_lasso=2.0, max_norm=0.3, max_norm_dim=1, l2=0.01),
             R("fc2.weight", group_lasso=1.0, group_dim=1, l1=1e-2),
             R("emb.weight | out.weight", l2_to_init=0.5, max_norm=0.4)]
    ref = tiny()
    ref_opt = paramwise.optimizer(ref, "sgd", rules, lr=0.1)
    train(ref, ref_opt, global_batches(2))
    model = shard(tiny())
    opt = paramwise.optimizer(model, "sgd", rules, lr=0.1)
    train(model, opt, [local(b, rank()) for b in global_batches(2)])
    with torch.no_grad():
        ref.fc1.weight[1] = 0.0            # a zero row of fc1 (group dim 0 = the shard dim)
        ref.fc2.weight[:, 2] = 0.0         # a zero column of fc2 (group dim 1: split by the shards)
        for name in ("fc1.weight", "fc2.weight"):
            p, q = model.get_parameter(name), ref.get_parameter(name)
            p.copy_(_sharded_like(p, q))

    calls: list[str] = []
    spied = {"full_tensor": DTensor.full_tensor, "redistribute": DTensor.redistribute}

    def spy(name):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return spied[name](*args, **kwargs)
        return wrapper

    try:
        for name in spied:
            setattr(DTensor, name, spy(name))
        with CommDebugMode() as comm:
            got = stats(opt)
    finally:
        for name, fn in spied.items():
            setattr(DTensor, name, fn)
    assert calls == [], calls
    counts = {str(k): v for k, v in comm.get_comm_counts().items()}
    assert comm.get_total_counts() == 1 and "allreduce" in next(iter(counts)), counts
    want = stats(ref_opt)
    _same_stats(got, want)
    index = {n: i for i, g in enumerate(opt.param_groups) for n in g["param_names"]}
    assert want[index["fc1.weight"]]["zero_rows"] >= 1, want
    assert want[index["fc2.weight"]]["zero_rows"] >= 1, want


def _sharded_like(p: torch.Tensor, full_value: torch.Tensor) -> torch.Tensor:
    """``full_value`` cut to DTensor ``p``'s placements (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full_value.detach(), p.device_mesh, p.placements, src_data_rank=None)


for _m in MODE_NAMES:
    CHECKS[f"ddp_{_m}"] = lambda _m=_m: _ddp_mode(_m)
for _m in MODE_NAMES:
    CHECKS[f"fsdp2_{_m}"] = lambda _m=_m: _fsdp2_mode(_m)


# ------------------------------------------------------------------------------ checks: Muon + AdamW
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.norm(self.fc1(x))))


class Blocks(nn.Module):
    """A block list (what ``hidden_matrices`` looks for): 5x4 and 4x5 hidden matrices (FSDP2
    shards 3/2 and 2/2 rows), an embedding and a 3-row head (shards 2/1). Three outputs, not
    one: with one, the last block's gradients would be rank 1, and Muon would orthogonalize
    bfloat16 rounding noise into full-size directions that no two summation orders share."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.out = nn.Linear(4, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx).mean(1)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


HIDDEN = [f"blocks.{i}.{fc}.weight" for i in range(2) for fc in ("fc1", "fc2")]  # chosen by hand
MUON_LR = 0.02


def blocks(seed: int = 0) -> Blocks:
    torch.manual_seed(seed)
    return Blocks().double()


def _hybrid(model: nn.Module):
    import paramwise

    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay(),
                                               paramwise.hidden_matrices(momentum=0.9)],
                              lr=MUON_LR, weight_decay=0.1)
    assert isinstance(opt, paramwise.Hybrid)
    assert [type(o) for o in opt.optimizers] == [torch.optim.AdamW, torch.optim.Muon]
    muon = [n for g in opt.part("muon").param_groups for n in g["param_names"]]
    assert muon == HIDDEN, muon
    return opt


def blocks_batches(steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    return [(torch.randint(0, 7, (8, 3), generator=g), torch.randn(8, 3, generator=g,
                                                                   dtype=torch.float64))
            for _ in range(steps)]


def _hybrid_reference(steps: int = STEPS):
    """One process, the global batches; and the split's effect (must differ from AdamW alone)."""
    import paramwise

    ref = blocks()
    train(ref, _hybrid(ref), blocks_batches(steps))
    plain = blocks()
    train(plain, paramwise.optimizer(plain, "adamw", [paramwise.no_decay()], lr=MUON_LR,
                                     weight_decay=0.1), blocks_batches(steps))
    moved = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), plain.parameters()))
    assert moved > 1e-3, "Muon changed nothing: the reference would prove nothing"
    return ref


def _ranks_identical(model: nn.Module) -> None:
    import torch.distributed as dist

    flat = torch.cat([full(p).detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks diverged"


@check
def hybrid_ddp_equals_one_process() -> None:
    """DDP all-reduces the gradients, so each rank's Muon orthogonalizes the full matrix."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref = _hybrid_reference()
    model = DDP(blocks())
    opt = _hybrid(model)                   # names under DDP: module.blocks.0.fc1.weight -> canonical
    train(model, opt, [local(b, rank()) for b in blocks_batches()])
    _ranks_identical(model)
    for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
        _close(p, q, n)


def shard_blocks(model: Blocks) -> Blocks:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for b in model.blocks:
        fully_shard(b, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _newton_schulz(g: torch.Tensor) -> torch.Tensor:
    """torch's Muon update direction for ``g`` (its own bfloat16 Newton-Schulz, 5 steps)."""
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(g, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS).double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@check
def hybrid_fsdp2_equals_one_process_to_bfloat16_rounding() -> None:
    """torch 2.13's Muon takes FSDP2's DTensor shards: DTensor's sharding propagation gathers
    what each Newton-Schulz matmul needs (collectives inside ``step()``), so each matrix is
    orthogonalized whole, not per shard, and the ranks stay bit-identical. Those bfloat16
    matmuls sum in another order than one process's, and Newton-Schulz blows the rounding up
    along the gradient's small singular directions (it maps every nonzero singular value
    towards 1), so Muon's part equals one process only to that amplified rounding, not to 1e-9
    as the other FSDP2 checks: one step's update within 15% (relative Frobenius; measured
    0-10%), while orthogonalizing each rank's rows on their own is 50% off or more (measured
    80-93%). AdamW's part is equal after one step, and within 1% after three."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.debug import CommDebugMode

    # One step: the update Muon applied, against one process's and against shard-local NS.
    ref, model = blocks(), shard_blocks(blocks())
    ref_opt, opt = _hybrid(ref), _hybrid(model)
    assert all(isinstance(p, DTensor) for g in opt.part("muon").param_groups for p in g["params"])
    batch = blocks_batches(1)
    train(ref, ref_opt, batch)
    start = dict(blocks().named_parameters())
    with CommDebugMode() as comm:
        opt.zero_grad()
        nn.functional.mse_loss(model(local(batch[0], rank())[0]), local(batch[0], rank())[1]
                               ).backward()
        before = comm.get_total_counts()          # FSDP2's own all-gathers / reduce-scatters
        opt.part("muon").step()
    assert comm.get_total_counts() > before       # Muon itself communicated
    opt.part("adamw").step()
    _ranks_identical(model)
    lr = MUON_LR * 0.2 * 5 ** 0.5                 # match_rms_adamw on 5x4 and 4x5
    for n, p in model.named_parameters():
        got, want = full(p.detach()), ref.get_parameter(n).detach()
        if n not in HIDDEN:                       # AdamW: equal, as in every FSDP2 check
            _close(got, want, n)
            continue
        decayed = start[n].detach() * (1 - MUON_LR * 0.1)
        update_got, update_want = (decayed - got) / lr, (decayed - want) / lr
        assert _rel(update_got, update_want) < 0.15, (n, _rel(update_got, update_want))
        # step 1 with nesterov: the update is grad.lerp(buf, 0.9) = 1.9 * buf
        g = ref_opt.part("muon").state[ref.get_parameter(n)]["momentum_buffer"] * 1.9
        assert _rel(_newton_schulz(g), update_want) < 1e-12, n  # the reference is understood
        per_shard = torch.cat([_newton_schulz(s) for s in g.tensor_split(WORLD, 0)])
        assert _rel(per_shard, update_want) > 0.5, (n, _rel(per_shard, update_want))

    # STEPS steps: each parameter's distance to one process's, relative to how far it moved:
    # Muon's matrices within 30% (measured 2-17%), AdamW's parameters within 1% (<= 0.09%).
    ref = _hybrid_reference()
    model = shard_blocks(blocks())
    train(model, _hybrid(model), [local(b, rank()) for b in blocks_batches()])
    _ranks_identical(model)
    for n, p in model.named_parameters():
        moved = (ref.get_parameter(n) - start[n]).detach()
        assert moved.norm() > 0, n
        off = (full(p.detach()) - ref.get_parameter(n).detach()).norm() / moved.norm()
        bound = 0.3 if n in HIDDEN else 0.01
        assert off < bound, (n, off.item(), bound)


@check
def hybrid_fsdp2_dcp_resumes_bit_identically() -> None:
    """Muon's momentum buffers (DTensors) and AdamW's moments through DCP by name: a run saved
    after STEPS steps and resumed in freshly built sharded model and Hybrid equals the run
    that never stopped, bit for bit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    import paramwise

    path = str(OUT / "ckpt_hybrid")
    data = [local(b, rank()) for b in blocks_batches(2 * STEPS)]
    model = shard_blocks(blocks())
    opt = _hybrid(model)
    train(model, opt, data[:STEPS])
    sd = paramwise.state_dict(opt)
    assert set(sd["state"]["blocks.0.fc1.weight"]) == {"momentum_buffer"}
    dcp.save({"model": get_model_state_dict(model), "optim": sd}, checkpoint_id=path)

    model2 = shard_blocks(blocks(seed=5))
    opt2 = _hybrid(model2)
    msd = get_model_state_dict(model2)
    dcp.load({"model": msd}, checkpoint_id=path)
    set_model_state_dict(model2, msd)
    report = paramwise.load_dcp(opt2, path)
    assert report.exact and not report.changed, str(report)
    train(model, opt, data[STEPS:])
    train(model2, opt2, data[STEPS:])
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(full(p), full(q)), n


# ------------------------------------------------------------------------------ worker side
OUT = Path(".")


def main(rank_: int, port: int, out: Path) -> None:
    global OUT
    import torch.distributed as dist

    OUT = out
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    results: dict[str, dict] = {}
    only = os.environ.get("PARAMWISE_DIST_ONLY")
    for name, fn in CHECKS.items():
        if only and name not in only.split(","):
            continue
        t = time.perf_counter()
        try:
            fn()
            results[name] = {"ok": True}
        except BaseException:  # noqa: BLE001 - reported to the parent, which asserts
            results[name] = {"ok": False, "error": traceback.format_exc()}
            print(f"rank {rank_}: {name} failed:\n{results[name]['error']}", file=sys.stderr)
        results[name]["seconds"] = round(time.perf_counter() - t, 3)
        try:
            dist.barrier()
        except RuntimeError:  # the ranks fell out of step (one failed inside a collective)
            results[name] = {"ok": False, "error": traceback.format_exc(),
                             "before": results[name]}
            break
    (out / f"rank{rank_}.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))


# ------------------------------------------------------------------------------ pytest side
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(script: str, out: Path, timeout: float = 170.0) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port = free_port()
    logs = [open(out / f"rank{r}.log", "w") for r in range(WORLD)]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, script, str(r), str(port), str(out)], env=env,
                              stdout=logs[r], stderr=subprocess.STDOUT) for r in range(WORLD)]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    results = []
    for r in range(WORLD):
        f = out / f"rank{r}.json"
        if not f.exists():
            log = (out / f"rank{r}.log").read_text()[-4000:]
            pytest.fail(f"rank {r} wrote no results (exit {procs[r].returncode}):\n{log}")
        results.append(json.loads(f.read_text()))
    return results


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> list[dict]:
    return run_job(__file__, tmp_path_factory.mktemp("dist"))


@pytest.mark.distributed
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[n]))
    if n in KNOWN_FAILURES else n for n in CHECKS])
def test_distributed(job: list[dict], name: str) -> None:
    for r, results in enumerate(job):
        res = results.get(name)
        assert res is not None, f"rank {r} did not run {name}"
        assert res["ok"], f"rank {r}:\n{res['error']}"


@pytest.mark.distributed
def test_torchrun_fsdp_example(tmp_path: Path) -> None:
    """examples/torchrun_fsdp.py under torchrun, 2 processes, a few steps, and a checkpoint."""
    script = Path(__file__).resolve().parents[1] / "examples" / "torchrun_fsdp.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
           "--steps", "3", "--save", str(tmp_path / "ckpt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert re.search(r"^group\s+tensors\s+elements", out, re.M), out        # the table, once
    assert "blocks.0.mlp.0.weight" in out, out
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1", "2", "3"], out  # printed once: rank 0
    zeros = [float(line.rsplit(" ", 1)[-1].rstrip("%")) for line in steps]
    assert zeros[-1] > 0, out                            # the proximal L1 made exact zeros
    assert (tmp_path / "ckpt" / ".metadata").exists()
