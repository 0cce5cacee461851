"""A plain training loop with mixed precision (``torch.amp``), ``GradScaler``, gradient clipping
and a scheduler, on a paramwise optimizer that also carries regularizers.

paramwise's regularization runs inside ``optimizer.step()`` (step hooks), so it sees the
*unscaled* gradients that ``scaler.step`` hands over, runs once per step however many
micro-batches were accumulated, and is skipped on a step the scaler skips. Runs on CUDA with
float16 when available, else on the CPU with bfloat16.

    python examples/amp_loop.py
"""

from __future__ import annotations

import torch
from torch import nn

import paramwise


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 64),
                         nn.ReLU(), nn.Linear(64, 1))


def main(steps: int = 60, accumulate: int = 2, device: str | None = None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    model = build().to(device)
    opt = paramwise.optimizer(model, "adamw", [
        paramwise.no_decay(),
        paramwise.Rule("0.weight", l1=3e-2),   # proximal L1 on the input layer: exact zeros
        paramwise.Rule("3.weight", max_norm=0.5),  # every row of layer 3 kept at norm <= 0.5
    ], lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=steps)
    scaler = torch.amp.GradScaler(device)
    g = torch.Generator().manual_seed(0)
    true_w = torch.zeros(32)
    true_w[:4] = torch.tensor([2.0, -1.0, 0.5, 1.5])  # only 4 of 32 inputs matter
    losses = []
    for _ in range(steps):
        for _ in range(accumulate):
            x = torch.randn(64, 32, generator=g)
            y = (x @ true_w).unsqueeze(1) + 0.05 * torch.randn(64, 1, generator=g)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device_type=device, dtype=dtype):
                loss = nn.functional.mse_loss(model(x).float(), y) / accumulate
            scaler.scale(loss).backward()
        scaler.unscale_(opt)                     # clip the true gradients
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)                         # regularizers run inside, on unscaled grads
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item() * accumulate)
    w0 = model[0].weight.detach()
    result = {
        "optimizer": opt,
        "losses": losses,
        "zero_fraction": (w0 == 0).float().mean().item(),
        "inputs_used": sorted(torch.nonzero(w0.abs().sum(0)).flatten().tolist()),
        "max_row_norm": model[3].weight.detach().norm(dim=1).max().item(),
    }
    print(paramwise.report(opt))
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; first layer {result['zero_fraction']:.0%} "
          f"exact zeros, reading inputs {result['inputs_used']} (inputs 0-3 matter); "
          f"largest row norm of layer 3: {result['max_row_norm']:.3f} (<= 0.5)")
    return result


if __name__ == "__main__":
    main()
