"""Audit the optimizer Hugging Face ``Trainer`` builds, before training starts.

Two ways, both on a tiny BERT built from a config (nothing is downloaded):

* the one-liner, on the optimizer the Trainer would build::

      print(paramwise.audit(trainer.model, trainer.create_optimizer()))

  (with ``weight_decay=0.01`` the Trainer decays BERT's three embedding tables, 15% of this
  model's elements);
* :class:`AuditCallback`, a ``TrainerCallback`` whose ``on_train_begin`` audits the optimizer
  and scheduler the Trainer actually trains with (whoever built them) and prints the report, or
  stops before the first step with ``strict=True``.

    python examples/hf_audit.py          # a few seconds on a CPU
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
    TrainerCallback,
    TrainingArguments,
)

import paramwise  # noqa: E402


class AuditCallback(TrainerCallback):
    """Audit the Trainer's optimizer once, when training begins.

    ``strict=True`` raises :class:`paramwise.ParamwiseError` on findings (before any step);
    ``ignore`` lists finding kinds that are deliberate. The report is kept in ``self.report``.
    """

    def __init__(self, *, strict: bool = False, ignore: tuple[str, ...] = ()) -> None:
        self.strict, self.ignore = strict, ignore
        self.report: paramwise.AuditReport | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None,
                       lr_scheduler=None, **kwargs):
        self.report = paramwise.audit(model, optimizer, scheduler=lr_scheduler,
                                      ignore=self.ignore)
        if state.is_world_process_zero:
            print(self.report)
        if self.strict and not self.report.ok:
            raise paramwise.ParamwiseError(
                f"the optimizer has {len(self.report.findings)} audit finding(s) "
                f"({', '.join(self.report.kinds())})",
                fix="fix them (each finding names its rule), or pass "
                "AuditCallback(ignore=(kind, ...)) for deliberate ones")


class Toy(Dataset):
    """Sequences whose label is whether token 7 occurs."""

    def __init__(self, n: int = 64, length: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, 64, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.ids[self.labels == 1, 0] = 7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def build_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2, max_position_embeddings=32))


def _args(out: str, steps: int) -> TrainingArguments:
    return TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=1e-3, weight_decay=0.01, logging_strategy="no",
                             save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0)


def main(steps: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # 1. The one-liner, on the Trainer's own optimizer.
        trainer = Trainer(model=build_model(), args=_args(tmp, steps))
        hf_report = paramwise.audit(trainer.model, trainer.create_optimizer())
        print("HF Trainer's optimizer:")
        print(hf_report)

        # 2. The callback, with a paramwise optimizer: nothing to report, training runs.
        model = build_model()
        opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-3,
                                  weight_decay=0.01)
        callback = AuditCallback(strict=True)
        print("\nparamwise optimizer, audited by the callback at on_train_begin:")
        Trainer(model=model, args=_args(tmp, steps), train_dataset=Toy(),
                optimizers=(opt, None), callbacks=[callback]).train()
    return {"hf": hf_report, "callback": callback.report}


if __name__ == "__main__":
    main()
