"""PyTorch Lightning: ``configure_optimizers`` returns a paramwise optimizer and a scheduler.

Lightning gets a plain ``torch.optim.AdamW``; paramwise only decided its param groups (no decay on
biases and norms, a 10x learning rate for the new head). The cosine scheduler scales every
group's lr, so the 10x ratio holds all along.

    python examples/lightning_example.py          # a few seconds on a CPU
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import paramwise


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 3e-3, steps: int = 20) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU())
        self.head = nn.Linear(32, 4)
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        optimizer = paramwise.optimizer(self, "adamw", [
            paramwise.no_decay(),                          # biases, LayerNorm: weight_decay 0
            paramwise.Rule("module:head", lr_mult=10),     # the new head learns 10x faster
        ], lr=self.hparams.lr, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                               T_max=2 * self.hparams.steps)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data(n: int = 256, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()  # a learnable rule
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def main(steps: int = 20) -> dict:
    """Train for ``steps`` steps; return the trainer's optimizer, its lrs and the losses."""
    L.seed_everything(0, verbose=False)
    model = Classifier(steps=steps)
    loader = data()
    with torch.no_grad():
        x, y = next(iter(data()))
        before = model.loss_fn(model(x), y).item()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
    with torch.no_grad():
        after = model.loss_fn(model(x), y).item()
    opt = trainer.optimizers[0]
    print(paramwise.report(opt))
    print(f"loss {before:.3f} -> {after:.3f}")
    return {"optimizer": opt, "lrs": [g["lr"] for g in opt.param_groups],
            "loss_before": before, "loss_after": after}


if __name__ == "__main__":
    main()
