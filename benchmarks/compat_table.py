"""What paramwise's regularizers actually do on each optimizer: a Markdown table from one run.

Model: ``Embedding(100, 16)`` (mean over 4 tokens) next to 24 dense features → ``Linear(40,
256)`` → ``LayerNorm`` → ReLU → ``Linear(256, 256)`` → ReLU → head ``Linear(256, 10)``, trained
on a fixed synthetic classification task: a random teacher reads the tokens and the first 4
dense features, so 20 of the first layer's 40 inputs are noise. Rules, as a user would write
them::

    no_decay(embedding=False, key="decoupled_decay")      # biases and norms: no decay
    Rule("weight", l1=L1)                                  # the three Linear weights
    Rule("fc1.weight", group_lasso=GL, group_dim=1)        # the first layer's 40 inputs
    Rule("head.weight", max_norm=C)                        # each output row: norm <= C
    decoupled_decay=WD                                     # everything else (the embedding too)

Columns, per optimizer (``--steps`` steps, default 300):

* **l1 zeros**: exact zeros among the ``l1`` weights at the end;
* **group lasso**: all-zero input columns of ``fc1.weight`` (of 40), and how many of them are
  among the 20 noise inputs;
* **max-norm**: whether every head row norm was ≤ C (1e-6 relative slack) after every step;
* **decay**: on the first step, the embedding's decrease against a twin run without
  ``decoupled_decay``, divided by lr·WD·w (1.00: AdamW's decoupled decay exactly);
* **resume**: model and optimizer ``state_dict`` saved 20 steps before the end, loaded into a
  fresh model and optimizer (``torch.save`` round trip), the last 20 steps rerun: weights
  bit-identical;
* **step scale**: the ``prox_scale="adaptive"`` rule used (:func:`paramwise.step.prox.rule_name`):
  the class's own, ``generic: state['key']`` (an Adam-like second moment found in the state),
  ``lr fallback`` (none found: threshold lr·λ, warned), or the fix a refusal asks for;
* **overhead**: the median over 50 interleaved rounds of (a training step with ``l1`` on the
  weights) ÷ (the same step with no regularizer): forward, backward, step, one thread (on a
  shared machine these ratios move by ±0.3 from run to run);
* **loss**: the final training loss (a regularizer that kills the model shows here).

Entries are data: :data:`ENTRIES` lists ``Entry(name, factory)`` for every ``torch.optim``
optimizer; :data:`OPTIONAL` adds third-party ones when their package is importable (nothing is
installed for them); ``--extend module:function`` (a callable returning entries) adds more, and
so does :func:`add_entries` for a script importing this one.

Run: ``.venv/bin/python benchmarks/compat_table.py [--steps 300] [--only NAdam,Rprop]
[--extend mypkg.compat:entries] [--quick]``
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

import paramwise
from paramwise import Rule, no_decay
from paramwise.errors import ParamwiseError
from paramwise.step.prox import rule_name

L1, GL, C, WD = 3e-4, 3e-2, 1.0, 1e-2
VOCAB, EMB, DENSE, USED, HIDDEN, CLASSES, BATCH, TOKENS = 100, 16, 24, 4, 512, 10, 64, 4
DIM = EMB + DENSE

#: ``factory(model, rules, decoupled_decay) -> optimizer``
Factory = Callable[[nn.Module, list, float], torch.optim.Optimizer]


@dataclass
class Entry:
    """A row: ``factory(model, rules, decoupled_decay)`` builds the optimizer. ``route``: rules always added
    (which parameters go to which optimizer); ``extra``: options merged into the l1 and
    group-lasso rules (``prox=False``); ``reg``: more regularizer rules; ``sparse``: the
    model's ``Embedding(sparse=True)``; ``scale``: shown instead of the rule's name."""

    name: str
    factory: Factory
    route: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    reg: list = field(default_factory=list)
    sparse: bool = False
    scale: str = ""
    rules: list | None = None                 # instead of the table's rules

    def build(self, model: nn.Module, regularized: bool = True, l1_only: bool = False,
              decay: float = WD) -> torch.optim.Optimizer:
        """The optimizer over ``model``: with the table's rules, ``l1`` alone, or none."""
        base = rules(**self.extra) if self.rules is None else list(self.rules)
        rs = (base + self.reg if regularized and not l1_only else
              [Rule("weight", l1=L1, **self.extra)] if l1_only else [])
        return self.factory(model, self.route + rs, decay if regularized and not l1_only else 0.0)


