"""The demo's data, models and training loop: small, seeded, CPU-only.

    >>> import paramwise
    >>> data = digits()                                   # doctest: +SKIP
    >>> model = mlp([64, 64, 10], seed=0)
    >>> opt = paramwise.optimizer(model, "sgd", [paramwise.no_decay()], lr=0.1, weight_decay=1e-2)
    >>> fit(model, opt, data, steps=300)                  # doctest: +SKIP
    >>> accuracy(model, data.x_test, data.y_test)         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParamwiseError

__all__ = ["Data", "digits", "clusters", "mlp", "fit", "accuracy", "zero_fraction"]


@dataclass(frozen=True)
class Data:
    """A classification task split into train and test tensors."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(self.y_train.max()) + 1


def _sklearn():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ParamwiseError("the demo needs scikit-learn (for its bundled digits data)",
                             fix="pip install 'paramwise[demo]'") from e
    return load_digits, train_test_split


def digits(seed: int = 0, test_size: float = 0.25) -> Data:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the package), pixels
    scaled to [0, 1] and *not* centred: every input is ≥ 0. Stratified split, fixed seed."""
    load_digits, train_test_split = _sklearn()
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=test_size,
                                          random_state=seed, stratify=d.target)

    def f(a):
        return torch.tensor(a, dtype=torch.float32)

    return Data("digits", f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte))


def clusters(seed: int = 0, n: int = 600, spread: float = 0.6) -> Data:
    """Three Gaussian clusters in 2-D centred around (5, 5), far from the origin, so every
    decision boundary must sit away from 0 (half train, half test)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[4.0, 4.0], [6.0, 4.0], [5.0, 6.0]])
    y = torch.randint(0, len(centers), (n,), generator=g)
    x = centers[y] + spread * torch.randn(n, 2, generator=g)
    h = n // 2
    return Data("clusters", x[:h], y[:h], x[h:], y[h:])


def mlp(sizes: list[int], *, seed: int = 0) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` with seeded initialisation (``0.weight`` is the first
    layer's weight)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def fit(model: nn.Module, opt: torch.optim.Optimizer, data: Data, *, steps: int,
        batch: int | None = None, penalty: Callable[[], torch.Tensor] | None = None,
        seed: int = 0) -> None:
    """``steps`` optimizer steps of cross-entropy (+ ``penalty()`` when given), full batch or
    seeded mini-batches of ``batch`` samples drawn with replacement."""
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    x, y = data.x_train, data.y_train
    model.train()
    for _ in range(steps):
        if batch:
            idx = torch.randint(0, len(x), (batch,), generator=g)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def zero_fraction(tensors: Iterable[torch.Tensor]) -> float:
    """Fraction of elements that are exactly 0.0 (not merely small)."""
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(total, 1)
