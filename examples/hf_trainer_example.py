"""Hugging Face ``Trainer`` with a paramwise optimizer: ``Trainer(..., optimizers=(opt, None))``.

The recipe BERT fine-tuning uses — no weight decay on biases and LayerNorm, layer-wise lr decay
from the head down to the embeddings — as two paramwise rules instead of the Trainer's built-in
name matching. The Trainer adds its own lr schedule on top (``None`` in the tuple), which scales
every group alike. The model is a tiny BERT built from a config: nothing is downloaded.

    python examples/hf_trainer_example.py         # a few seconds on a CPU
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import paramwise  # noqa: E402


class Toy(Dataset):
    """Sequences whose label is whether token 7 occurs: learnable in a few steps."""

    def __init__(self, n: int = 128, length: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, 64, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        pos = torch.randint(0, length, (n,), generator=g)
        self.ids[self.labels == 1, pos[self.labels == 1]] = 7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def build_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=2,
                        max_position_embeddings=32)
    return BertForSequenceClassification(config)


def main(steps: int = 30, output_dir: str | None = None) -> dict:
    model = build_model()
    opt = paramwise.optimizer(model, "adamw", [
        paramwise.no_decay(),          # biases, LayerNorm, embeddings: weight_decay 0
        paramwise.layer_decay(0.8),    # head at lr, each block below x0.8, embeddings lowest
    ], lr=1e-3, weight_decay=0.01)
    print(paramwise.report(opt))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=output_dir or tmp, max_steps=steps,
                                 per_device_train_batch_size=16, learning_rate=1e-3,
                                 lr_scheduler_type="linear", warmup_steps=0,
                                 logging_strategy="no", save_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True, seed=0,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=Toy(),
                          optimizers=(opt, None))
        out = trainer.train()
    print(f"trained {out.global_step} steps, mean loss {out.training_loss:.3f}")
    return {"trainer": trainer, "optimizer": opt, "result": out}


if __name__ == "__main__":
    main()
