r"""Everything a regularized step needs, checked before the first parameter changes.

The step pre-hook of :func:`paramwise.attach` runs :meth:`StepCheck.groups` before it adds a
gradient term, sets a gradient aside or lets the optimizer move anything, so a step that cannot
run raises :class:`~paramwise.errors.ParamwiseError` and changes nothing (no parameter, no
optimizer state); a retry raises the same. The same checks run when :func:`paramwise.attach`
is called (:func:`check_attach`) and when a group is added to an attached optimizer with
``add_param_group`` (:func:`check_added`, which also refuses mistyped option keys). Each error
names the param group, the parameter and the fix. For every group that carries a regularizer:

* **values**: strengths finite and ≥ 0 (:func:`paramwise.options.regularization.check_values`); the
  group's ``lr`` finite and ≥ 0 (torch refuses a negative lr when an optimizer is built, not
  when one is set by hand or by a scheduler later);
* **ranges**, in every parameter's dtype: each strength λ, the proximal threshold
  :math:`cλ` (:math:`c` the group's scalar step factor: ``lr``; SGD's
  :math:`\mathrm{lr}(1-d)/(1-μ)`; RMSprop's :math:`\mathrm{lr}/(1-μ)`; the per-element
  factors of Adam and Adagrad are ≤ ``lr``) and the decay :math:`\mathrm{lr}\,λ_d` must not
  exceed the dtype's largest finite value (float16 65504, bfloat16 and float32 3.4e38): beyond
  it a term becomes ``inf`` or torch refuses the threshold halfway through the step;
* **signs**: a negative step factor (SGD with ``dampening > 1``) has no proximal map;
* **shapes**: group lasso needs ≥ 2 dims and ``group_dim`` in range, ``max_norm`` ≥ 1 dim
  and ``max_norm_dim`` in range (:func:`paramwise.options.regularization.check_options`);
* **dtypes**: complex parameters are refused (soft-thresholding has no complex kernel);
* **sparse gradients** (regularized lazily, :mod:`paramwise.step._sparse`): group lasso and
  ``max_norm`` need their rows along dim 0 and a gradient sparse along dim 0 only;
* **step scale**: an adaptive prox with no step scale — SGD/RMSprop with momentum ≥ 1, Rprop,
  LBFGS, Muon (:func:`paramwise.step.prox.scale_problem`; the fix from
  :func:`paramwise.step.prox.scale_fix`).

Cost per group and step: a few comparisons. What the parameters contribute (smallest ndim,
dtypes, complex) is summarized once per group and again only when the group's ``params`` list
is replaced or changes length; gradients are looked at only in groups with group lasso or
``max_norm``. Example::

    >>> w = torch.nn.Parameter(torch.randn(4, 3))
    >>> opt = torch.optim.SGD([{"params": [w], "l1": 1e39}], lr=1.0)
    >>> check_attach(opt)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paramwise.errors.ParamwiseError: param group 0, a parameter of shape (4, 3): l1=1e+39, beyond ...
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ParamwiseError, closest
from ..options.keys import MULTIPLIERS, optimizer_keys
from ..options.regularization import REG_KEYS, check_options, check_values
from ._chunks import as_float as _num
from ._stepcfg import StepCfg, group_label
from .lowering import LOWERED_KEY
from .prox import momentum_scale, per_element, scale_fix, scale_problem, scaling_for

__all__ = ["StepCheck", "check_attach", "check_added", "check_group", "check_sparse",
           "step_factor", "wrap_add_param_group"]

_FMAX: dict[torch.dtype, float] = {}
#: Keys a group may carry besides its optimizer's options and the regularizers.
_OWN = frozenset({"params", "param_names", LOWERED_KEY, "initial_lr"})


def _fmax(dtype: torch.dtype) -> float:
    m = _FMAX.get(dtype)
    if m is None:
        m = _FMAX[dtype] = float(torch.finfo(dtype).max) if dtype.is_floating_point else math.inf
    return m


@dataclass(frozen=True, eq=False)
class Summary:
    """What a group's parameters contribute to its checks (recomputed when ``params``, the
    list object, is replaced or changes length)."""

    params: list
    n: int
    min_ndim: int
    fmax: float          # the smallest largest-finite-value over the group's dtypes
    complex_: bool


def summarize(params: list) -> Summary:
    nd, fm, cx = 64, math.inf, False
    for p in params:
        nd = min(nd, p.ndim)
        if p.is_complex():
            cx = True
        else:
            fm = min(fm, _fmax(p.dtype))
    return Summary(params, len(params), nd, fm, cx)


class StepCheck:
    """The pre-step check of one attached optimizer, with its per-group summaries."""

    def __init__(self) -> None:
        self._summaries: dict[int, Summary] = {}

    def summary(self, group: Mapping[str, Any]) -> Summary:
        ps = group["params"]
        if torch.compiler.is_compiling():
            return summarize(ps)            # static while tracing: no cache to mutate
        s = self._summaries.get(id(group))
        if s is None or s.params is not ps or s.n != len(ps):
            s = self._summaries[id(group)] = summarize(ps)
        return s

    def groups(self, opt: torch.optim.Optimizer, more: str = "; step() was not run"
               ) -> list[tuple[dict, StepCfg]]:
        """Every regularized group of ``opt`` with its :class:`StepCfg`, all checked (the
        present gradients included), or :class:`ParamwiseError` before anything changed."""
        out = []
        for i, g in enumerate(opt.param_groups):
            c = StepCfg.read(i, g)
            if c is not None:
                check_group(opt, i, g, c, self.summary(g), more)
                out.append((g, c))
        if len(self._summaries) > 2 * len(opt.param_groups) + 8:   # groups were removed
            live = {id(g) for g in opt.param_groups}
            self._summaries = {k: v for k, v in self._summaries.items() if k in live}
        check_sparse(opt, out, more)
        return out


def _who(group: Mapping[str, Any], j: int) -> str:
    names = group.get("param_names")
    if names and j < len(names):
        return f"parameter {names[j]!r}"
    return f"a parameter of shape {tuple(group['params'][j].shape)}"


def _dims_ok(ndim: int, dim: Any, need: int) -> bool:
    d = int(dim or 0)
    return ndim >= need and -ndim <= d < ndim


def check_group(opt: torch.optim.Optimizer, i: int, group: dict, cfg: StepCfg,
                summ: Summary, more: str) -> None:
    """Raise :class:`ParamwiseError` if group ``i`` (with ``cfg`` read from it) cannot run a
    step: shapes, dtypes, lr, value ranges, step scale (see the module docstring)."""
    gl, mn = group.get("group_lasso") is not None, group.get("max_norm") is not None
    if summ.complex_ or (gl and not _dims_ok(summ.min_ndim, group.get("group_dim"), 2)) or (
            mn and not _dims_ok(summ.min_ndim, group.get("max_norm_dim"), 1)):
        _shape_error(i, group, more)
    if not (cfg.pre or cfg.post):
        return
    lr = cfg.lr
    if not (lr >= 0 and math.isfinite(lr)):
        raise ParamwiseError(
            f"{group_label(i, group)}: lr={group['lr']!r} is not a finite number >= 0, and "
            f"its regularizers are scaled by lr",
            fix="set the group's lr to a finite value >= 0 (a scheduler or code that set it "
                "by hand)" + more)
    if cfg.prox_on and cfg.adaptive and lr != 0:
        problem = scale_problem(type(opt), group)
        if problem:
            raise ParamwiseError(f"{group_label(i, group)}: {problem}",
                                 fix=scale_fix(type(opt), group) + more)
    lam = max(cfg.l2_grad, cfg.l1_grad, cfg.group_grad, cfg.l2_to_init, cfg.decay,
              cfg.l1_prox, cfg.group_prox, cfg.l2_fold)
    prox_lam = max(cfg.l1_prox, cfg.group_prox, cfg.l2_fold) if cfg.prox_on else 0.0
    c = step_factor(opt, group, cfg) if prox_lam > 0 and lr != 0 else 0.0
    if c < 0:
        raise ParamwiseError(
            f"{group_label(i, group)}: the step scale s = {c:g} of its proximal map is "
            f"negative (SGD's steady-state step lr·(1 - dampening)/(1 - momentum) with "
            f"dampening={group.get('dampening')})",
            fix="use dampening <= 1, or prox_scale='lr' (threshold lr·λ)" + more)
    if max(lam, c * prox_lam, lr * cfg.decay) > summ.fmax:
        _range_error(i, group, cfg, c, more)


def step_factor(opt: torch.optim.Optimizer, group: Mapping[str, Any], cfg: StepCfg) -> float:
    """The scalar :math:`c` a proximal threshold is :math:`cλ` of (or bounded by, per element):
    SGD's steady-state step, RMSprop's ``lr/(1 - momentum)``, else ``lr``."""
    if not cfg.adaptive:
        return cfg.lr
    cls = type(opt)
    rule = scaling_for(cls)
    if rule is not None and not per_element(cls):
        return float(rule(group, cfg.lr, [], opt.state, foreach=False))
    if cls is torch.optim.RMSprop:
        return momentum_scale(cfg.lr, _num(group.get("momentum", 0.0)))
    return cfg.lr


def _shape_error(i: int, group: dict, more: str) -> None:
    opts = {k: group[k] for k in REG_KEYS if k in group}
    for j, p in enumerate(group["params"]):
        problem = check_options(opts, tuple(p.shape))
        if problem is None and p.is_complex():
            problem = "complex parameters are not supported by paramwise regularizers"
            fix = ("soft-thresholding has no complex form: keep complex parameters in a group "
                   "without regularizer options, or regularize a real tensor "
                   "(torch.view_as_real)")
            raise ParamwiseError(f"{group_label(i, group)}, {_who(group, j)}: {problem}",
                                 fix=fix + more)
        if problem:
            raise ParamwiseError(f"{group_label(i, group)}, {_who(group, j)}: {problem}"
                                 + (f" ({more.lstrip('; ')})" if more else ""))


def _range_error(i: int, group: dict, cfg: StepCfg, c: float, more: str) -> None:
    # (key, λ, what multiplies λ in the step: the step scale in a proximal map, lr in the decay)
    terms = [("l2", cfg.l2_grad, 1.0), ("l2", cfg.l2_fold, c), ("l1", cfg.l1_grad, 1.0),
             ("l1", cfg.l1_prox, c), ("group_lasso", cfg.group_grad, 1.0),
             ("group_lasso", cfg.group_prox, c), ("l2_to_init", cfg.l2_to_init, 1.0),
             ("decoupled_decay", cfg.decay, cfg.lr)]
    for j, p in enumerate(group["params"]):
        m = math.inf if p.is_complex() else _fmax(p.dtype)
        for key, lam, f in terms:
            if lam > m:
                what = f"{key}={lam:g}"
            elif f * lam > m:
                what = (f"{key}={lam:g} gives the decay lr·λ = {f * lam:g}"
                        if key == "decoupled_decay" else f"{key}={lam:g} gives the proximal "
                        f"threshold s·λ = {f * lam:g} (step scale s = {f:g})")
            else:
                continue
            raise ParamwiseError(
                f"{group_label(i, group)}, {_who(group, j)}: {what}, beyond the largest "
                f"{str(p.dtype).removeprefix('torch.')} value {m:g}, so the step cannot "
                f"compute it",
                fix=f"use a much smaller {key} (or lr)" + (
                    "" if f == 1.0 or key == "decoupled_decay" else
                    ": a threshold above the largest weight already zeroes every weight") + more)


def check_sparse(opt: torch.optim.Optimizer, cfgs: Sequence[tuple[dict, StepCfg]],
                 more: str) -> None:
    """Group lasso's and ``max_norm``'s rows under a sparse gradient: regularized lazily
    (:mod:`paramwise.step._sparse`), a row must be wholly in or out of the gradient: rows along
    dim 0 (``group_dim=0`` / ``max_norm_dim=0``), the gradient sparse along dim 0 only."""
    for g, c in cfgs:
        if not (c.group_on or c.group_grad or c.max_norm is not None):
            continue
        rows = [(n, k, d) for n, k, d, on in [
            ("group lasso", "group_dim", c.group_dim, c.group_on or bool(c.group_grad)),
            ("max_norm", "max_norm_dim", c.max_norm_dim, c.max_norm is not None)] if on]
        for j, p in enumerate(g["params"]):
            gr = p.grad
            if gr is None or not gr.is_sparse:
                continue
            for name, key, dim in rows:
                if gr.sparse_dim() == 1 and dim % p.ndim == 0:
                    continue
                i = next(k for k, h in enumerate(opt.param_groups) if h is g)
                raise ParamwiseError(
                    f"{group_label(i, g)}, {_who(g, j)}: its gradient is sparse (along "
                    f"{gr.sparse_dim()} dim(s)) and {name} with {key}={dim} needs rows the "
                    f"gradient may hold only in part (paramwise regularizes sparse gradients "
                    f"lazily, on the rows they hold)",
                    fix=f"use {key}=0 with a gradient sparse along dim 0 only (as "
                        f"nn.Embedding(sparse=True) gives), or l1, which acts per element"
                        + more)


def check_attach(opt: torch.optim.Optimizer) -> None:
    """:func:`check_group` for every group of ``opt`` (what :func:`paramwise.attach` runs)."""
    check = StepCheck()
    for i, g in enumerate(opt.param_groups):
        if REG_KEYS.intersection(g) and check_values(g):
            _shape_error(i, g, "")       # names the parameter, as the build does
        c = StepCfg.read(i, g)
        if c is not None:
            check_group(opt, i, g, c, check.summary(g), "")


def check_added(opt: torch.optim.Optimizer, i: int) -> None:
    """The checks of a group ``opt.add_param_group`` just added at index ``i``: its option
    keys (a key that looks like a mistyped option, or a rule multiplier, which torch would
    keep and ignore; keys like nothing known, e.g. ``"name"``, are the user's own and stay),
    then :func:`check_group`."""
    group = opt.param_groups[i]
    valid = set(opt.defaults) | REG_KEYS | _OWN | (optimizer_keys(type(opt)) or set())
    more = "; the group was not added"
    for key in group:
        if key in valid or not isinstance(key, str):
            continue
        if key in MULTIPLIERS:
            raise ParamwiseError(
                f"{group_label(i, group)} sets {key}={group[key]!r}, which torch keeps in the "
                f"group and ignores (paramwise applies multipliers when it builds groups from "
                f"rules)", fix=f"set {MULTIPLIERS[key]}= itself" + more)
        hit = closest(key, valid, cutoff=0.82)
        if hit:
            raise ParamwiseError(
                f"{group_label(i, group)} sets unknown option {key!r} for "
                f"{type(opt).__name__} (did you mean {hit[0]!r}?), which torch would keep in "
                f"the group and ignore", fix=f"use {hit[0]!r}" + more)
    c = StepCfg.read(i, group, outcome="the group was not added")
    if c is not None:
        check_group(opt, i, group, c, summarize(group["params"]), more)



def wrap_add_param_group(opt: torch.optim.Optimizer) -> Callable[[dict], None]:
    """Make ``opt.add_param_group`` (an instance attribute over the class's method) run
    :func:`check_added` on the group it adds, and take the group out again when the check
    fails. Returns the wrapper (:meth:`paramwise.step.hooks.Handle.remove` deletes it); an
    optimizer that is copied or pickled gets torch's own method back, as it loses its hooks."""
    ref = weakref.ref(opt)
    own = opt.__dict__.get("add_param_group")    # someone's wrapper already: keep calling it
    cls_add = type(opt).add_param_group

    def add_param_group(param_group: dict[str, Any]) -> None:
        o = ref()
        if o is None:  # pragma: no cover - the wrapper outlived its optimizer
            raise ReferenceError("the optimizer of this add_param_group is gone")
        n = len(o.param_groups)
        own(param_group) if own is not None else cls_add(o, param_group)
        if len(o.param_groups) == n + 1:
            try:
                check_added(o, n)
            except ParamwiseError:
                del o.param_groups[n]
                raise

    add_param_group.__doc__ = cls_add.__doc__
    opt.add_param_group = add_param_group  # type: ignore[method-assign]
    return add_param_group
