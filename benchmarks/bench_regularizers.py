"""What regularization costs per training step, every variant measured side by side in one run.

Model: an MLP of two ``Linear(1024, 4096) → GELU → Linear(4096, 1024)`` blocks (16.8M
parameters); regularization on the weight matrices, biases in a plain group. For SGD (momentum
0.9) and Adam it times, interleaved round by round (medians of per-round ratios and differences), ``optimizer.step()`` alone and a
whole training step (forward, backward, step) for:

* ``plain``        — no regularization
* ``builtin_wd``   — the optimizer's own ``weight_decay``
* ``loss_l2`` / ``loss_l1`` — the loss-term pattern ``loss + λ·Σ‖p‖²/2`` / ``loss + λ·Σ|p|``
* ``pw_l2``        — paramwise ``l2`` lowered to native ``weight_decay`` (what
  ``paramwise.optimizer`` does)
* ``pw_l2_hook``   — the same ``l2`` run by the step pre-hook (not lowered)
* ``pw_l1_grad``   — ``l1`` with ``prox=False`` (subgradient in the pre-hook)
* ``pw_l1_prox``   — proximal ``l1`` (adaptive scale; SGD: ``lr·λ/(1-μ)``; Adam on CPU: fused
  with Adam's own update, see ``paramwise.step.fused.update``, as are the gradient terms and group lasso)
* ``pw_l1_prox_lr`` (Adam) — proximal ``l1`` with ``prox_scale='lr'``
* ``pw_glasso``    — proximal group lasso over rows (Adam: metric prox, one closed-form
  majorize-minimize step per row, exact at fixed points)
* ``pw_max_norm``  — max-norm projection of rows
* ``pw_decoupled`` — ``decoupled_decay`` (Adam: lowered to ``decoupled_weight_decay``; SGD: hook)
* ``fused_ref``    — paramwise's fused update with no regularizer (``paramwise.step.fused.update`` called
  directly; CPU only): the base the fused variants' own cost is measured from, since the chunked
  update alone can be faster than torch's loop (Adam) and "extra over plain" then flatters them

and ``pass``: one in-place elementwise pass over the weights (``w.mul_(1.0)``), the unit for
group lasso and max-norm. For Adam it also times ``floor``: one square root of the second moment
and one division per weight element, in the hooks' chunks — the arithmetic any proximal map in
Adam's per-element metric must do after the step (``torch.optim.Adam`` computes the same two
inside its update, out of the hooks' reach), so the floor under the adaptive variants' extra
time. On CUDA it also reports each variant's extra peak memory.

The variants run in a rotating order (each round starts one later), so no variant always follows
the same one. ``--compile`` wraps every ``optimizer.step`` in ``torch.compile`` (inductor): the
step hooks trace into the compiled step, and a proximal map becomes one fused kernel.

Run: ``.venv/bin/python benchmarks/bench_regularizers.py [--device cuda] [--rounds 15]
[--optim adam] [--variants pw_l1_prox,pw_glasso] [--compile]``
(``--quick`` for a small smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from paramwise.step._chunks import chunk_limit  # noqa: E402
from paramwise.step.fused.update import update_  # noqa: E402
from paramwise.step.hooks import attach, lower  # noqa: E402

LAM = 1e-5


def build_model(width: int, hidden: int, blocks: int, device: str) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
              for _ in range(blocks)]
    return nn.Sequential(*layers).to(device)


VARIANTS = {
    "plain": ({}, {}),
    "builtin_wd": ({}, {"weight_decay": LAM}),
    "loss_l2": ({}, {}),
    "loss_l1": ({}, {}),
    "pw_l2": ({"l2": LAM}, {}),
    "pw_l2_hook": ({"l2": LAM}, {}),
    "pw_l1_grad": ({"l1": LAM, "prox": False}, {}),
    "pw_l1_prox": ({"l1": LAM}, {}),
    "pw_l1_prox_lr": ({"l1": LAM, "prox_scale": "lr"}, {}),
    "pw_glasso": ({"group_lasso": LAM}, {}),
    "pw_max_norm": ({"max_norm": 10.0}, {}),
    "pw_decoupled": ({"decoupled_decay": LAM}, {}),
    "fused_ref": ({}, {}),
}


def make_opt(name: str, cls: type, model: nn.Module, lr: float, kw: dict):
    reg, native = VARIANTS[name]
    weights = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": weights, **reg, **native}, {"params": others}]
    if reg and name != "pw_l2_hook":
        groups = lower(groups, cls, kw)
    opt = cls(groups, lr=lr, **kw)
    if reg:
        attach(opt)
    return opt


def fused_alone(opt: torch.optim.Optimizer):
    """``opt``'s update run by :mod:`paramwise.step.fused.update` with nothing before or after it."""
    def step() -> None:
        with torch.no_grad():
            for g in opt.param_groups:
                ps = [p for p in g["params"] if p.grad is not None]
                update_(opt, g, ps, [0] * len(ps), lambda *_: None)
    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--optim", default="sgd,adam")
    ap.add_argument("--variants", default="",
                    help="comma-separated subset of variants (plain, builtin_wd and the loss-term "
                         "twins are always kept, for the ratios)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 rounds (smoke test)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile every optimizer.step (inductor; needs a C++ compiler)")
    args = ap.parse_args()
    dev = args.device
    width, hidden, blocks = (64, 128, 1) if args.quick else (1024, 4096, 2)
    rounds = 2 if args.quick else args.rounds
    model = build_model(width, hidden, blocks, dev)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    n = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, width, device=dev)
    y = torch.randn(args.batch, width, device=dev)
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"params={n / 1e6:.1f}M rounds={rounds} batch={args.batch}"
          + ("  optimizer.step compiled" if args.compile else ""))

    families = {"sgd": (torch.optim.SGD, 1e-3, {"momentum": 0.9}),
                "adam": (torch.optim.Adam, 1e-4, {}),
                "rmsprop": (torch.optim.RMSprop, 1e-4, {}),
                "adagrad": (torch.optim.Adagrad, 1e-3, {})}
    for fam in args.optim.split(","):
        cls, lr, kw = families[fam]
        names = [v for v in VARIANTS if not (fam == "sgd" and v == "pw_l1_prox_lr")
                 and not (v == "fused_ref" and (dev != "cpu" or args.compile))]
        if args.variants:
            keep = {"plain", "builtin_wd", "loss_l1", "loss_l2", "fused_ref",
                    *args.variants.split(",")}
            names = [v for v in names if v in keep]
        opts = {v: make_opt(v, cls, model, lr, kw) for v in names}
        if args.compile:  # one compiled step per optimizer, all from torch's one step wrapper
            torch._dynamo.config.recompile_limit = 4 * len(VARIANTS)
            torch._dynamo.config.accumulated_recompile_limit = 64 * len(VARIANTS)
        steps = {v: torch.compile(o.step) if args.compile else o.step for v, o in opts.items()}
        if "fused_ref" in steps:
            steps["fused_ref"] = fused_alone(opts["fused_ref"])
        bench_family(cls, kw, opts, steps, model, weights, x, y, dev, rounds)


