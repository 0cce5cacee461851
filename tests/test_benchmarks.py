"""The benchmarks still run (a smoke test: tiny model, two rounds; the figures are not checked,
only that every variant of every optimizer family is timed and reported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_regularizers_quick_runs_every_family_and_variant():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_regularizers.py"), "--quick",
         "--device", "cpu", "--optim", "sgd,adam,rmsprop,adagrad"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    for family in ("SGD", "Adam", "RMSprop", "Adagrad"):
        assert f"== {family} " in out
    for variant in ("builtin_wd", "pw_l1_prox", "pw_glasso", "pw_max_norm", "fused_ref"):
        assert out.count(f"\n{variant} ") == 4, variant
    assert out.count("over the fused update alone (fused_ref)") == 4
