"""A small transformer trained with FSDP2 (``fully_shard``) and paramwise rules, on CPU.

    torchrun --nproc_per_node 2 examples/torchrun_fsdp.py --steps 30

Rules: AdamW with weight decay on weights only (``no_decay``: biases, norms, embeddings get
none), proximal L1 on the MLP weights (exact zeros, the step taken in Adam's own scaling) and
layer-wise learning-rate decay (embeddings slowest, head fastest). Rank 0 prints the group
table, then the loss (averaged over ranks) and the MLP weights' sparsity each step; ``--save
DIR`` writes a name-keyed sharded checkpoint with ``torch.distributed.checkpoint``.

Order matters: shard first, then build the optimizer. ``fully_shard`` replaces every parameter
with a DTensor parameter; an optimizer built before would update the old, unused tensors.
paramwise reads roles and shapes from the module tree and the DTensors' *global* shapes, so the
groups are the same as for the unsharded model, whatever the shards look like (uneven, empty).
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

import paramwise


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 32, heads: int = 4, layers: int = 3,
                 ctx: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t))
        mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def batch(step: int, rank: int, size: int = 8, ctx: int = 16, vocab: int = 64):
    """A learnable toy language: each token is (3·previous + 1) mod vocab."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    start = torch.randint(0, vocab, (size, 1), generator=g)
    seq = [start]
    for _ in range(ctx):
        seq.append((3 * seq[-1] + 1) % vocab)
    seq = torch.cat(seq, dim=1)
    return seq[:, :-1], seq[:, 1:]


def rules() -> list:
    return [
        paramwise.no_decay(),                                   # bias | norm | embedding
        paramwise.Rule("blocks.*.mlp.*.weight", l1=1e-3),       # proximal L1 (default prox)
        paramwise.layer_decay(0.8),                             # lr_mult = 0.8 ** (depth gap)
    ]


def init_distributed() -> tuple[int, int]:
    if "RANK" not in os.environ:  # plain `python examples/torchrun_fsdp.py`: one process
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1)
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--save", default=None, help="directory for a DCP checkpoint at the end")
    args = parser.parse_args(argv)

    rank, world = init_distributed()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)  # the same initial weights on every rank
    model = TinyLM()
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)

    opt = paramwise.optimizer(model, "adamw", rules(), lr=args.lr, weight_decay=0.1)
    l1_groups = [i for i, g in enumerate(opt.param_groups) if g.get("l1")]
    if rank == 0:
        print(paramwise.report(opt), flush=True)

    for step in range(1, args.steps + 1):
        x, y = batch(step, rank)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        per_group = paramwise.stats(opt)  # global counts over all shards: every rank calls it
        zeros = (sum(per_group[i]["zeros"] for i in l1_groups)
                 / sum(per_group[i]["numel"] for i in l1_groups))
        if rank == 0:
            print(f"step {step:3d}  loss {mean_loss.item() / world:.4f}  "
                  f"mlp zeros {100 * zeros:5.1f}%", flush=True)

    if args.save:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        dcp.save({"model": get_model_state_dict(model), "optim": paramwise.state_dict(opt)},
                 checkpoint_id=args.save)
        if rank == 0:
            print(f"saved {args.save} (resume with paramwise.load_dcp(opt, path))")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
