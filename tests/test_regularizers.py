"""The pure math of paramwise.step.regularizers, against closed forms, autograd and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramwise.options.regularization import REG_KEYS, check_options
from paramwise.step import regularizers as R
from paramwise.step._chunks import batches

F64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


# ------------------------------------------------------------------------------ check_options
def test_reg_keys_are_the_public_api():
    expected = {"l2", "l1", "prox", "prox_scale", "decoupled_decay", "group_lasso", "group_dim",
                "max_norm", "max_norm_dim", "l2_to_init"}
    assert expected == REG_KEYS
    assert R.REG_KEYS is REG_KEYS and R.check_options is check_options   # still public there


@pytest.mark.parametrize("opts, shape", [
    ({}, (3,)),
    ({"l1": 1e-4, "l2": 0, "prox": False}, (3, 4)),
    ({"l1": 1, "prox": True, "prox_scale": "lr"}, ()),
    ({"group_lasso": 0.1, "group_dim": -1}, (3, 4, 5)),
    ({"max_norm": 2.0, "max_norm_dim": 0}, (7,)),
    ({"l2": None, "prox": None, "group_dim": 5}, (3,)),   # None is "off"; group_dim unused
    ({"prox": False}, (3,)),
    ({"prox_scale": "lr", "decoupled_decay": 0.1, "l2_to_init": 1e-3}, (2, 2)),
])
def test_check_options_accepts(opts, shape):
    assert check_options(opts, shape) is None


@pytest.mark.parametrize("opts, shape, pattern", [
    ({"l1": -1e-4}, (3,), r"l1=-0\.0001 is not a finite number >= 0; use a strength >= 0"),
    ({"l2": float("nan")}, (3,), r"l2=nan is not a finite number"),
    ({"group_lasso": float("inf")}, (3, 3), r"group_lasso=inf is not a finite"),
    ({"decoupled_decay": "0.1"}, (3,), r"decoupled_decay='0\.1' is a str; a strength must be a number"),
    ({"l1": True}, (3,), r"l1=True is a bool"),
    ({"l1": 1e-3, "prox": 1}, (3,), r"prox=1 must be True or False"),
    ({"l1": 1e-3, "prox_scale": "adam"}, (3,), r"prox_scale='adam' is not one of 'adaptive'"),
    ({"max_norm": 0}, (3,), r"max_norm=0 must be a finite number > 0"),
    ({"max_norm": -1.0}, (3,), r"max_norm=-1\.0 must be"),
    ({"group_lasso": 1e-3}, (64,), r"group_lasso needs a parameter with >= 2 dims .* shape \(64,\).* use l1="),
    ({"group_lasso": 1e-3}, (), r"group_lasso needs a parameter with >= 2 dims"),
    ({"group_lasso": 1e-3, "group_dim": 2}, (4, 5), r"group_dim=2 is out of range for shape \(4, 5\); use a dim in \[-2, 1\]"),
    ({"group_lasso": 1e-3, "group_dim": 1.0}, (4, 5), r"group_dim=1\.0 must be an int"),
    ({"max_norm": 1.0, "max_norm_dim": -2}, (4,), r"max_norm_dim=-2 is out of range for shape \(4,\)"),
    ({"max_norm": 1.0}, (), r"max_norm needs a parameter with >= 1 dim"),
    ({"prox": True, "l2": 1e-3}, (4,), r"prox=True but neither l1 nor group_lasso is set"),
])
def test_check_options_rejects(opts, shape, pattern):
    problem = check_options(opts, shape)
    assert problem is not None
    assert "\n" not in problem
    assert __import__("re").search(pattern, problem), problem


# ---------------------------------------------------------------------------------- penalties
def test_penalties_match_their_formulas():
    w = [rand(4, 3), rand(5, seed=1)]
    assert torch.allclose(R.l2_penalty(w, 0.3), 0.15 * sum((p ** 2).sum() for p in w))
    assert torch.allclose(R.l1_penalty(w, 0.3), 0.3 * sum(p.abs().sum() for p in w))
    gl = R.group_lasso_penalty([w[0]], 0.3, [0])
    assert torch.allclose(gl, 0.3 * math.sqrt(3) * w[0].norm(dim=1).sum())
    gl1 = R.group_lasso_penalty([w[0]], 0.3, [1])
    assert torch.allclose(gl1, 0.3 * math.sqrt(4) * w[0].norm(dim=0).sum())
    a = [rand(4, 3, seed=2), rand(5, seed=3)]
    assert torch.allclose(R.l2_to_init_penalty(w, a, 0.3),
                          0.15 * sum(((p - q) ** 2).sum() for p, q in zip(w, a)))
    assert R.l1_penalty([], 1.0).item() == 0.0


def test_group_norms_shapes():
    w = rand(2, 3, 4)
    assert R.group_norms(w, 1).shape == (1, 3, 1)
    assert torch.allclose(R.group_norms(w, 1).flatten(), w.transpose(0, 1).reshape(3, -1).norm(dim=1))
    assert torch.equal(R.group_norms(torch.tensor([-2.0, 3.0]), 0), torch.tensor([2.0, 3.0]))
    assert R.group_size(w, 1) == 8


# ------------------------------------------------------------------- gradient terms = autograd
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("term", ["l2", "l1", "elastic", "group", "group_dim1", "l2_to_init"])
def test_gradient_terms_equal_autograd_of_the_penalty(term, foreach):
    ws = [rand(6, 5, seed=4), rand(3, 2, 2, seed=5)]
    anchors = [rand(6, 5, seed=6), rand(3, 2, 2, seed=7)]
    dims = [1, 2] if term == "group_dim1" else [0, 0]
    params = [w.clone().requires_grad_() for w in ws]
    pen = {
        "l2": lambda: R.l2_penalty(params, 0.7),
        "l1": lambda: R.l1_penalty(params, 0.7),
        "elastic": lambda: R.l1_penalty(params, 0.7) + R.l2_penalty(params, 0.2),
        "group": lambda: R.group_lasso_penalty(params, 0.7, dims),
        "group_dim1": lambda: R.group_lasso_penalty(params, 0.7, dims),
        "l2_to_init": lambda: R.l2_to_init_penalty(params, anchors, 0.7),
    }[term]()
    expected = torch.autograd.grad(pen, params)
    grads = [torch.zeros_like(w) for w in ws]
    with torch.no_grad():
        if term in ("l2", "elastic"):
            R.add_l2_grad_(grads, ws, 0.2 if term == "elastic" else 0.7, foreach=foreach)
        if term in ("l1", "elastic"):
            R.add_l1_grad_(grads, ws, 0.7, foreach=foreach)
        if term.startswith("group"):
            R.add_group_lasso_grad_(grads, ws, 0.7, dims)
        if term == "l2_to_init":
            R.add_l2_to_init_grad_(grads, ws, anchors, 0.7, foreach=foreach)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_group_lasso_gradient_of_a_zero_row_is_zero():
    w = rand(3, 4)
    w[1] = 0
    g = torch.zeros_like(w)
    R.add_group_lasso_grad_([g], [w], 1.0, [0])
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_decay_is_a_plain_multiplication():
    w = [rand(3)]
    ref = w[0] * (1 - 0.1 * 0.5)
    R.decay_(w, 1 - 0.1 * 0.5)
    assert torch.equal(w[0], ref)


# -------------------------------------------------------------------------------- prox l1
def soft(w, t):
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_prox_l1_is_the_soft_threshold(foreach):
    w = rand(50, 7)
    ws = [w.clone()]
    R.prox_l1_(ws, 0.5, 0.8, foreach=foreach)
    torch.testing.assert_close(ws[0], soft(w, 0.4), rtol=0, atol=1e-15)
    assert ((ws[0] == 0) == (w.abs() <= 0.4)).all()      # exact zeros inside the threshold


@pytest.mark.parametrize("foreach", [False, True])
def test_prox_elastic_net_divides_by_one_plus_s_l2(foreach):
    w = rand(40)
    ws = [w.clone()]
    R.prox_l1_(ws, 0.5, 0.8, l2=0.3, foreach=foreach)
    torch.testing.assert_close(ws[0], soft(w, 0.4) / (1 + 0.5 * 0.3), rtol=1e-15, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_prox_l1_with_per_element_scale(foreach):
    w, s = rand(30, 4), rand(30, 4, seed=1).abs()
    ws = [w.clone()]
    R.prox_l1_(ws, [s.clone()], 0.7, l2=0.2, foreach=foreach)
    torch.testing.assert_close(ws[0], soft(w, s * 0.7) / (1 + s * 0.2), rtol=1e-15, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=20),
       st.floats(0, 5), st.floats(0, 5), st.floats(0, 2))
def test_prox_l1_minimizes_its_objective(vals, s, lam, l2):
    """x = prox(w) minimizes ½(x-w)² + s(λ|x| + λ₂x²/2): no nearby point does better."""
    w = torch.tensor(vals, dtype=F64)
    x = w.clone()
    R.prox_l1_([x], s, lam, l2)

    def obj(z):
        return 0.5 * (z - w) ** 2 + s * (lam * z.abs() + 0.5 * l2 * z ** 2)

    for eps in (1e-3, -1e-3, 1e-6, -1e-6):
        assert (obj(x) <= obj(x + eps) + 1e-12).all()
    assert (obj(x) <= obj(torch.zeros_like(x)) + 1e-12).all()


def test_prox_l1_keeps_nan_in_place():
    w = rand(5)
    w[2] = float("nan")
    R.prox_l1_([w], 0.1, 1.0)
    assert torch.isnan(w).sum() == 1 and torch.isnan(w[2])
    s = torch.full((5,), 0.1, dtype=F64)
    w2 = rand(5)
    s[3] = float("nan")
    R.prox_l1_([w2], [s], 1.0)
    assert torch.isnan(w2).sum() == 1


# ---------------------------------------------------------------------------- group lasso
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_prox_group_lasso_is_the_block_soft_threshold(dim):
    w = rand(8, 6, 3)
    w[1] *= 0.01                       # a row that goes to zero under dim 0
    x = w.clone()
    R.prox_group_lasso_([x], 0.5, 0.4, [dim % 3], l2=0.1)
    d = dim % 3
    m = w.numel() // w.shape[d]
    norms = R.group_norms(w, d)
    t = 0.5 * 0.4 * math.sqrt(m)
    expected = w * torch.clamp(1 - t / norms, min=0) / (1 + 0.5 * 0.1)
    torch.testing.assert_close(x, expected, rtol=1e-14, atol=1e-15)
    if d == 0:
        assert (x[1] == 0).all()


def test_prox_group_lasso_zero_rows_are_safe():
    w = torch.zeros(3, 4, dtype=F64)
    R.prox_group_lasso_([w], 0.5, 0.4, [0])
    assert (w == 0).all()
    w = torch.zeros(3, 4, dtype=F64)
    R.prox_group_lasso_([w], [torch.full((3, 4), 0.5, dtype=F64)], 0.4, [0], l2=0.1)
    assert (w == 0).all()


def _metric_prox_reference(y, s, tau, l2):
    """Bisection on v for one row (the slow, obviously right way)."""
    a = 1 + s * l2
    if torch.linalg.vector_norm(y / s) <= tau:
        return torch.zeros_like(y)
    lo, hi = 0.0, 1.0
    while torch.linalg.vector_norm(y / (a * hi + s)) > tau:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if torch.linalg.vector_norm(y / (a * mid + s)) > tau:
            lo = mid
        else:
            hi = mid
    v = (lo + hi) / 2
    return y * v / (a * v + s)


@pytest.mark.parametrize("spread, l2", [(0.0, 0.0), (1.0, 0.0), (4.0, 0.3), (6.0, 0.0)])
def test_metric_group_prox_matches_bisection(spread, l2):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(12, 20, generator=g, dtype=F64)
    y[::3] *= 0.1                                  # rows that go to zero
    s = 10 ** (torch.rand(12, 20, generator=g, dtype=F64) * spread) * 1e-2
    tau = 0.6 * float(torch.linalg.vector_norm(y / s, dim=1).median())
    x = y.clone()
    R.prox_group_lasso_([x], [s], tau / math.sqrt(20), [0], l2=l2)
    ref = torch.stack([_metric_prox_reference(y[r], s[r], tau, l2) for r in range(12)])
    assert ((x == 0).all(dim=1) == (ref == 0).all(dim=1)).all()
    assert (x == 0).all(dim=1).any() and not (x == 0).all()
    torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-12)


def test_metric_group_prox_with_constant_scale_is_the_closed_form():
    w = rand(7, 9)
    a, b = w.clone(), w.clone()
    R.prox_group_lasso_([a], 0.3, 0.5, [1], l2=0.2)
    R.prox_group_lasso_([b], [torch.full_like(w, 0.3)], 0.5, [1], l2=0.2)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_metric_group_prox_satisfies_optimality():
    """x minimizes Σ(x-y)²/(2s) + τ‖x‖: (x - y)/s + τ x/‖x‖ = 0 for nonzero rows."""
    g = torch.Generator().manual_seed(5)
    y = torch.randn(5, 30, generator=g, dtype=F64)
    s = torch.rand(5, 30, generator=g, dtype=F64) + 0.05
    x = y.clone()
    R.prox_group_lasso_([x], [s], 0.2, [0])
    tau = 0.2 * math.sqrt(30)
    for r in range(5):
        if (x[r] == 0).all():
            assert torch.linalg.vector_norm(y[r] / s[r]) <= tau
        else:
            res = (x[r] - y[r]) / s[r] + tau * x[r] / x[r].norm()
            assert res.abs().max() < 1e-10


@pytest.mark.parametrize("scale", ["scalar", "tensor"])
def test_group_maps_leave_nonfinite_rows_and_do_not_spread(scale):
    w = rand(4, 5)
    w[2, 1] = float("nan")
    w[3, 0] = float("inf")
    before = w.clone()
    s = 0.1 if scale == "scalar" else [torch.full_like(w, 0.1)]
    R.prox_group_lasso_([w], s, 0.2, [0])
    assert torch.equal(w[2:].isnan(), before[2:].isnan())
    assert torch.equal(w[2, [0, 2, 3, 4]], before[2, [0, 2, 3, 4]])
    assert torch.equal(w[3, 1:], before[3, 1:])
    assert torch.isfinite(w[:2]).all()
    g = torch.zeros_like(w)
    R.add_group_lasso_grad_([g], [w], 1.0, [0])
    assert torch.equal(torch.isfinite(g), torch.isfinite(w))   # only the bad elements themselves
    m = before.clone()
    R.project_max_norm_([m], 0.5, [0])
    assert torch.equal(m[2:].isnan(), before[2:].isnan())
    assert torch.equal(m[3, 1:], before[3, 1:])


# ------------------------------------------------------------------------------- max norm
@pytest.mark.parametrize("dim", [0, 1])
def test_max_norm_projects_rows_onto_the_ball(dim):
    w = rand(6, 4) * 3
    w[0] *= 0.01
    x = w.clone()
    R.project_max_norm_([x], 1.5, [dim])
    norms = R.group_norms(x, dim)
    assert (norms <= 1.5 * (1 + 1e-12)).all()
    small = R.group_norms(w, dim) <= 1.5
    assert torch.equal(torch.where(small, x, 0), torch.where(small, w, 0))
    y = x.clone()
    R.project_max_norm_([y], 1.5, [dim])
    torch.testing.assert_close(y, x, rtol=1e-14, atol=0)     # idempotent up to rounding


def test_max_norm_on_a_vector_clamps_elements():
    w = torch.tensor([-3.0, 0.5, 2.0])
    R.project_max_norm_([w], 1.0, [0])
    assert torch.equal(w, torch.tensor([-1.0, 0.5, 1.0]))


# ---------------------------------------------------------------------- chunks & fast paths
def test_batches_cut_big_tensors_along_the_dim_and_pack_small_ones():
    big, small1, small2 = torch.zeros(10, 4), torch.zeros(3), torch.zeros(2)
    out = list(batches([small1, big, small2, torch.zeros(0)], [0, 1, 0, 0], limit=16))
    pieces = [(pc.param is big, pc.dim, pc.start, pc.length) for b in out for pc in b]
    assert pieces[0] == (False, 0, 0, None)
    assert [p for p in pieces if p[0]] == [(True, 1, 0, 1), (True, 1, 1, 1), (True, 1, 2, 1),
                                           (True, 1, 3, 1)]
    assert sum(pc.numel for b in out for pc in b) == 45
    assert all(sum(pc.numel for pc in b) <= 16 + 10 for b in out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_foreach_and_loop_paths_agree(dtype):
    ws = [rand(13, 7, seed=i).to(dtype) for i in range(3)] + [rand(5, seed=9).to(dtype)]
    ss = [rand(*w.shape, seed=20 + i).abs().to(dtype) for i, w in enumerate(ws)]
    out = {}
    for fe in (False, True):
        a = [w.clone() for w in ws]
        g = [torch.zeros_like(w) for w in ws]
        R.add_l1_grad_(g, a, 0.3, foreach=fe)
        R.add_l2_grad_(g, a, 0.2, foreach=fe)
        R.prox_l1_(a, 0.05, 0.7, l2=0.1, foreach=fe)
        R.prox_l1_(a, [s.clone() for s in ss], 0.1, l2=0.1, foreach=fe)
        R.decay_(a, 0.99, foreach=fe)
        out[fe] = a + g
    for x, y in zip(out[False], out[True]):
        if dtype == torch.bfloat16:   # softshrink rounds once, the clamp form twice: 1 ulp
            torch.testing.assert_close(x, y, rtol=1e-2, atol=1e-2)
        else:
            assert torch.equal(x, y)


# ------------------------------------------------------- scaled (s = k/d) forms, majorized prox
@pytest.mark.parametrize("lam, l2", [(0.7, 0.0), (0.7, 0.2), (0.0, 0.3)])
def test_prox_l1_scaled_is_prox_l1_with_s_equal_k_over_d(lam, l2):
    w = rand(30, 4)
    d = rand(30, 4, seed=1).abs() + 0.1
    k = 0.05
    expected = [w.clone()]
    R.prox_l1_(expected, [k / d], lam, l2)
    got = [w.clone()]
    R.prox_l1_scaled_(got, [d.clone()], [k], lam, l2, [torch.empty_like(w)])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-14, atol=1e-15)
    assert torch.equal(got[0] == 0, expected[0] == 0)          # the same exact zeros
    if lam:
        assert (got[0] == 0).any() and not (got[0] == 0).all()


def _metric_setup(seed=7):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(12, 20, generator=g, dtype=F64)
    y[::3] *= 0.05                                   # rows that go to zero
    s = 10 ** (torch.rand(12, 20, generator=g, dtype=F64) * 2) * 1e-2
    lam = 0.5 * float(torch.linalg.vector_norm(y / s, dim=1).median()) / math.sqrt(20)
    return y, s, lam


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_majorized_group_prox_is_exact_at_its_fixed_point(l2):
    """With n = ‖x*‖ (x* the exact metric prox of y) the closed-form step gives x* again: the
    step hooks' majorize-minimize prox has the exact prox's fixed points."""
    y, s, lam = _metric_setup()
    exact = y.clone()
    R.prox_group_lasso_([exact], [s], lam, [0], l2=l2)
    rho = 1 / R.group_norms(exact, 0)
    got = y.clone()
    R.prox_group_lasso_([got], [s], lam, [0], l2=l2, rho=[rho])
    assert torch.equal(got == 0, exact == 0) and (got == 0).all(dim=1).any()
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-13)
    # the scaled form (s = k/d) gives the same numbers
    k = 0.02
    scaled = y.clone()
    R.prox_group_lasso_scaled_([scaled], [k / s], [k], lam, [0], l2, [rho],
                               [torch.empty_like(y)])
    torch.testing.assert_close(scaled, got, rtol=1e-13, atol=1e-15)


def test_majorized_group_prox_is_a_majorize_minimize_step():
    """Away from the fixed point it decreases the prox objective (never increases it)."""
    y, s, lam = _metric_setup(seed=8)
    tau = lam * math.sqrt(20)
    for n_scale in (0.3, 1.0, 3.0):
        rho = 1 / (n_scale * R.group_norms(y, 0))
        x = y.clone()
        R.prox_group_lasso_([x], [s], lam, [0], rho=[rho])

        def obj(z):
            return ((z - y) ** 2 / (2 * s)).sum(dim=1) + tau * z.norm(dim=1)

        assert (obj(x) <= obj(y) + 1e-12).all()


def _majorized_both(y, s, lam, rho):
    """(scaled, result) of the majorized group prox of ``y`` in both forms: s given, s = 1/d."""
    for scaled in (False, True):
        x = y.clone()
        if scaled:
            R.prox_group_lasso_scaled_([x], [1 / s], [1.0], lam, [0], 0.0, [rho],
                                       [torch.empty_like(y)])
        else:
            R.prox_group_lasso_([x], [s], lam, [0], rho=[rho])
        yield scaled, x


def test_majorized_group_prox_wakes_zero_rows_and_keeps_nonfinite_ones():
    y, s, lam = _metric_setup(seed=9)
    y[4, 2] = float("nan")
    rho = 1 / R.group_norms(y, 0)                    # row 4: NaN
    rho[1] = math.inf                                # row 1 was 0 before the step
    from paramwise.step._rows import inverse_radius
    assert inverse_radius(torch.zeros(2, 3, dtype=F64), 0).isinf().all()
    rho = torch.nan_to_num(rho, nan=0.0, posinf=math.inf)
    for scaled, x in _majorized_both(y, s, lam, rho):
        if torch.linalg.vector_norm(y[1] / s[1]) > lam * math.sqrt(20):
            assert (x[1] != 0).all()                 # woke up
        assert torch.isnan(x).sum() == 1 and torch.isnan(x[4, 2])
        # left unchanged (the scaled form computes w·d/d: up to one rounding)
        torch.testing.assert_close(x[4, [0, 1, 3]], y[4, [0, 1, 3]],
                                   rtol=2e-16 if scaled else 0, atol=0)


def test_a_waking_row_with_a_nan_keeps_the_nan_in_its_element():
    """A row that was 0 before the step and now holds a NaN (a NaN gradient) has no finite
    norm: it is left as the step made it, the NaN in its own element only."""
    y, s, lam = _metric_setup(seed=10)
    y[1, 5] = float("nan")
    rho = torch.nan_to_num(1 / R.group_norms(y, 0), nan=0.0, posinf=math.inf)
    rho[1] = math.inf                                # row 1 was 0 before the step
    for _, x in _majorized_both(y, s, lam, rho):
        assert torch.isnan(x).sum() == 1 and torch.isnan(x[1, 5])
        torch.testing.assert_close(x[1, :5], y[1, :5], rtol=2e-16, atol=0)


TAIL_MAPS = [("l1", 0.7, 0.0), ("l1", 0.7, 0.2), ("l1", 0.0, 0.3), ("group", 0.0, 0.0),
             ("group", 0.0, 0.3)]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kind, lam, l2", TAIL_MAPS)
def test_a_tail_folded_into_the_scaled_maps_is_the_update_then_the_map(kind, lam, l2, dtype):
    """The fused pass leaves an adaptive update's last operation w ← w - a·u/d to the map
    (one pass less): the result is that update followed by the map, with the same exact zeros,
    rows waking from 0 and NaN kept in its element included."""
    y, s, _ = _metric_setup(seed=11)
    w, d = y.to(dtype), (1 / s).to(dtype)
    u = rand(12, 20, seed=12).to(dtype) * 0.02
    a, k = 0.03, 0.05
    w[1], u[1] = 0.0, 2000.0                         # a zero row, woken by its step
    w[4, 2] = float("nan")
    rho = torch.nan_to_num(1 / R.group_norms(w, 0), nan=0.0, posinf=math.inf)
    q = R.group_norms((w - a * u / d) * d, 0).flatten()  # half the rows go to zero
    glam = float(q.nan_to_num(0.0).quantile(0.5)) / (k * math.sqrt(20))   # between two rows

    def run(tails: bool) -> torch.Tensor:
        x, dd = w.clone(), (-d / a if tails else d.clone())   # a tail comes with -d/a
        if not tails:
            x.addcdiv_(u, dd, value=-a)
        t = [(u, a)] if tails else []
        if kind == "l1":
            R.prox_l1_scaled_([x], [dd], [k], lam, l2, [torch.empty_like(x)], t)
        else:
            R.prox_group_lasso_scaled_([x], [dd], [k], glam, [0], l2, [rho],
                                       [torch.empty_like(x)], None, t)
        return x

    ref, got = run(False), run(True)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(got, ref, equal_nan=True, **tol)
    assert torch.equal(got == 0, ref == 0)           # the same exact zeros
    assert torch.isnan(got).sum() == 1 and torch.isnan(got[4, 2])
    if kind == "group":
        assert (got == 0).all(dim=1).any() and (got[1] != 0).all()  # rows zeroed; row 1 woke
    elif lam:
        assert (got == 0).any() and not (got == 0).all()


def test_a_tail_with_an_overflowed_denominator_keeps_nan_in_its_element():
    """An element whose optimizer state overflowed (d = inf) in a row waking from 0: the
    folded map gives what the update then the map give, NaN in that element only."""
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=F64)
    d = torch.tensor([[1.0, math.inf, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    u, a, k = torch.ones_like(w), 0.1, 0.1
    rho = torch.nan_to_num(1 / R.group_norms(w, 0), nan=0.0, posinf=math.inf)
    ref, got = w - a * u / d, w.clone()
    R.prox_group_lasso_scaled_([ref], [d.clone()], [k], 0.01, [0], 0.0, [rho],
                               [torch.empty_like(w)])
    R.prox_group_lasso_scaled_([got], [-d / a], [k], 0.01, [0], 0.0, [rho],
                               [torch.empty_like(w)], None, [(u, a)])
    assert torch.isnan(got).sum() == 1 and torch.isnan(got[0, 1])
    torch.testing.assert_close(got, ref, equal_nan=True, rtol=1e-12, atol=0)


def test_l1_term_traced_form_is_torch_sign_exactly(monkeypatch):
    """Under torch.compile add_l1_grad_ writes where(|w| > 0, copysign(|λ|, w), 0) (inductor's
    sign is slow on CPU); it must give torch.sign's numbers: 0 at ±0 and at NaN, ±λ at
    subnormals and infinities, in float32 and float64, for a negative λ too (maximize)."""
    for dtype, lam in ((torch.float32, 0.1), (torch.float64, 0.1), (torch.float32, -0.1)):
        tiny = torch.finfo(dtype).tiny / 4                       # a subnormal
        w = torch.tensor([-2.0, -0.0, 0.0, 3.0, tiny, -tiny, math.nan, math.inf, -math.inf],
                         dtype=dtype)
        g = torch.linspace(-1, 1, len(w), dtype=dtype)
        expected = g.clone().add_(w.sign(), alpha=lam)
        traced = g.clone()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        R.add_l1_grad_([traced], [w], lam)
        monkeypatch.undo()
        assert torch.equal(traced, expected), (dtype, lam)
