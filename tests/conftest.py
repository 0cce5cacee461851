"""Shared pytest configuration.

Multi-process tests (real ``torch.distributed`` jobs on CPU/gloo) carry ``@pytest.mark.distributed``;
deselect them with ``pytest -m "not distributed"``.
"""


import pytest


@pytest.fixture(scope="session")
def data():
    """The shared lasso problem ``(X, y)`` (tests/_lasso.py), built once per run."""
    from _lasso import lasso_data

    return lasso_data()


@pytest.fixture(scope="session")
def lasso(data):
    """scikit-learn's solution of that problem at ALPHA (the reference the fits must reach)."""
    pytest.importorskip("sklearn.linear_model")
    from _lasso import sklearn_lasso

    return sklearn_lasso(*data)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "distributed: spawns real multi-process torch.distributed jobs (gloo, 127.0.0.1); "
        "deselect with -m 'not distributed'",
    )
