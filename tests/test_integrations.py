"""The examples under examples/ run, and do what they say, with Lightning, the Hugging Face
Trainer, Hydra/OmegaConf and a plain AMP loop. Each needs its library (the `integrations`
extra, which CI installs); without it the test is skipped."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import paramwise

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(relpath: str):
    """Import an example file as a module (without running its ``__main__`` block)."""
    path = EXAMPLES / relpath
    name = "example_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def lrs_by_name(opt):
    return {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}


def test_amp_loop_with_grad_scaler_scheduler_and_regularizers(capsys):
    ex = load("amp_loop.py")
    res = ex.main(steps=60, accumulate=2, device="cpu")
    losses = res["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 5, losses
    assert res["zero_fraction"] > 0.5                  # proximal l1 through GradScaler.step
    assert {0, 1, 2, 3} <= set(res["inputs_used"])     # the inputs that matter survive
    assert res["max_row_norm"] <= 0.5 + 1e-6           # max_norm projection held
    wd = {n: g["weight_decay"] for g in res["optimizer"].param_groups for n in g["param_names"]}
    assert wd["0.bias"] == 0.0 and wd["1.weight"] == 0.0 and wd["3.weight"] == 0.01
    assert "exact zeros" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_lightning_configure_optimizers(capsys):
    pytest.importorskip("lightning")
    ex = load("lightning_example.py")
    res = ex.main(steps=20)
    opt = res["optimizer"]
    assert type(opt) is torch.optim.AdamW            # Lightning trained the optimizer we built
    lr = lrs_by_name(opt)
    assert lr["head.weight"] == pytest.approx(10 * lr["backbone.0.weight"])  # ratio kept ...
    assert lr["backbone.0.weight"] < 3e-3             # ... while the scheduler lowered both
    wd = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert wd["backbone.1.weight"] == 0.0 and wd["backbone.0.weight"] == 0.05
    assert res["loss_after"] < res["loss_before"]


def test_hf_trainer_with_a_paramwise_optimizer(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ex = load("hf_trainer_example.py")
    fresh = ex.build_model().state_dict()
    res = ex.main(steps=8, output_dir=str(tmp_path))
    trainer, opt = res["trainer"], res["optimizer"]
    assert trainer.optimizer is opt or getattr(trainer.optimizer, "optimizer", None) is opt
    assert res["result"].global_step == 8
    # The Trainer's linear schedule drove our groups (to 0 at max_steps) from the rules' lrs.
    assert all(g["lr"] == pytest.approx(0.0) for g in opt.param_groups)
    initial = {n: g["initial_lr"] for g in opt.param_groups for n in g["param_names"]}
    assert initial["classifier.weight"] == pytest.approx(1e-3)
    assert initial["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-3 * 0.8)
    assert initial["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(1e-3 * 0.8 ** 2)
    assert initial["bert.embeddings.word_embeddings.weight"] == pytest.approx(1e-3 * 0.8 ** 3)
    wd = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert wd["bert.encoder.layer.0.attention.output.LayerNorm.weight"] == 0.0
    assert wd["bert.encoder.layer.0.attention.self.query.weight"] == 0.01
    trained = trainer.model.state_dict()
    assert not torch.equal(trained["classifier.weight"], fresh["classifier.weight"])
    assert not os.listdir(tmp_path) or all(not p.endswith(".safetensors")
                                           for p in os.listdir(tmp_path))


@pytest.fixture
def hydra_compose():
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def make(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(EXAMPLES / "hydra_example" / "conf"),
                                   version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    yield make
    GlobalHydra.instance().clear()


def test_hydra_config_group_builds_the_optimizer(hydra_compose, capsys):
    ex = load("hydra_example/train.py")
    res = ex.train(hydra_compose())
    opt = res["optimizer"]
    assert type(opt) is torch.optim.AdamW
    lr = lrs_by_name(opt)
    assert lr["head.weight"] == pytest.approx(10 * lr["body.0.weight"])
    assert res["losses"][-1] < res["losses"][0] / 5


def test_hydra_overrides_switch_optimizer_and_edit_rules_by_name(hydra_compose, capsys):
    ex = load("hydra_example/train.py")
    cfg = hydra_compose("optim=sgd", "optim.rules.sparse_inputs.l1=1e-2", "~optim.rules.no_decay")
    res = ex.train(cfg)
    opt = res["optimizer"]
    assert type(opt) is torch.optim.SGD
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}   # no_decay was removed
    first = res["model"].body[0].weight
    assert next(g for g in opt.param_groups if "body.0.weight" in g["param_names"])["l1"] == 1e-2
    assert (first == 0).float().mean() > 0.25                     # proximal l1: exact zeros
    assert first[:, :2].abs().sum() > 0                            # the two useful inputs stay


def test_hydra_typos_reach_the_user_as_paramwise_errors(hydra_compose):
    ex = load("hydra_example/train.py")
    with pytest.raises(paramwise.ParamwiseError, match=r"rules\.head \('module:head'\) sets "
                       r"unknown option 'lr_mul' for AdamW \(did you mean 'lr_mult'\?\)"):
        ex.train(hydra_compose("+optim.rules.head.lr_mul=3"))


def test_hydra_main_entry_point_runs(hydra_compose, monkeypatch, tmp_path, capsys):
    ex = load("hydra_example/train.py")
    monkeypatch.setattr(sys, "argv", ["train.py", "steps=3", f"hydra.run.dir={tmp_path}",
                                      "hydra/job_logging=disabled",
                                      "hydra/hydra_logging=disabled"])
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    ex.main()
    assert "loss" in capsys.readouterr().out
