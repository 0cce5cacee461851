"""Time ``paramwise.audit`` next to building the same model's param groups.

The model has about 9,000 parameter tensors (an embedding, blocks of LayerNorm + Linear, a head).
Three optimizers are audited: the tutorial ``SGD(model.parameters(), weight_decay=...)`` (one
group, thousands of decayed biases and norms to report), a clean paramwise AdamW with
``no_decay()`` (two groups, nothing to report) and an AdamW with one group per tensor (9,000
groups: the per-group cost). ``build`` is ``paramwise.param_groups(model, [no_decay()])``, which
walks the same module tree. Target: each audit costs no more than the build (ratio <= 1).

    .venv/bin/python benchmarks/bench_audit.py [--tensors 9000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable, Sequence

import torch
from bench_groups import Model  # the same model of blocks as the build benchmark

import paramwise


def _cpu_ms(fn: Callable[[], object]) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) * 1e3


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=9000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Model(args.tensors)
    n = sum(1 for _ in model.parameters())
    rules = [paramwise.no_decay()]
    optimizers = {
        "tutorial SGD, 1 group": torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-5),
        "paramwise AdamW, no_decay": paramwise.optimizer(model, "adamw", rules, lr=1e-3,
                                                         weight_decay=0.05),
        "AdamW, 1 group per tensor": torch.optim.AdamW([{"params": [p]}
                                                        for p in model.parameters()]),
    }
    # Interleaved rounds, CPU time, best of each column: on a shared machine the least
    # disturbed run is the cost (the timeit convention).
    # The cyclic collector is off while timing (no collection lands inside one call).
    build = math.inf
    audit = dict.fromkeys(optimizers, math.inf)
    gc.collect()
    gc.disable()
    try:
        for _ in range(args.repeat):
            build = min(build, _cpu_ms(lambda: paramwise.param_groups(model, rules,
                                                                      weight_decay=0.05)))
            for label, opt in optimizers.items():
                audit[label] = min(audit[label],
                                   _cpu_ms(lambda opt=opt: paramwise.audit(model, opt)))
    finally:
        gc.enable()
    print(f"model: {n:,} parameter tensors; CPU ms, best of {args.repeat} interleaved rounds")
    print(f"{'optimizer':<28} {'groups':>7} {'findings':>9} {'audit ms':>9} {'build ms':>9} "
          f"{'audit/build':>12}")
    rows = []
    for label, opt in optimizers.items():
        found = len(paramwise.audit(model, opt).findings)
        rows.append({"optimizer": label, "groups": len(opt.param_groups), "findings": found,
                     "audit_ms": audit[label], "build_ms": build})
        print(f"{label:<28} {len(opt.param_groups):>7} {found:>9} {audit[label]:>9.1f} "
              f"{build:>9.1f} {audit[label] / build:>12.2f}")
    return rows


if __name__ == "__main__":
    main()
