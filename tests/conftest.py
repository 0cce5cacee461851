"""Shared pytest configuration.

Multi-process tests (real ``torch.distributed`` jobs on CPU/gloo) carry ``@pytest.mark.distributed``;
deselect them with ``pytest -m "not distributed"``.
"""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "distributed: spawns real multi-process torch.distributed jobs (gloo, 127.0.0.1); "
        "deselect with -m 'not distributed'",
    )
