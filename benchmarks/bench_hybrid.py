"""The Hybrid's cost: ``step()`` and ``zero_grad()`` of ``paramwise.optimizer(model, "adamw",
[no_decay(), hidden_matrices()])`` (Muon + AdamW as one optimizer) against the hand-built pair
(``torch.optim.Muon`` over the same hidden matrices with the same options, ``torch.optim.AdamW``
over the rest with the same groups) stepped one after the other.

A Llama-shaped stack of ``nn.Linear``/``nn.RMSNorm``/``nn.Embedding`` (no forward pass: fixed
random gradients), two copies with equal weights, one per side. Rounds interleave the sides
(ABBA order); each round times ``--inner`` calls per side. Reported: the median over rounds of
the per-round ratio paramwise / by hand (with the middle half of the per-round ratios, which
shows the noise), and the ratio of the best rounds. Both copies must then hold bit-identical
weights (the two sides did the same arithmetic). Last, ``step()`` with no gradients times the
dispatch alone (every part walks its groups, no math): the Hybrid's own cost in microseconds,
also given as a share of a real step. Target: the step ratio <= 1.02. One thread by default (a shared 2-core machine gives steadier numbers)::

    .venv/bin/python benchmarks/bench_hybrid.py              # ~6M parameters, 21 rounds
    .venv/bin/python benchmarks/bench_hybrid.py --quick      # smoke run, a tiny stack
    .venv/bin/python benchmarks/bench_hybrid.py --dim 256 --vocab 8192 --threads 2
    .venv/bin/python benchmarks/bench_hybrid.py --device cuda --dim 1024 --layers 12
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import paramwise

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Layer(nn.Module):
    """A Llama decoder layer's parameters: 7 bias-free projections, 2 RMSNorms."""

    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        for name in PROJ[:4]:
            setattr(self, name, nn.Linear(d, d, bias=False))
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)
        self.input_layernorm = nn.RMSNorm(d)
        self.post_attention_layernorm = nn.RMSNorm(d)


class Llama(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, ffn: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)


OPTIONS = dict(lr=3e-4, weight_decay=0.1)
MUON = dict(momentum=0.95, adjust_lr_fn="match_rms_adamw")


def by_hand(model: Llama) -> tuple[list[str], torch.optim.Muon, torch.optim.AdamW]:
    """The pair as a user writes it: Muon over the layers' projections, AdamW over the rest
    (no decay on norms and the embedding)."""
    named = dict(model.named_parameters())
    hidden = [f"layers.{i}.{p}.weight" for i in range(len(model.layers)) for p in PROJ]
    undecayed = [n for n in named if n not in hidden and ("norm" in n or "embed" in n)]
    decayed = [n for n in named if n not in hidden and n not in undecayed]
    muon = torch.optim.Muon([named[n] for n in hidden], **OPTIONS, **MUON)
    adamw = torch.optim.AdamW([{"params": [named[n] for n in decayed]},
                               {"params": [named[n] for n in undecayed], "weight_decay": 0.0}],
                              **OPTIONS)
    return hidden, muon, adamw


def with_paramwise(model: Llama) -> paramwise.Hybrid:
    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay(),
                                               paramwise.hidden_matrices(momentum=0.95)],
                              **OPTIONS)
    assert isinstance(opt, paramwise.Hybrid), type(opt)
    return opt


SYNC: Callable[[], None] = lambda: None  # noqa: E731 - torch.cuda.synchronize on a GPU


def timed(fn: Callable[[], None], inner: int, before: Callable[[], None] | None = None) -> float:
    """Seconds per call of ``fn`` over ``inner`` calls (``before`` runs untimed before each)."""
    total = 0.0
    for _ in range(inner):
        if before is not None:
            before()
        SYNC()
        t0 = time.perf_counter()
        fn()
        SYNC()
        total += time.perf_counter() - t0
    return total / inner


