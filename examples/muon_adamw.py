"""AdamW alone vs Muon for the hidden matrices + AdamW for the rest, on a tiny transformer.

Both runs start from the same weights, see the same batches and follow the same cosine
schedule; the only difference is the rules list::

    adamw = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=..., weight_decay=...)
    muon  = paramwise.optimizer(model, "adamw", [paramwise.no_decay(),
                                                 paramwise.hidden_matrices()], lr=..., ...)

The second is a :class:`paramwise.Hybrid`: one ``torch.optim.Optimizer`` over a Muon part (the
2-D weights inside the blocks, with ``adjust_lr_fn="match_rms_adamw"`` so the one ``lr`` serves
both) and an AdamW part (embeddings, head, norms, biases), driven by *one* scheduler.

The task is language modelling on a random order-2 Markov language (24 tokens; each pair of
tokens allows 3 successors, with random probabilities), so the best reachable loss is known:
the language's own cross-entropy, printed as the floor next to chance (``ln 24``). At this
size the two runs end close together; the point is the mechanics (one optimizer, one
scheduler, one ``state_dict``), not a race. The printed ``opt.step`` times differ because
torch's Muon runs Newton-Schulz in bfloat16, which CPUs without native bfloat16 matmuls do
slowly (about 4 ms AdamW vs 17 ms Muon + AdamW per step here). Runs on one CPU thread in
well under a minute::

    python examples/muon_adamw.py                 # 2 x 300 steps, writes muon_adamw.png
    python examples/muon_adamw.py --out curves.png --steps 500
    python examples/muon_adamw.py --quick         # a few seconds, no PNG unless --out is given

Compare the split with the command line on the same model::

    paramwise inspect examples/muon_adamw.py:build --config examples/muon.yaml
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

import paramwise

VOCAB, CONTEXT, BRANCHING = 24, 32, 3   # tokens, sequence length, successors per context


# ------------------------------------------------------------------------------ the model
class Block(nn.Module):
    """Pre-norm GPT block: causal self-attention and an MLP, each in a residual branch."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.fc_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = VOCAB, context: int = CONTEXT, dim: int = 64,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build() -> TinyGPT:
    """The model both runs start from (also the factory for ``paramwise inspect``)."""
    torch.manual_seed(0)
    return TinyGPT()


# ------------------------------------------------------------------------------ the data
def grammar(seed: int = 1234) -> torch.Tensor:
    """A random order-2 Markov language: ``table[a, b]`` is the distribution of the token after
    ``a b``; each of the ``VOCAB**2`` contexts allows ``BRANCHING`` successors, with random
    probabilities."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.stack([torch.randperm(VOCAB, generator=g)[:BRANCHING]
                        for _ in range(VOCAB * VOCAB)]).view(VOCAB, VOCAB, BRANCHING)
    w = -torch.log(torch.rand(VOCAB, VOCAB, BRANCHING, generator=g))   # Dirichlet(1, 1, 1)
    return torch.zeros(VOCAB, VOCAB, VOCAB).scatter_(2, succ, w / w.sum(-1, keepdim=True))


TABLE = grammar()


def batch(n: int, seed: int) -> torch.Tensor:
    """``n`` sequences of ``CONTEXT`` tokens drawn from the language, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, CONTEXT, dtype=torch.long)
    x[:, :2] = torch.randint(0, VOCAB, (n, 2), generator=g)
    for t in range(2, CONTEXT):
        x[:, t] = torch.multinomial(TABLE[x[:, t - 2], x[:, t - 1]], 1, generator=g).squeeze(1)
    return x


