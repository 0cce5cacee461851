"""The demo's three experiments. Each returns plain numbers; rendering lives in ``render.py``.

1. :func:`bias_decay` — weight decay on every parameter vs. on weights only (one rule,
   :func:`paramwise.no_decay`), swept over λ, on far-from-origin clusters and on digits.
2. :func:`l1_sparsity` — L1 written as a loss term vs. paramwise's proximal ``l1``, with SGD and
   with Adam: test accuracy against the fraction of exactly-zero weights.
3. :func:`group_lasso_pixels` — ``group_lasso`` over the first layer's input columns: which of
   the 64 pixels survive.

    >>> res = bias_decay(QUICK, tick=lambda label: None)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import api
from ..grouping import rules
from ._train import Data, accuracy, clusters, digits, fit, mlp, zero_fraction

__all__ = ["Settings", "FULL", "QUICK", "BiasResult", "L1Result", "GroupResult",
           "bias_decay", "l1_sparsity", "group_lasso_pixels", "count_runs"]

Tick = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """How much each experiment trains: the full run and ``--quick`` differ only here."""

    seeds: tuple[int, ...]
    bias_lams: tuple[float, ...]
    clusters_steps: int
    digits_steps: int
    l1_lams: tuple[float, ...]
    l1_steps: int
    group_lams: tuple[float, ...]
    group_steps: int
    batch: int = 128


FULL = Settings(seeds=(0, 1, 2), bias_lams=(0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                clusters_steps=400, digits_steps=300,
                l1_lams=(1e-4, 3e-4, 1e-3, 3e-3), l1_steps=1500,
                group_lams=(0.0, 3e-4, 1e-3, 3e-3, 6e-3), group_steps=1500)
QUICK = Settings(seeds=(0,), bias_lams=(0.0, 1e-2, 3e-2),
                 clusters_steps=200, digits_steps=150,
                 l1_lams=(3e-4, 3e-3), l1_steps=400,
                 group_lams=(0.0, 1e-3), group_steps=400)

OPTIMIZERS = {"SGD": ("sgd", {"lr": 0.1, "momentum": 0.9}), "Adam": ("adam", {"lr": 3e-3})}
GROUP_OPTIMIZER = ("sgd", {"lr": 0.03, "momentum": 0.9})
L1_METHODS = ("loss term", "proximal")
#: |w| below this counts as "near zero" (to show the loss term's weights hover around 0).
NEAR_ZERO = 1e-3


def count_runs(s: Settings, parts: set[int]) -> int:
    """How many training runs the chosen parts make (the progress bar's total)."""
    n = 0
    if 1 in parts:
        n += 2 * 2 * len(s.bias_lams) * len(s.seeds)
    if 2 in parts:
        n += len(OPTIMIZERS) * (1 + len(L1_METHODS) * len(s.l1_lams))
    if 3 in parts:
        n += len(s.group_lams)
    return n


# ------------------------------------------------------------------------------- part 1
@dataclass
class BiasResult:
    """Mean train/test accuracy over seeds, per decay mode and λ, for one task."""

    task: str
    about: str
    excluded: str  # what no_decay() takes out of decay in this model, in words
    lams: list[float]
    train: dict[str, list[float]] = field(default_factory=dict)
    test: dict[str, list[float]] = field(default_factory=dict)


BIAS_MODES = {"every parameter": [], "weights only": [rules.no_decay()]}


def bias_decay(s: Settings, tick: Tick) -> list[BiasResult]:
    """SGD (momentum 0.9, lr 0.1/0.05, full batch) with coupled ``weight_decay=λ`` on every
    parameter vs. with ``paramwise.no_decay()`` (biases, norm layers, embeddings at 0)."""
    tasks: list[tuple[Data, str, str, dict, int]] = [
        (clusters(), "3 clusters around (5, 5), MLP 2-16-3 without norm layers", "biases",
         {"lr": 0.05}, s.clusters_steps),
        (digits(), "pixels in [0, 1], MLP 64-64-10", "biases", {"lr": 0.1}, s.digits_steps),
    ]
    out = []
    for data, about, excluded, hyper, steps in tasks:
        res = BiasResult(data.name, about, excluded, list(s.bias_lams))
        for mode, mode_rules in BIAS_MODES.items():
            res.train[mode], res.test[mode] = [], []
            for lam in s.bias_lams:
                tr = te = 0.0
                for seed in s.seeds:
                    hidden = [16] if data.name == "clusters" else [64]
                    model = mlp([data.n_features, *hidden, data.n_classes], seed=seed)
                    opt = api.optimizer(model, "sgd", mode_rules, momentum=0.9,
                                        weight_decay=lam, **hyper)
                    fit(model, opt, data, steps=steps, seed=seed)
                    tr += accuracy(model, data.x_train, data.y_train)
                    te += accuracy(model, data.x_test, data.y_test)
                    tick(f"part 1: {data.name}, decay on {mode}, λ={lam:g}")
                res.train[mode].append(tr / len(s.seeds))
                res.test[mode].append(te / len(s.seeds))
        out.append(res)
    return out


# ------------------------------------------------------------------------------- part 2
@dataclass
class L1Result:
    """Per (optimizer, method): λ, test accuracy and the fraction of exactly-zero weights."""

    lams: list[float]
    baseline: dict[str, float] = field(default_factory=dict)  # optimizer -> acc without L1
    acc: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    zeros: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    near: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # |w| < NEAR_ZERO


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if n.endswith("weight")]