def interleaved(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Per side, one time per round; the order alternates (A B, B A, ...)."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            out[k].append(sides[k]())
    return out


def summary(what: str, t: dict[str, list[float]], unit: float, label: str) -> float:
    """One line: medians per side, the median per-round ratio (and the middle half of the
    per-round ratios: the noise), the ratio of the best rounds."""
    mine, ref = t["paramwise"], t["by hand"]
    ratios = sorted(a / b for a, b in zip(mine, ref))
    med = statistics.median(ratios)
    lo, hi = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    best = min(mine) / min(ref)
    print(f"{what:<29} paramwise {statistics.median(mine) / unit:9.3f} {label}   by hand "
          f"{statistics.median(ref) / unit:9.3f} {label}   ratio median {med:.3f} "
          f"[{lo:.3f}-{hi:.3f}]  best {best:.3f}")
    return med


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv``, run, print; returns the median ratios (``step``, ``dispatch``,
    ``zero_grad``, ``zero_grad_fill``). The thread count is restored on return."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    global SYNC
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--inner", type=int, default=2, help="steps per side per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--quick", action="store_true", help="a tiny stack, 2 rounds (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.dim, args.layers, args.vocab, args.rounds, args.inner = 32, 2, 128, 2, 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        SYNC = torch.cuda.synchronize
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)
        SYNC = lambda: None  # noqa: E731


def run(args: argparse.Namespace) -> dict[str, float]:
    """Build both sides, check they match, time them (see the module docstring)."""
    device = torch.device(args.device)

    torch.manual_seed(0)
    ffn = (8 * args.dim // 3 + 63) // 64 * 64
    mine = Llama(args.vocab, args.dim, args.layers, ffn).to(device)
    ref = copy.deepcopy(mine)
    opt = with_paramwise(mine)
    hidden, muon, adamw = by_hand(ref)
    # the same split on both sides (else the comparison would mean nothing)
    got = {n for g in opt.part("muon").param_groups for n in g["param_names"]}
    assert got == set(hidden), sorted(got ^ set(hidden))
    assert [len(o.param_groups) for o in opt.optimizers] == [2, 1]

    grads = {}
    for (n, p), q in zip(mine.named_parameters(), ref.parameters()):
        grads[n] = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(grads))
                               ).to(device)
        p.grad, q.grad = grads[n], grads[n].clone()
    scratch = [torch.zeros_like(p) for p in mine.parameters()]

    def pair_step() -> None:
        muon.step()
        adamw.step()

    def pair_zero(set_to_none: bool) -> Callable[[], None]:
        def zero() -> None:
            muon.zero_grad(set_to_none=set_to_none)
            adamw.zero_grad(set_to_none=set_to_none)
        return zero

    def regrad(model: nn.Module, tensors: list[torch.Tensor]) -> Callable[[], None]:
        def put() -> None:
            for p, g in zip(model.parameters(), tensors):
                p.grad = g
        return put

    mine_grads, ref_grads = [p.grad for p in mine.parameters()], [p.grad for p in ref.parameters()]
    for _ in range(2):                                  # warm-up: state allocated on both sides
        opt.step()
        pair_step()
    per_step = timed(opt.step, 1)
    n = sum(p.numel() for p in mine.parameters())
    m = sum(p.numel() for g in muon.param_groups for p in g["params"])
    print(f"Llama-shaped stack: d={args.dim}, ffn={ffn}, {args.layers} layers, vocab "
          f"{args.vocab}: {n / 1e6:.2f}M parameters, {m / 1e6:.2f}M in Muon "
          f"({len(hidden)} matrices); {device.type}, {torch.get_num_threads()} thread(s); "
          f"{args.rounds} rounds "
          f"x {args.inner} calls per side; one step ~{per_step * 1e3:.1f} ms")
    pair_step()                                          # both sides have taken 4 steps again

    steps = interleaved({"paramwise": lambda: timed(opt.step, args.inner),
                         "by hand": lambda: timed(pair_step, args.inner)}, args.rounds)
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), f"{name}: the two sides' weights differ"

    zero_inner = args.inner * 20
    zero_none = interleaved({
        "paramwise": lambda: timed(opt.zero_grad, zero_inner, regrad(mine, mine_grads)),
        "by hand": lambda: timed(pair_zero(True), zero_inner, regrad(ref, ref_grads))},
        args.rounds)
    regrad(mine, scratch)()
    regrad(ref, [torch.zeros_like(s) for s in scratch])()
    zero_fill = interleaved({
        "paramwise": lambda: timed(lambda: opt.zero_grad(set_to_none=False), zero_inner),
        "by hand": lambda: timed(pair_zero(False), zero_inner)}, args.rounds)

    # the dispatch alone: no gradients, so every part loops over its groups and does no math
    regrad(mine, [None] * len(scratch))()               # type: ignore[list-item]
    regrad(ref, [None] * len(scratch))()                # type: ignore[list-item]
    dispatch = interleaved({"paramwise": lambda: timed(opt.step, zero_inner),
                            "by hand": lambda: timed(pair_step, zero_inner)}, args.rounds)
    extra = statistics.median(dispatch["paramwise"]) - statistics.median(dispatch["by hand"])

    result = {
        "step": summary("step()", steps, 1e-3, "ms"),
        "dispatch": summary("step() without gradients", dispatch, 1e-6, "us"),
        "zero_grad": summary("zero_grad()", zero_none, 1e-6, "us"),
        "zero_grad_fill": summary("zero_grad(set_to_none=False)", zero_fill, 1e-6, "us"),
    }
    verdict = "met" if result["step"] <= 1.02 else "NOT met"
    print(f"target: step() ratio <= 1.02 -> {verdict} (median {result['step']:.3f}); weights "
          "bit-identical on both sides after every step")
    print(f"the Hybrid's own cost per step (dispatch, no gradients): {extra * 1e6:+.1f} us = "
          f"{100 * extra / statistics.median(steps['by hand']):+.3f}% of a real step")
    return result


if __name__ == "__main__":
    main()
