"""``paramwise demo``: the classic claims about regularization, measured on real data.

Three experiments on scikit-learn's bundled 8×8 digits and a synthetic task, with fixed seeds,
on the CPU (about a minute; ``--quick`` is a reduced run of a few seconds):

1. decaying biases (and norm layers) makes the model underfit — weight decay on every parameter
   vs. one :func:`paramwise.no_decay` rule, swept over λ;
2. L1 gives exact zeros only when it is proximal — L1 as a loss term vs. paramwise ``l1``,
   with SGD and Adam;
3. group lasso removes whole inputs — ``group_lasso`` over the first layer's input columns.

It prints a progress bar (stderr), a results table and what the numbers show, and writes a PNG::

    >>> from paramwise.demo import run
    >>> results = run(quick=True, out="demo.png")            # doctest: +SKIP

Needs the ``demo`` extra (scikit-learn, matplotlib): ``pip install 'paramwise[demo]'``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from ..errors import ParamwiseError
from . import render
from .experiments import (
    FULL,
    QUICK,
    BiasResult,
    GroupResult,
    L1Result,
    bias_decay,
    count_runs,
    group_lasso_pixels,
    l1_sparsity,
)

__all__ = ["run", "DemoResults", "Progress"]


class Progress:
    """A dependency-free progress bar on stderr: redrawn in place on a terminal, one line per
    tenth of the work otherwise (logs, CI).

        >>> bar = Progress(total=4, stream=sys.stderr)  # doctest: +SKIP
        >>> bar.tick("part 1: clusters")                 # doctest: +SKIP
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_tenth = -1

    def tick(self, label: str) -> None:
        self.done += 1
        frac = min(self.done / self.total, 1.0)
        filled = round(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        text = f"[{bar}] {self.done:>3}/{self.total} {elapsed:5.1f}s  {label}"
        if self.tty:
            self.stream.write("\r" + text[:110].ljust(110))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            tenth = int(frac * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class DemoResults:
    """Everything the demo measured, plus the text it printed and the figure's path."""

    bias: list[BiasResult] | None
    l1: L1Result | None
    group: GroupResult | None
    text: str
    figure: Path | None
    seconds: float


def _check_deps() -> None:
    missing = []
    for mod in ("sklearn", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append({"sklearn": "scikit-learn"}.get(mod, mod))
    if missing:
        raise ParamwiseError(f"the demo needs {' and '.join(missing)}, not installed",
                             fix="pip install 'paramwise[demo]'")


def _parse_parts(parts: str | set[int] | None) -> set[int]:
    if parts is None:
        return {1, 2, 3}
    if isinstance(parts, str):
        try:
            chosen = {int(p) for p in parts.replace(" ", "").split(",") if p}
        except ValueError:
            chosen = set()
    else:
        chosen = set(parts)
    if not chosen or not chosen <= {1, 2, 3}:
        raise ParamwiseError(f"--parts {parts!r} is not a list of 1, 2, 3",
                             fix="write e.g. --parts 1,3")
    return chosen


def run(quick: bool = False, out: str | Path | None = "paramwise-demo.png",
        parts: str | set[int] | None = None, stream: TextIO | None = None,
        progress: TextIO | None = None) -> DemoResults:
    """Run the experiments, print the results to ``stream`` (stdout), the progress bar to
    ``progress`` (stderr), and draw the figure to ``out`` (``None``: no figure)."""
    _check_deps()
    chosen = _parse_parts(parts)
    stream = stream if stream is not None else sys.stdout
    s = QUICK if quick else FULL
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and gives stable numbers
    try:
        bar = Progress(count_runs(s, chosen), progress)
        bias = bias_decay(s, bar.tick) if 1 in chosen else None
        l1 = l1_sparsity(s, bar.tick) if 2 in chosen else None
        group = group_lasso_pixels(s, bar.tick) if 3 in chosen else None
    finally:
        torch.set_num_threads(threads)
    text = _text(bias, l1, group, quick)
    fig = render.figure(out, bias, l1, group) if out is not None else None
    seconds = time.perf_counter() - t0
    stream.write(text + "\n")
    if fig is not None:
        stream.write(f"\nFigure written to {fig}\n")
    stream.write(f"Done in {seconds:.1f} s ({'--quick' if quick else 'full run'}, fixed seeds, "
                 f"CPU).\n")
    stream.flush()
    return DemoResults(bias, l1, group, text, fig, seconds)


def _text(bias: list[BiasResult] | None, l1: L1Result | None, group: GroupResult | None,
          quick: bool) -> str:
    s = QUICK if quick else FULL
    out = ["", "paramwise demo" + (" (--quick: fewer λ, one seed, shorter training)"
                                   if quick else ""), ""]
    sections = []  # (claim, set-up, table, findings), in the order of the parts
    if bias is not None:
        sections.append((
            "1. Claim: decaying biases makes the model underfit",
            f"   SGD, momentum 0.9, full batch, coupled weight_decay=λ on every parameter "
            f"vs. weights only (rule: paramwise.no_decay()); mean of {len(s.seeds)} seed(s)",
            render.bias_table(bias), render.bias_findings(bias)))
    if l1 is not None:
        sections.append((
            "2. Claim: L1 gives exact zeros only when it is proximal",
            f"   digits MLP 64-64-10, SGD (lr 0.1, momentum 0.9) and Adam (lr 3e-3), "
            f"{s.l1_steps} steps of batch {s.batch};\n   L1 on the weights as a loss term "
            "λ·Σ|w| vs. Rule('weight', l1=λ) (proximal, in Adam's own scaling for Adam)",
            render.l1_table(l1), render.l1_findings(l1)))
    if group is not None:
        sections.append((
            "3. Claim: group lasso removes whole inputs",
            f"   digits MLP 64-64-10, SGD (lr 0.03, momentum 0.9), {s.group_steps} steps of "
            f"batch {s.batch}; Rule('0.weight', group_lasso=λ, group_dim=1): one group per "
            "input pixel",
            render.group_table(group), render.group_findings(group)))
    for claim, setup, table, findings in sections:
        out += [claim, setup, table, "", "   What this shows:",
                *(f"   - {line}" for line in findings), ""]
    return "\n".join(out).rstrip()
