"""The Muon + AdamW hybrid under Lightning and the Hugging Face Trainer: both train it as the
optimizer they were given, their schedules reach every part, and regularizers run per part."""

import importlib.util
import pathlib
import tempfile

import pytest
import torch
from torch import nn

import paramwise
from paramwise import Rule

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(relpath):
    spec = importlib.util.spec_from_file_location(relpath.replace("/", "_")[:-3],
                                                  EXAMPLES / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_lightning_trains_the_hybrid():
    L = pytest.importorskip("lightning")
    ex = load("lightning_example.py")

    class Blocks(ex.Classifier):
        def __init__(self):
            super().__init__(steps=10)
            self.backbone = nn.Linear(16, 32)
            self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32))
                                         for _ in range(3)])
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            x = self.backbone(x)
            for b in self.blocks:
                x = x + b(x)
            return self.head(x)

        def configure_optimizers(self):
            opt = paramwise.optimizer(self, "adamw", [paramwise.no_decay(),
                                                      paramwise.hidden_matrices()],
                                      lr=3e-3, weight_decay=0.05)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    L.seed_everything(0, verbose=False)
    model = Blocks()
    x, y = next(iter(ex.data()))
    before = model.loss_fn(model(x), y).item()
    trainer = L.Trainer(max_steps=10, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, ex.data())
    opt = trainer.optimizers[0]
    assert isinstance(opt, paramwise.Hybrid)
    muon = opt.part("muon")
    assert muon.param_groups[0]["param_names"] == [f"blocks.{i}.1.weight" for i in range(3)]
    assert muon.param_groups[0]["lr"] < 3e-3  # the cosine schedule reached the Muon part
    assert all(len(muon.state[p]) for p in muon.param_groups[0]["params"])  # it stepped
    assert model.loss_fn(model(x), y).item() < before


def test_hf_trainer_trains_the_hybrid(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    ex = load("hf_trainer_example.py")
    model = ex.build_model()
    fresh = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay(), paramwise.hidden_matrices()],
                              lr=1e-3, weight_decay=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=6, per_device_train_batch_size=16,
                                 learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=0,
                                 logging_strategy="no", save_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True, seed=0,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=ex.Toy(), optimizers=(opt, None))
        out = trainer.train()
    assert out.global_step == 6
    # the Trainer's linear schedule drove every group of every part to 0
    assert all(g["lr"] == pytest.approx(0.0) for o in opt.optimizers for g in o.param_groups)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert q in opt.part("muon").param_groups[0]["param_names"]
    now = dict(model.named_parameters())
    assert not torch.equal(now[q], fresh[q])


def test_regularizers_run_per_part_with_the_parts_own_step():
    """l1 on the AdamW part of a hybrid = paramwise's l1 on a plain AdamW over those params."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ModuleList([nn.Linear(8, 8) for _ in range(2)]),
                        nn.Linear(8, 1))
    ref = nn.Sequential(nn.Linear(6, 8), nn.ModuleList([nn.Linear(8, 8) for _ in range(2)]),
                        nn.Linear(8, 1))
    ref.load_state_dict(net.state_dict())

    def run(model, opt, steps=15):
        for t in range(steps):
            g = torch.Generator().manual_seed(t)
            x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)
            opt.zero_grad()
            h = model[0](x)
            for b in model[1]:
                h = h + torch.tanh(b(h))
            nn.functional.mse_loss(model[2](h), y).backward()
            opt.step()

    rules = [Rule("0.weight", l1=0.05), Rule("1.*.weight", optimizer="muon", lr=0.02)]
    opt = paramwise.optimizer(net, "adamw", rules, lr=0.01, weight_decay=0.0)
    # the reference: the same AdamW groups with l1, and torch's Muon beside it
    adamw = paramwise.optimizer(
        nn.ModuleDict({"0": ref[0], "2": ref[2]}), "adamw",
        [Rule("0.weight", l1=0.05)], lr=0.01, weight_decay=0.0)
    # the hybrid's Muon part takes the defaults Muon accepts (weight_decay=0.0 here)
    muon = torch.optim.Muon([ref[1][0].weight, ref[1][1].weight], lr=0.02, weight_decay=0.0)

    class Pair:
        def zero_grad(self):
            adamw.zero_grad()
            muon.zero_grad()
            for b in ref[1]:
                b.bias.grad = None

        def step(self):
            adamw.step()
            muon.step()

    # biases of the blocks are AdamW's in the hybrid: give the reference the same
    adamw.add_param_group({"params": [ref[1][0].bias, ref[1][1].bias],
                           "param_names": ["1.0.bias", "1.1.bias"]})
    run(net, opt)
    run(ref, Pair())
    for (n, a), b in zip(ref.named_parameters(), net.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=n)
    assert (net[0].weight == 0).sum() > 0  # the l1 prox made exact zeros in the AdamW part
