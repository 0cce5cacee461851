"""Hydra/OmegaConf: a config group (``conf/optim/*.yaml``) builds the optimizer with
``paramwise.from_config(model, cfg.optim)``. Switch or edit it from the command line::

    python examples/hydra_example/train.py
    python examples/hydra_example/train.py optim=sgd optim.rules.sparse_inputs.l1=1e-2
    python examples/hydra_example/train.py optim.rules.head.lr_mult=3 '~optim.rules.no_decay'

:func:`train` takes a composed config, so it also runs without the command line (see
``tests/test_integrations.py``, which composes configs with ``hydra.compose``).

Hydra's record of each run (``.hydra/`` with the composed config, ``train.log``) goes under the
system's temp directory, not ``./outputs`` (``hydra.run.dir`` in ``conf/config.yaml``), so a run
from a checkout leaves the repository as it was.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

import paramwise


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, width), nn.LayerNorm(width), nn.ReLU())
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    model = Net(cfg.model.width)
    opt = paramwise.from_config(model, cfg.optim)   # the whole optimizer config, checked
    print(paramwise.report(opt))
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(256, 16, generator=g)
    y = x[:, :2].sum(1, keepdim=True)               # only inputs 0 and 1 matter
    losses = []
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {"model": model, "optimizer": opt, "losses": losses}


@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="config",
            version_base=None)
def main(cfg: DictConfig) -> None:
    train(cfg)
    # Hydra's record of the run (composed config, overrides, log): under the temp directory,
    # not the repository (see hydra.run.dir in conf/config.yaml)
    print(f"hydra run directory: {HydraConfig.get().runtime.output_dir}")


if __name__ == "__main__":
    main()