class Net(nn.Module):
    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, EMB, sparse=sparse)
        self.fc1, self.norm = nn.Linear(DIM, HIDDEN), nn.LayerNorm(HIDDEN)
        self.fc2, self.head = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = torch.cat([self.emb(x[0]).mean(1), x[1]], 1)
        return self.head(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(h))))))


_G = torch.Generator().manual_seed(123)
_TEACHER = torch.randn(VOCAB, CLASSES, generator=_G), torch.randn(USED, CLASSES, generator=_G)


def batch(step: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Tokens and dense features; the label reads the tokens and the first USED features."""
    g = torch.Generator().manual_seed(10_000 + step)
    x = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g)
    d = torch.randn(BATCH, DENSE, generator=g)
    return (x, d), (_TEACHER[0][x].mean(1) + d[:, :USED] @ _TEACHER[1]).argmax(1)


def rules(**extra: object) -> list:
    """The table's rules; ``extra`` goes into the l1 and group-lasso rules (``prox=False``)."""
    return [no_decay(embedding=False, key="decoupled_decay"), Rule("weight", l1=L1, **extra),
            Rule("fc1.weight", group_lasso=GL, group_dim=1, **extra),
            Rule("head.weight", max_norm=C)]


def plain(cls: type, **kw: object) -> Factory:
    """``paramwise.optimizer(model, cls, rules, decoupled_decay=decay, **kw)``."""
    def make(model: nn.Module, rs: list, decay: float) -> torch.optim.Optimizer:
        return paramwise.optimizer(model, cls, rs, decoupled_decay=decay, **kw)
    return make


O = torch.optim  # noqa: E741
ENTRIES: list[Entry] = [
    Entry("SGD (momentum 0.9)", plain(O.SGD, lr=0.02, momentum=0.9)),
    Entry("Adam", plain(O.Adam, lr=1e-3)),
    Entry("AdamW", plain(O.AdamW, lr=1e-3)),
    Entry("NAdam", plain(O.NAdam, lr=1e-3)),
    Entry("RAdam", plain(O.RAdam, lr=1e-3)),
    Entry("Adamax", plain(O.Adamax, lr=2e-3)),
    Entry("RMSprop", plain(O.RMSprop, lr=1e-3)),
    Entry("Adagrad", plain(O.Adagrad, lr=0.05)),
    Entry("Adadelta", plain(O.Adadelta, lr=1.0)),
    Entry("ASGD", plain(O.ASGD, lr=0.05)),
    Entry("Adafactor", plain(O.Adafactor, lr=1e-2)),
    Entry("Rprop (prox=False)", plain(O.Rprop, lr=1e-3), extra={"prox": False},
          scale="Rprop: refused → prox=False"),
    Entry("SparseAdam (embedding) + Adam", plain(O.Adam, lr=1e-3), sparse=True,
          route=[Rule("emb.weight", optimizer="sparseadam")], reg=[Rule("emb.weight", l1=L1)]),
    Entry("LBFGS", plain(O.LBFGS, lr=0.1)),
    Entry("LBFGS (one group: l1 only)", plain(O.LBFGS, lr=0.1), rules=[Rule("*", l1=L1)]),
]
if hasattr(O, "Muon"):
    ENTRIES.insert(-2, Entry("Muon (fc2) + AdamW", plain(O.AdamW, lr=1e-3),
                             route=[Rule("fc2.weight", optimizer="muon", prox_scale="lr")],
                             scale="AdamW + Muon: refused → prox_scale='lr'"))

#: (package, class, constructor options): added when the package can be imported (the test
#: extra installs all four). heavyball runs eager here (its torch.compile takes ~20 s per
#: optimizer on a CPU); SophiaH is left out (its step needs backward(create_graph=True)), and
#: so is heavyball's ADOPT (it diverges on this model by its second step, with or without
#: paramwise).
OPTIONAL: list[tuple[str, str, dict]] = [
    ("pytorch_optimizer", "Lion", {"lr": 1e-4}), ("pytorch_optimizer", "Lamb", {"lr": 1e-3}),
    ("pytorch_optimizer", "Adan", {"lr": 1e-3}), ("pytorch_optimizer", "AdaBelief", {"lr": 1e-3}),
    ("pytorch_optimizer", "ADOPT", {"lr": 1e-3}), ("pytorch_optimizer", "MADGRAD", {"lr": 1e-3}),
    ("pytorch_optimizer", "Prodigy", {"lr": 1.0}), ("pytorch_optimizer", "SOAP", {"lr": 3e-3}),
    ("pytorch_optimizer", "ScheduleFreeSGD", {"lr": 0.05}),
    ("pytorch_optimizer", "ScheduleFreeAdamW", {"lr": 1e-3}),
    ("lion_pytorch", "Lion", {"lr": 1e-4}),
    ("schedulefree", "SGDScheduleFree", {"lr": 0.05}),
    ("schedulefree", "AdamWScheduleFree", {"lr": 1e-3}),
    ("schedulefree", "SGDScheduleFreeClosure", {"lr": 0.05}),
    ("heavyball", "AdamW", {"lr": 1e-3}), ("heavyball", "SGD", {"lr": 0.02}),
    ("heavyball", "LaProp", {"lr": 1e-3}), ("heavyball", "RMSprop", {"lr": 1e-3}),
    ("heavyball", "SOAP", {"lr": 3e-3}), ("heavyball", "SFAdamW", {"lr": 1e-3}),
]


def add_entries(entries: Iterable[Entry]) -> None:
    """Add rows (e.g. third-party optimizers) to the table."""
    ENTRIES.extend(entries)


def optional_entries(keep: Callable[[str], bool] = lambda name: True) -> list[Entry]:
    """:data:`OPTIONAL`'s rows whose name ``keep`` accepts (no import for the others)."""
    out = []
    for pkg, name, kw in OPTIONAL:
        if not keep(f"{name} ({pkg})"):
            continue
        try:
            mod = importlib.import_module(pkg)
            cls = getattr(mod, name)
        except (ImportError, AttributeError):
            continue
        if pkg == "heavyball":
            mod.utils.compile_mode = None
        out.append(Entry(f"{name} ({pkg})", plain(cls, **kw)))
    return out


def _parts(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    return list(getattr(opt, "optimizers", [opt]))


def _mode(opt: torch.optim.Optimizer, mode: str) -> None:
    """``opt.train()`` / ``opt.eval()`` for schedule-free optimizers (their parameters hold the
    evaluated weights x only after ``eval()``); nothing for the others."""
    for o in _parts(opt):
        if any("train_mode" in g for g in o.param_groups) and callable(getattr(o, mode, None)):
            getattr(o, mode)()


def _step(model: nn.Module, opt: torch.optim.Optimizer, t: int) -> float:
    x, y = batch(t)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return float(opt.step(closure).detach())


def _scale(entry: Entry, opt: torch.optim.Optimizer, caught: list) -> str:
    if entry.scale:
        return entry.scale
    names = []
    for o in _parts(opt):
        name = rule_name(type(o))
        for w in caught:
            msg = str(w.message)
            if f" {type(o).__name__} " in msg or f" {type(o).__name__};" in msg:
                name = ("lr fallback" if "does not know" in msg else
                        "generic: " + msg.split("v = ")[1].split(" ")[0])
        names.append(name)
    return " + ".join(dict.fromkeys(names))


def _decay_ratio(entry: Entry) -> str:
    """The embedding's first-step decrease against a twin built with decoupled_decay=0,
    ÷ lr·WD·w (the optimizer's own weight_decay, e.g. AdamW's default, is in both)."""
    out = []
    for decay in (WD, 0.0):
        torch.manual_seed(0)
        model = Net(entry.sparse)
        opt = entry.build(model, decay=decay)
        _mode(opt, "train")
        w0 = model.emb.weight.detach().clone()
        _step(model, opt, 0)
        out.append(model.emb.weight.detach().clone())
    lr = next(g["lr"] for g in opt.param_groups if any(p is model.emb.weight for p in g["params"]))
    got = ((out[1] - out[0]) * w0).sum() / (lr * WD * (w0 ** 2).sum())
    return f"{float(got):.2f}"


def _overhead(entry: Entry, rounds: int) -> str:
    models, opts = [], []
    for l1 in (False, True):
        torch.manual_seed(0)
        models.append(Net(entry.sparse))
        opts.append(entry.build(models[-1], regularized=l1, l1_only=l1))
        _mode(opts[-1], "train")
    times: list[list[float]] = [[], []]
    for r in range(rounds + 3):
        for i in (r % 2, 1 - r % 2):
            t0 = time.perf_counter()
            _step(models[i], opts[i], r)
            if r >= 3:
                times[i].append(time.perf_counter() - t0)
    return f"{statistics.median(b / a for a, b in zip(*times)):.2f}×"


def row(entry: Entry, steps: int, rounds: int) -> list[str]:
    torch.manual_seed(0)
    model = Net(entry.sparse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = entry.build(model)
        except ParamwiseError as e:
            why = re.sub(r"^param group \d+( \(.*?\))?: ", "", str(e).split(";")[0])
            why = why if len(why) <= 100 else why[:why.rfind(" ", 0, 100)] + " …"
            return [entry.name, f"refused when built: {why}"] + ["–"] * 7
        _mode(opt, "train")
        held, save_at, saved = True, max(0, steps - 20), b""
        for t in range(steps):
            if t == save_at:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                saved = buf.getvalue()
            loss = _step(model, opt, t)
            norms = model.head.weight.detach().norm(dim=1)
            held &= bool((norms <= C * (1 + 1e-6)).all())
        scale = _scale(entry, opt, caught)
        _mode(opt, "eval")                   # schedule-free: measure the evaluated weights
        held &= bool((model.head.weight.detach().norm(dim=1) <= C * (1 + 1e-6)).all())
    l1 = [model.fc1.weight, model.fc2.weight, model.head.weight] + (
        [model.emb.weight] if entry.sparse else [])
    zeros = sum(int((p == 0).sum()) for p in l1) / sum(p.numel() for p in l1)
    dead = model.fc1.weight.detach().norm(dim=0) == 0
    cols, noise = int(dead.sum()), int(dead[EMB + USED:].sum())
    torch.manual_seed(0)
    twin = Net(entry.sparse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt2 = entry.build(twin)
        state = torch.load(io.BytesIO(saved), weights_only=False)
        twin.load_state_dict(state["model"])
        opt2.load_state_dict(state["opt"])
        _mode(opt2, "train")
        for t in range(save_at, steps):
            _step(twin, opt2, t)
        _mode(opt2, "eval")
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
        decay = _decay_ratio(entry)
        over = _overhead(entry, rounds)
    return [entry.name, f"{100 * zeros:.1f}%", f"{cols}/{DIM} ({noise}/{DENSE - USED} noise)", "yes" if held else "**no**",
            f"yes ({decay})", "yes" if same else "**no**", scale, over,
            f"{loss:.3f}" if math.isfinite(loss) else "nan"]


HEADER = ["optimizer", "l1 zeros", "group lasso", "max-norm", "decay", "resume", "step scale",
          "overhead", "loss"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=50, help="timing rounds for the overhead")
    ap.add_argument("--only", default="", help="comma-separated names (first words: 'sgd')")
    ap.add_argument("--extend", action="append", default=[],
                    help="module:function returning more entries")
    ap.add_argument("--quick", action="store_true", help="40 steps, 5 rounds (smoke run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.rounds = 40, 5
    torch.set_num_threads(1)
    wanted = [s.strip().lower() for s in a.only.split(",")] if a.only else []

    def keep(name: str) -> bool:
        return not wanted or any(name.lower() == k or name.lower().startswith(k + " ")
                                 for k in wanted)
    entries = [e for e in ENTRIES if keep(e.name)] + optional_entries(keep)
    for spec in a.extend:
        mod, fn = spec.split(":")
        entries += [e for e in getattr(importlib.import_module(mod), fn)() if keep(e.name)]
    print(f"torch {torch.__version__}, {a.steps} steps, l1={L1}, group_lasso={GL}, "
          f"max_norm={C}, decoupled_decay={WD}\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for e in entries:
        print("| " + " | ".join(row(e, a.steps, a.rounds)) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
