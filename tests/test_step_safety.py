"""A step that cannot run changes nothing (paramwise.step.stepcheck), checks for groups added after
attach(), and the global watch on optimizers paramwise did not attach to (paramwise.step._watch).

Every failing step here is compared against clones taken before it: parameters, gradients and
the optimizer's whole state must be exactly as they were, on the fused CPU path and torch's own
step (``foreach=True``) alike.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import paramwise
from paramwise import Rule
from paramwise.errors import ParamwiseError
from paramwise.step.hooks import attach, runs_fused

OPTIM = torch.optim
OPTIMIZERS = [
    (OPTIM.SGD, {"momentum": 0.9}),
    (OPTIM.Adam, {}),
    (OPTIM.AdamW, {"weight_decay": 0.01}),
    (OPTIM.RMSprop, {}),
    (OPTIM.Adagrad, {}),
]
IDS = [c.__name__ for c, _ in OPTIMIZERS]


def param(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype))


def set_grads(params, seed):
    g = torch.Generator().manual_seed(100 + seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def snapshot(opt, params):
    """Clones of everything a step could change."""
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
             for p, st in opt.state.items()}
    return ([p.detach().clone() for p in params],
            [None if p.grad is None else p.grad.clone() for p in params], state)


def assert_unchanged(opt, params, snap):
    ws, gs, state = snap
    for p, w, g in zip(params, ws, gs):
        assert torch.equal(p.detach(), w), "a parameter changed"
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g)), \
            "a gradient changed"
    assert {id(p) for p in opt.state} == set(state), "optimizer state was created or dropped"
    for p, st in opt.state.items():
        old = state[id(p)]
        assert set(st) == set(old)
        for k, v in st.items():
            assert torch.equal(v, old[k]) if torch.is_tensor(v) else v == old[k], k


def build(cls, kw, foreach):
    """Three groups: plain, decoupled decay (changes weights before the step), l1 prox."""
    a, b, c = param(6, 4, seed=1), param(5, 3, seed=2), param(4, 4, seed=3)
    opt = cls([{"params": [a]}, {"params": [b], "decoupled_decay": 0.1},
               {"params": [c], "l1": 1e-3}], lr=1e-2, **kw)
    attach(opt, foreach=foreach)
    params = [a, b, c]
    set_grads(params, 0)
    opt.step()                       # state exists: a failing step must not touch it
    set_grads(params, 1)
    return opt, params


def _set(key, value, group=2, **more):
    def bad(opt, params):
        opt.param_groups[group].update({key: value, **more})
    return bad


def _append(extra, **opts):
    def bad(opt, params):
        p = extra()
        params.append(p)
        p.grad = torch.ones_like(p)
        opt.param_groups.append({**opt.defaults, "params": [p], **opts})   # past add_param_group
    return bad


BAD = {
    "l1 beyond float32": (_set("l1", 1e39), r"param group 2, a parameter of shape \(4, 4\): "
                          r"l1=1e\+39, beyond the largest float32 value .*use a much smaller l1"),
    "l1 1e308": (_set("l1", 1e308), r"l1=1e\+308, beyond the largest float32 value"),
    "negative lr": (_set("lr", -0.01), r"param group 2: lr=-0\.01 is not a finite number >= 0.*"
                    r"set the group's lr to a finite value >= 0"),
    "nan lr": (_set("lr", math.nan), r"lr=nan is not a finite number"),
    "decay lr*λ beyond": (_set("decoupled_decay", 1e38, group=1, lr=10.0),
                          r"param group 1, .*decoupled_decay=1e\+38 gives the decay "
                          r"lr·λ = 1e\+39"),
    "group lasso on 0-d": (_append(lambda: param(seed=4), group_lasso=1e-3),
                           r"param group 3, a parameter of shape \(\): group_lasso needs a "
                           r"parameter with >= 2 dims.*use l1= here"),
    "group_dim out of range": (_append(lambda: param(3, 2, seed=5), group_lasso=1e-3,
                                       group_dim=5), r"group_dim=5 is out of range for shape"),
    "max_norm on 0-d": (_append(lambda: param(seed=6), max_norm=1.0),
                        r"max_norm needs a parameter with >= 1 dim"),
    "complex l1": (_append(lambda: torch.nn.Parameter(torch.randn(3, 2, dtype=torch.cfloat)),
                           l1=1e-3), r"complex parameters are not supported.*view_as_real"),
}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch-step"])
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("case", list(BAD))
def test_a_step_that_cannot_run_changes_nothing(cls, kw, fused, case):
    opt, params = build(cls, kw, foreach=None if fused else True)
    assert runs_fused(opt, 2) is fused
    bad, pattern = BAD[case]
    bad(opt, params)
    snap = snapshot(opt, params)
    for _ in range(2):                                   # a retry fails the same way
        with pytest.raises(ParamwiseError, match=pattern):
            opt.step()
        assert_unchanged(opt, params, snap)


def test_sgd_dampening_above_one_has_no_proximal_step():
    opt, params = build(OPTIM.SGD, {"momentum": 0.9}, foreach=None)
    opt.param_groups[2]["dampening"] = 1.5
    snap = snapshot(opt, params)
    with pytest.raises(ParamwiseError, match=r"step scale s = -0\.05 of its proximal map is "
                       r"negative.*use dampening <= 1, or prox_scale='lr'"):
        opt.step()
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("foreach", [None, True])
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_thresholds_just_inside_the_range_still_step(cls, kw, foreach):
    """The check is not stricter than the step: a threshold at float32's edge runs (and, being
    above every weight, zeroes the group), and lr·λ overflowing float32 in a float64 group is
    fine there."""
    w, v = param(5, 3, seed=7), param(4, 2, seed=8, dtype=torch.float64)
    # (SGD with momentum 0.9: the threshold is 10·λ = 3e38, just below float32's 3.4e38)
    opt = cls([{"params": [w], "l1": 3e37}, {"params": [v], "l1": 1e300}], lr=1.0, **kw)
    attach(opt, foreach=foreach)
    set_grads([w, v], 2)
    opt.step()
    assert torch.count_nonzero(w) == 0 and torch.count_nonzero(v) == 0


def test_float16_range_is_its_own():
    w = param(5, 3, seed=9, dtype=torch.float16)
    opt = OPTIM.SGD([{"params": [w], "l1": 1e4}], lr=1.0)
    attach(opt)
    set_grads([w], 3)
    opt.step()                                           # 1e4 < 65504: runs
    opt.param_groups[0]["lr"] = 10.0
    set_grads([w], 4)
    before = w.detach().clone()
    with pytest.raises(ParamwiseError, match=r"l1=10000 gives the proximal threshold "
                       r"s·λ = 100000 \(step scale s = 10\), beyond the largest float16 "
                       r"value 65504"):
        opt.step()
    assert torch.equal(w.detach(), before)


# ------------------------------------------------------------------ add_param_group after attach
def _attached(cls=OPTIM.SGD, **kw):
    a = param(4, 3, seed=10)
    opt = cls([{"params": [a], "l1": 1e-3}], lr=0.1, **kw)
    attach(opt)
    return opt


@pytest.mark.parametrize("group,pattern", [
    ({"params": [param(3, 2)], "group_lasso": 1e-3, "group_dim": 5},
     r"param group 1, a parameter of shape \(3, 2\): group_dim=5 is out of range .*"
     r"\(the group was not added\)"),
    ({"params": [param()], "max_norm": 1.0},
     r"param group 1, a parameter of shape \(\): max_norm needs a parameter with >= 1 dim"),
    ({"params": [param(7)], "group_lasso": 1e-3},
     r"group_lasso needs a parameter with >= 2 dims.*shape \(7,\)"),
    ({"params": [param(3, 2)], "l1": -1.0}, r"l1=-1\.0 is not a finite number >= 0"),
    ({"params": [param(3, 2)], "l1": 1e39}, r"l1=1e\+39, beyond the largest float32 value"),
    ({"params": [param(3, 2)], "group_lasoo": 1e-3},
     r"param group 1 sets unknown option 'group_lasoo' for SGD \(did you mean 'group_lasso'\?\)"
     r".*use 'group_lasso'; the group was not added"),
    ({"params": [param(3, 2)], "weight_deacy": 1e-3}, r"did you mean 'weight_decay'\?"),
    ({"params": [param(3, 2)], "lr_mult": 0.1},
     r"sets lr_mult=0\.1, which torch keeps in the group and ignores.*set lr= itself"),
    ({"params": [torch.nn.Parameter(torch.randn(3, dtype=torch.cfloat))], "l1": 1e-3},
     r"complex parameters are not supported"),
    ({"params": [param(3, 2)], "l1": 1e-3, "momentum": 1.0},
     r"momentum=1\.0 has no steady-state step.*use momentum < 1"),
])
def test_add_param_group_after_attach_gets_the_build_checks(group, pattern):
    opt = _attached()
    with pytest.raises(ParamwiseError, match=pattern):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1                     # not added


def test_an_added_group_is_regularized_and_keeps_the_users_own_keys():
    opt = _attached()
    b = param(5, 2, seed=11)
    opt.add_param_group({"params": [b], "l1": 0.5, "name": "head"})  # "name": the user's own
    assert opt.param_groups[1]["name"] == "head"
    b.grad = torch.full_like(b, 0.1)
    ref = b.detach() - 0.1 * 0.1                          # SGD step, lr 0.1, no momentum
    ref = torch.sign(ref) * torch.clamp(ref.abs() - 0.1 * 0.5, min=0)  # then soft-threshold
    opt.step()
    assert torch.allclose(b.detach(), ref, atol=1e-7)


def test_remove_restores_torchs_add_param_group():
    opt = _attached()
    handle = paramwise.step.hooks.handle_of(opt)
    handle.remove()
    assert "add_param_group" not in opt.__dict__
    opt.add_param_group({"params": [param(3, 2)], "group_dim": 5, "group_lasso": 1.0})


# ------------------------------------------------- composite optimizers (one step over parts)
class Composite(OPTIM.Optimizer):
    """Like paramwise's Hybrid: param_groups are the parts' own group dicts."""

    def __init__(self, parts):
        super().__init__([torch.zeros(0, requires_grad=True)], {})
        self.parts = parts
        self.param_groups = [g for o in parts for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.parts:
            o.step()


def test_a_composite_checks_every_part_before_any_part_moves():
    a, b = param(4, 3, seed=12), param(5, 2, seed=13)
    p1 = OPTIM.SGD([{"params": [a], "l1": 1e-3}], lr=0.1)
    p2 = OPTIM.Adam([{"params": [b], "l1": 1e-3}], lr=0.1)
    attach(p1)
    attach(p2)
    opt = Composite([p1, p2])
    set_grads([a, b], 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # its groups are attached: no warning
        opt.step()
    p2.param_groups[0]["lr"] = -1.0
    set_grads([a, b], 6)
    snap = snapshot(p1, [a, b])
    snap2 = snapshot(p2, [a, b])
    with pytest.raises(ParamwiseError, match=r"lr=-1\.0 is not a finite number >= 0"):
        opt.step()
    assert_unchanged(p1, [a, b], snap)                    # the first part did not move
    assert_unchanged(p2, [a, b], snap2)


# ------------------------------------------------------------- optimizers never attached
def test_regularizer_keys_on_an_unattached_optimizer_warn_once():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    groups = paramwise.param_groups(model, [Rule("weight", l1=1e-3)], optimizer="sgd")
    opt = OPTIM.SGD(groups, lr=0.1)                      # attach() forgotten
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.warns(UserWarning, match=r"paramwise: param group \d \('0\.weight', '1\.weight'"
                      r"\) sets l1=0\.001 of this SGD, but paramwise\.attach\(\) was not called "
                      r"on it.*nothing regularizes these parameters\. Call "
                      r"paramwise\.attach\(optimizer\)") as seen:
        opt.step()
    assert seen[0].filename == __file__                  # points at the user's step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()                                        # once per optimizer


@pytest.mark.parametrize("groups", [
    lambda ps: [{"params": ps}],
    lambda ps: [{"params": ps, "l2": 0.1, "paramwise_lowered": ("l2->weight_decay",)}],
    lambda ps: [{"params": ps, "l1": None, "max_norm": None}],
], ids=["no keys", "lowered", "all off"])
def test_no_warning_where_nothing_is_left_to_run(groups):
    ps = [param(3, 2)]
    opt = OPTIM.SGD(groups(ps), lr=0.1)
    set_grads(ps, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
