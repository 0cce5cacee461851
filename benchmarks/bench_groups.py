"""Time to build param groups: models of 1k, 10k and 100k parameter tensors with 20 rules, and a
Llama-shaped model of 100, 1,000 and 3,000 layers under the presets.

Models live on the meta device (no memory). Run: ``make bench`` or
``.venv/bin/python benchmarks/bench_groups.py [--repeat 3] [--layers 100 1000 3000]``.
Targets (2-core machine): 100k tensors <= 1 s, growing linearly (the per-10k-tensor column stays
flat); ``no_decay() + layer_decay()`` <= 10 us per tensor, and its per-tensor time at 1,000
layers within 1.5x of that at 100 (the build is linear in tensors, independent of depth).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import paramwise
from paramwise import Rule


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)


class Model(nn.Module):
    def __init__(self, tensors: int, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range((tensors - 3) // 4)])
        self.head = nn.Linear(d, 2)


RULES = [
    Rule("bias | norm | embedding", weight_decay=0.0),
    Rule("module:head", lr_mult=10.0),
    Rule("blocks.1*.fc.weight", momentum=0.8),
    Rule("type:Linear & weight", weight_decay=1e-4),
    Rule("ndim<2 & !bias", lr_mult=0.5),
    Rule(r"re:blocks\.2\d*\.norm\..*", lr=0.02),
    Rule("blocks.[0-4]*", dampening=0.1),
    Rule("type:LayerNorm", weight_decay_mult=0.0),
    Rule("embedding", lr_mult=0.1),
    Rule("*.fc.bias", weight_decay=0.0),
    Rule("module:blocks.3", momentum=0.95),
    Rule("weight & !module:head", nesterov=False),
    Rule("head.*", dampening=0.0),
    Rule("blocks.9*", lr_mult=0.9),
    Rule("ndim>=2", weight_decay_mult=1.0),
    Rule("norm & bias", lr_mult=1.0),
    Rule("type:torch.nn.Embedding", dampening=0.0),
    Rule("blocks.5*.norm.weight", momentum=0.85),
    Rule("!embedding", maximize=False),
    Rule("all", lr_mult=1.0),
]


class LlamaBlock(nn.Module):
    """A Llama decoder layer's parameter layout: 7 bias-free projections, 2 RMSNorms."""

    def __init__(self, d: int) -> None:
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            setattr(self, name, nn.Linear(d, d, bias=False))
        self.input_layernorm = nn.RMSNorm(d)
        self.post_attention_layernorm = nn.RMSNorm(d)


class Llama(nn.Module):
    def __init__(self, layers: int, d: int = 8) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, d)
        self.layers = nn.ModuleList([LlamaBlock(d) for _ in range(layers)])
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, 10, bias=False)


def depth_sweep(layers: list[int], repeat: int) -> None:
    presets = {"no_decay()": [paramwise.no_decay()],
               "no_decay() + layer_decay(0.9)": [paramwise.no_decay(), paramwise.layer_decay(0.9)]}
    print(f"\n{'layers':>7} {'tensors':>8} " + " ".join(f"{k + ' (us/tensor)':>40}" for k in presets))
    first: dict[str, float] = {}
    for n_layers in layers:
        with torch.device("meta"):
            model = Llama(n_layers)
        count = sum(1 for _ in model.parameters())
        cells = []
        for key, rules in presets.items():
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                paramwise.param_groups(model, rules, lr=1.0, weight_decay=0.1)
                best = min(best, time.perf_counter() - t0)
            per = best / count * 1e6
            first.setdefault(key, per)
            cells.append(f"{per:>8.2f} ({per / first[key]:.2f}x the first row)")
        print(f"{n_layers:>7,} {count:>8,} " + " ".join(f"{c:>40}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    ap.add_argument("--layers", type=int, nargs="*", default=[100, 1_000, 3_000])
    args = ap.parse_args()
    assert len(RULES) == 20
    print(f"{'tensors':>9} {'groups':>6} {'build (s)':>10} {'per 10k (s)':>12}  (best of {args.repeat})")
    for n in args.sizes:
        with torch.device("meta"):
            model = Model(n)
        count = sum(1 for _ in model.parameters())
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            groups = paramwise.param_groups(model, RULES, optimizer="sgd", lr=0.1, momentum=0.9,
                                            weight_decay=5e-4)
            best = min(best, time.perf_counter() - t0)
        assert sum(len(g["params"]) for g in groups) == count
        print(f"{count:>9,} {len(groups):>6} {best:>10.3f} {best / count * 1e4:>12.4f}")
    if args.layers:
        depth_sweep(args.layers, args.repeat)


if __name__ == "__main__":
    main()
