"""The lasso problem the regularizer reference tests share: 200 × 50, 10 true coefficients,
noise 0.5 (float64), and scikit-learn's solution of it."""

import torch

F64 = torch.float64
N, D, ALPHA = 200, 50, 0.1


def lasso_data(n: int = N, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.zeros(d, dtype=F64)
    w[:10] = 2 * torch.randn(10, generator=g, dtype=F64)
    return X, X @ w + 0.5 * torch.randn(n, generator=g, dtype=F64)


def sklearn_lasso(X: torch.Tensor, y: torch.Tensor, alpha: float = ALPHA):
    from sklearn.linear_model import Lasso

    return Lasso(alpha=alpha, fit_intercept=False, tol=1e-14,
                 max_iter=100_000).fit(X.numpy(), y.numpy()).coef_