def loss_of(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token that has two tokens before it."""
    logits = model(seqs[:, :-1])[:, 1:]
    return F.cross_entropy(logits.reshape(-1, VOCAB), seqs[:, 2:].reshape(-1))


def floor_of(seqs: torch.Tensor) -> float:
    """The true language's own cross-entropy on ``seqs``: the best loss any model can reach."""
    return -TABLE[seqs[:, :-2], seqs[:, 1:-1], seqs[:, 2:]].log().mean().item()


# ------------------------------------------------------------------------------ training
def cosine(steps: int, warmup: int):
    """lr factor: linear warm-up, then cosine down to 10% (for ``LambdaLR``)."""
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        done = (t - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return factor


def train(rules: list, steps: int, batch_size: int, lr: float, eval_batch: torch.Tensor, *,
          show_report: bool = False) -> dict:
    """One run from :func:`build`'s weights: its per-step train losses, its loss on
    ``eval_batch`` at the end, and the seconds spent in ``opt.step()``."""
    model = build()
    opt = paramwise.optimizer(model, "adamw", rules, lr=lr, weight_decay=0.1,
                              betas=(0.9, 0.95))
    if show_report:
        print(paramwise.report(opt))
        print()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps, max(1, steps // 20)))
    losses, in_step = [], 0.0
    for t in range(steps):
        loss = loss_of(model, batch(batch_size, seed=t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        tick = time.perf_counter()
        opt.step()
        in_step += time.perf_counter() - tick
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        eval_loss = loss_of(model, eval_batch).item()
    return {"optimizer": opt, "losses": losses, "eval": eval_loss, "step_seconds": in_step}


def smooth(xs: Sequence[float], k: int) -> list[float]:
    """Trailing mean over ``k`` steps (the curves' end points are read from it)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x - (xs[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


def plot(runs: dict[str, dict], floor: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        k = max(1, len(run["losses"]) // 30)
        ax.plot(run["losses"], alpha=0.25)
        ax.plot(smooth(run["losses"], k), color=ax.lines[-1].get_color(),
                label=f"{name} (eval {run['eval']:.3f})")
    ax.axhline(math.log(VOCAB), color="grey", ls=":", lw=1, label=f"chance (ln {VOCAB})")
    ax.axhline(floor, color="black", ls="--", lw=1, label=f"floor: the language ({floor:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("tiny GPT on an order-2 Markov language:\nsame init, data and cosine schedule",
                 fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _compare(args: argparse.Namespace, out: str | None) -> dict[str, dict]:
    """The two runs, the end points printed, the PNG written."""
    eval_batch = batch(512, seed=-1)                  # sequences no training step sees
    runs = {
        "AdamW": train([paramwise.no_decay()], args.steps, args.batch, args.lr, eval_batch),
        "Muon + AdamW": train([paramwise.no_decay(), paramwise.hidden_matrices()], args.steps,
                              args.batch, args.lr, eval_batch, show_report=True),
    }
    k = max(1, args.steps // 10)
    floor = floor_of(eval_batch)
    print(f"{args.steps} steps, batch {args.batch}, lr {args.lr}, warm-up + cosine; train loss: "
          f"mean of the first / last {k} steps; chance ln {VOCAB} = {math.log(VOCAB):.3f}, "
          f"floor (the language's own loss on the eval batch) = {floor:.3f}")
    for name, run in runs.items():
        first, last = sum(run["losses"][:k]) / k, sum(run["losses"][-k:]) / k
        run.update(first=first, last=last, floor=floor)
        print(f"{name:<13} train {first:.3f} -> {last:.3f}   eval {run['eval']:.3f}   "
              f"opt.step {1e3 * run['step_seconds'] / args.steps:.2f} ms/step")
    if out:
        plot(runs, floor, out)
        print(f"wrote {out}")
    return runs


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Run both, print the end points, write the PNG; returns each run's results by name
    (``losses``, ``first``/``last`` train loss means, ``eval``, ``floor``, ``optimizer``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="one lr for both parts (default 1e-2)")
    p.add_argument("--out", default=None, help="PNG of the curves (default: muon_adamw.png; "
                   "with --quick, none unless given)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, batch 16")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 30, 16
    out = args.out or (None if args.quick else "muon_adamw.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest (and fair on a shared CPU)
    try:
        runs = _compare(args, out)
    finally:
        torch.set_num_threads(threads)
    return runs


if __name__ == "__main__":
    main()
