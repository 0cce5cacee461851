"""benchmarks/bench_hybrid.py still runs (a smoke test: tiny stack, two rounds). The figures are
not checked; what is: every measurement is reported, the two sides hold the same split, and
their weights stay bit-identical (the benchmark asserts both before it prints its verdict)."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_bench_hybrid_quick_times_step_and_zero_grad(capsys):
    path = ROOT / "benchmarks" / "bench_hybrid.py"
    spec = importlib.util.spec_from_file_location("bench_hybrid", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    ratios = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads
    assert set(ratios) == {"step", "dispatch", "zero_grad", "zero_grad_fill"}
    assert all(math.isfinite(r) and r > 0 for r in ratios.values()), ratios
    assert re.search(r"^Llama-shaped stack: .* 2 layers, .*\(14 matrices\)", out, re.M), out
    for what in (r"step\(\)", r"step\(\) without gradients", r"zero_grad\(\)",
                 r"zero_grad\(set_to_none=False\)"):
        assert re.search(rf"^{what}\s+paramwise\s+[\d.]+ (ms|us)\s+by hand\s+[\d.]+ (ms|us)\s+"
                         r"ratio median [\d.]+ \[[\d.]+-[\d.]+\]\s+best [\d.]+$", out, re.M), \
            (what, out)
    assert re.search(r"^target: step\(\) ratio <= 1\.02 -> (met|NOT met) .* bit-identical", out,
                     re.M), out
    assert re.search(r"^the Hybrid's own cost per step .*: [-+][\d.]+ us = [-+][\d.]+% of a real "
                     r"step$", out, re.M), out