def l1_sparsity(s: Settings, tick: Tick) -> L1Result:
    """Digits MLP 64-64-10, mini-batches of ``s.batch``. *loss term*: the plain optimizer on
    ``CE + λ·Σ|w|`` (weights only). *proximal*: ``Rule("weight", l1=λ)`` — paramwise soft-
    thresholds after each step, in the optimizer's own scaling for Adam."""
    data = digits()
    res = L1Result(list(s.l1_lams))
    seed = s.seeds[0]
    for opt_label, (name, hyper) in OPTIMIZERS.items():
        model = mlp([64, 64, 10], seed=seed)
        fit(model, api.optimizer(model, name, **hyper), data, steps=s.l1_steps,
            batch=s.batch, seed=seed)
        res.baseline[opt_label] = accuracy(model, data.x_test, data.y_test)
        tick(f"part 2: {opt_label}, no L1")
        for method in L1_METHODS:
            key = (opt_label, method)
            res.acc[key], res.zeros[key], res.near[key] = [], [], []
            for lam in s.l1_lams:
                model = mlp([64, 64, 10], seed=seed)
                if method == "loss term":
                    weights = _weights(model)
                    opt = api.optimizer(model, name, **hyper)

                    def penalty(ws=weights, lam=lam):
                        return lam * sum(w.abs().sum() for w in ws)
                else:
                    opt = api.optimizer(model, name, [rules.Rule("weight", l1=lam)], **hyper)
                    penalty = None
                fit(model, opt, data, steps=s.l1_steps, batch=s.batch, penalty=penalty,
                    seed=seed)
                res.acc[key].append(accuracy(model, data.x_test, data.y_test))
                res.zeros[key].append(zero_fraction(_weights(model)))
                res.near[key].append(zero_fraction(
                    torch.where(w.abs() < NEAR_ZERO, 0.0, 1.0) for w in _weights(model)))
                tick(f"part 2: {opt_label}, L1 as {method}, λ={lam:g}")
    return res


# ------------------------------------------------------------------------------- part 3
@dataclass
class GroupResult:
    """Per λ: test accuracy, the 8×8 map of surviving input pixels, and their count."""

    lams: list[float]
    acc: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    masks: list[list[list[float]]] = field(default_factory=list)  # column norms, 8×8


def group_lasso_pixels(s: Settings, tick: Tick) -> GroupResult:
    """Digits MLP 64-64-10 with SGD (lr 0.03, momentum 0.9), mini-batches;
    ``Rule("0.weight", group_lasso=λ, group_dim=1)``: one group
    per input column of the first layer (one pixel), proximal block soft-threshold. A pixel
    survives when its column is not exactly zero."""
    data = digits()
    res = GroupResult(list(s.group_lams))
    seed = s.seeds[0]
    name, hyper = GROUP_OPTIMIZER
    for lam in s.group_lams:
        model = mlp([64, 64, 10], seed=seed)
        rule = [rules.Rule("0.weight", group_lasso=lam, group_dim=1)] if lam > 0 else []
        opt = api.optimizer(model, name, rule, **hyper)
        fit(model, opt, data, steps=s.group_steps, batch=s.batch, seed=seed)
        w = model[0].weight.detach()
        norms = w.norm(dim=0)
        res.acc.append(accuracy(model, data.x_test, data.y_test))
        res.kept.append(int((norms > 0).sum()))
        res.masks.append(norms.reshape(8, 8).tolist())
        tick(f"part 3: group lasso, λ={lam:g}")
    return res
