"""paramwise: declarative, checked, explainable per-parameter optimizer settings for PyTorch.

    >>> import torch.nn as nn, paramwise
    >>> model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))
    >>> opt = paramwise.optimizer(model, "sgd", [paramwise.no_decay()],
    ...                           lr=1e-2, momentum=0.9, weight_decay=1e-5)
    >>> print(paramwise.report(opt))  # doctest: +SKIP
"""

from .api import optimizer, param_groups, penalty, stats
from .audit import AuditReport, audit
from .config import from_config
from .errors import ParamwiseError
from .grouping.hidden import hidden_matrices
from .grouping.layerdecay import layer_decay
from .grouping.roles import register_norm, register_wrapper
from .grouping.rules import Rule, no_decay
from .grouping.selectors import Selector, parse
from .hybrid import Hybrid
from .report import Report, explain, report
from .state.checkpoint import LoadReport, load_state_dict, state_dict
from .state.dcp import load_dcp
from .step.hooks import attach
from .step.prox import register_scaling

__all__ = [
    "AuditReport",
    "Hybrid",
    "LoadReport",
    "ParamwiseError",
    "Report",
    "Rule",
    "Selector",
    "attach",
    "audit",
    "explain",
    "from_config",
    "hidden_matrices",
    "layer_decay",
    "load_dcp",
    "load_state_dict",
    "no_decay",
    "optimizer",
    "param_groups",
    "parse",
    "penalty",
    "register_norm",
    "register_scaling",
    "register_wrapper",
    "report",
    "state_dict",
    "stats",
]

__version__ = "0.1.0"