def bench_family(cls: type, kw: dict, opts: dict, steps: dict, model: nn.Module,
                 weights: list, x, y, dev: str, rounds: int) -> None:
    names = list(opts)

    def loss_fn(v: str) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        if v == "loss_l2":
            loss = loss + LAM / 2 * sum(p.square().sum() for p in weights)
        elif v == "loss_l1":
            loss = loss + LAM * sum(p.abs().sum() for p in weights)
        return loss

    def whole(v: str) -> float:
        opt = opts[v]
        sync(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss_fn(v).backward()
        steps[v]()
        sync(dev)
        return time.perf_counter() - t0

    def step_only(v: str) -> float:
        sync(dev)
        t0 = time.perf_counter()
        steps[v]()
        sync(dev)
        return time.perf_counter() - t0

    def one_pass() -> float:
        sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            for p in weights:
                p.mul_(1.0)
        sync(dev)
        return time.perf_counter() - t0

    second = opts[names[0]].state if cls is torch.optim.Adam else None

    def floor() -> float:
        lim = chunk_limit(weights[0].device) // 2
        d = torch.empty(lim, device=weights[0].device)
        sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            for p in weights:
                w, v = p.view(-1), second[p]["exp_avg_sq"].view(-1)
                for i in range(0, w.numel(), lim):
                    m = min(lim, w.numel() - i)
                    torch.sqrt(v[i:i + m], out=d[:m])
                    torch.div(w[i:i + m], d[:m], out=d[:m])
        sync(dev)
        return time.perf_counter() - t0

    for v in names:                      # warm up: states, allocator, first-touch pages
        whole(v)
        whole(v)
    peak: dict[str, float] = {}
    if dev == "cuda":
        for v in names:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            steps[v]()
            torch.cuda.synchronize()
            peak[v] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    t_step: dict[str, list[float]] = {v: [] for v in names}
    t_whole: dict[str, list[float]] = {v: [] for v in names}
    t_pass: list[float] = []
    t_floor: list[float] = []
    for r in range(rounds):
        t_pass.append(one_pass())
        if second is not None:
            t_floor.append(floor())
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            t_step[v].append(step_only(v))
        for v in order:
            t_whole[v].append(whole(v))
    # paired statistics: each round times every variant once, so per-round ratios and
    # differences cancel the machine's slow drifts; the table shows their medians
    med_s = {v: statistics.median(t) * 1e3 for v, t in t_step.items()}
    med_w = {v: statistics.median(t) * 1e3 for v, t in t_whole.items()}
    pas = statistics.median(t_pass) * 1e3

    def ratio(table: dict[str, list[float]], v: str, ref: str) -> float:
        return statistics.median(a / b for a, b in zip(table[v], table[ref]))

    def extra(table: dict[str, list[float]], v: str, unit: list[float] | None = None,
              base: str = "plain") -> float:
        """Median over rounds of (variant - base), in ms or in units of ``unit``."""
        units = unit or [1e-3] * rounds
        return statistics.median((a - b) / u for a, b, u in zip(table[v], table[base], units))

    print(f"\n== {cls.__name__} {kw}  (one elementwise pass over the weights: {pas:.2f} ms)")
    if t_floor:
        print(f"   adaptive floor (sqrt of the second moment + one division per weight): "
              f"{statistics.median(t_floor) * 1e3:.2f} ms = "
              f"{statistics.median(f / p for f, p in zip(t_floor, t_pass)):.2f} passes")
    head = f"{'variant':<15}{'step ms':>9}{'/plain':>8}{'/wd':>7}{'whole ms':>10}{'/plain':>8}{'/wd':>7}"
    if peak:
        head += f"{'peak+MiB':>10}"
    print(head)
    for v in names:
        row = (f"{v:<15}{med_s[v]:>9.2f}{ratio(t_step, v, 'plain'):>8.3f}"
               f"{ratio(t_step, v, 'builtin_wd'):>7.3f}{med_w[v]:>10.2f}"
               f"{ratio(t_whole, v, 'plain'):>8.3f}{ratio(t_whole, v, 'builtin_wd'):>7.3f}")
        if peak:
            row += f"{peak[v]:>10.1f}"
        print(row)

    print("loss-term extra time / paramwise extra time (whole step; target >= 4):")
    for lt, pw in [("loss_l1", "pw_l1_grad"), ("loss_l1", "pw_l1_prox"), ("loss_l2", "pw_l2"),
                   ("loss_l2", "pw_l2_hook")]:
        if pw not in med_w:
            continue
        e_lt, e_pw = extra(t_whole, lt), extra(t_whole, pw)
        shown = f"{e_lt / e_pw:.1f}" if e_pw > 0 else "inf"
        print(f"  {lt} / {pw}: {e_lt:.2f} ms / {e_pw:.2f} ms = {shown}"
              + ("  (paramwise's step is no slower than the plain one)" if e_pw <= 0 else ""))
    ref = "fused_ref" in med_s
    print("extra step time in elementwise passes (target <= 2): over the plain step"
          + (" / over the fused update alone (fused_ref)" if ref else ""))
    for v in ("pw_glasso", "pw_max_norm", "pw_l1_prox", "pw_l1_grad"):
        if v in med_s:
            print(f"  {v}: {extra(t_step, v, t_pass):.2f}"
                  + (f" / {extra(t_step, v, t_pass, 'fused_ref'):.2f}" if ref else ""))

if __name__ == "__main__":
    main()
