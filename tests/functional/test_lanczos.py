"""Lanczos extreme eigenvalues against dense float64 eigendecompositions (torch.linalg.eigvalsh)."""

from __future__ import annotations

import pytest
import torch

from tests.functional.curvature_cases import CASES, case_hessian, make_case
from trainspect.functional.hvp import HessianOperator
from trainspect.functional.lanczos import lanczos_extreme_eigenvalues


def _close(estimate: float, exact: float, scale: float, rtol: float, floor: float = 1e-3) -> bool:
    # The documented accuracy: relative, except for eigenvalues below floor × spectral radius.
    return abs(estimate - exact) <= rtol * max(abs(exact), floor * scale)


@pytest.mark.parametrize("case", CASES)
def test_extreme_hessian_eigenvalues_match_dense(case):
    model, loss_fn, x, y = make_case(case)
    evals = torch.linalg.eigvalsh(case_hessian(case))
    op = HessianOperator(model, loss_fn, x, y)
    res = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-4, max_iter=op.dim)
    scale = float(evals.abs().max())
    assert res.converged
    assert _close(res.largest, float(evals[-1]), scale, 1e-4), (res.largest, float(evals[-1]))
    assert _close(res.smallest, float(evals[0]), scale, 1e-4), (res.smallest, float(evals[0]))
    assert res.num_matvecs == op.num_matvecs


def test_converges_before_dim_on_a_spectrum_with_outliers():
    # A Hessian-like spectrum: a few outliers above a bulk; Lanczos must not need all `dim` products.
    torch.manual_seed(0)
    n = 400
    evals = torch.cat([torch.tensor([50.0, 30.0, 20.0, -3.0]), torch.rand(n - 4) * 2 - 0.5]).double()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    A = Q @ torch.diag(evals) @ Q.T
    res = lanczos_extreme_eigenvalues(lambda v: A @ v, n, rtol=1e-6, return_vectors=True)
    assert res.converged and res.num_matvecs < 60
    assert abs(res.largest - 50.0) <= 1e-6 * 50 and abs(res.smallest + 3.0) <= 1e-6 * 50
    v = res.largest_vector
    torch.testing.assert_close(A @ v, 50.0 * v, atol=1e-2, rtol=0)
    assert res.error_bound_largest <= 1e-6 * 50


def test_error_bound_bounds_the_distance_to_the_spectrum_when_stopped_early():
    torch.manual_seed(1)
    n = 300
    evals = torch.linspace(-1, 10, n, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    A = Q @ torch.diag(evals) @ Q.T
    res = lanczos_extreme_eigenvalues(lambda v: A @ v, n, rtol=1e-12, max_iter=8)
    assert not res.converged and res.num_matvecs == 8
    # The residual bound guarantees an eigenvalue of A within the bound of each Ritz value (not that it is
    # the extreme one: that is what the convergence test over iterations is for).
    assert float((evals - res.ritz_largest).abs().min()) <= res.error_bound_largest
    assert float((evals - res.ritz_smallest).abs().min()) <= res.error_bound_smallest
    assert res.ritz_largest < 10.0 + 1e-12 and res.ritz_smallest > -1.0 - 1e-12  # Ritz values interlace
    # The Gauss-Radau estimates stay inside [Ritz value, Ritz value ± bound], the interval that holds the
    # extreme eigenvalue once the bound is valid, so the bound is also a bound on their error.
    assert res.ritz_largest <= res.largest <= res.ritz_largest + res.error_bound_largest
    assert res.ritz_smallest - res.error_bound_smallest <= res.smallest <= res.ritz_smallest


def test_seed_makes_it_deterministic_and_bad_input_raises():
    A = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    r1 = lanczos_extreme_eigenvalues(lambda v: A @ v, 20, seed=3)
    r2 = lanczos_extreme_eigenvalues(lambda v: A @ v, 20, seed=3)
    assert r1.largest == r2.largest and r1.num_matvecs == r2.num_matvecs
    with pytest.raises(ValueError, match="which"):
        lanczos_extreme_eigenvalues(lambda v: A @ v, 20, which="middle")
    with pytest.raises(ValueError, match="returned shape"):
        lanczos_extreme_eigenvalues(lambda v: v[:3], 20)
    with pytest.raises(FloatingPointError, match="inf/nan"):
        lanczos_extreme_eigenvalues(lambda v: v * float("nan"), 20)


def test_warm_start_near_the_top_eigenvector_converges_in_fewer_products():
    torch.manual_seed(2)
    n = 300
    evals = torch.cat([torch.tensor([10.0, 9.0, 8.5]), torch.rand(n - 3) * 4]).double()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    A = Q @ torch.diag(evals) @ Q.T
    cold = lanczos_extreme_eigenvalues(lambda v: A @ v, n, rtol=1e-8, which="largest")
    start = Q[:, 0] + 0.05 * torch.randn(n, dtype=torch.float64) / n**0.5
    hot = lanczos_extreme_eigenvalues(lambda v: A @ v, n, rtol=1e-8, which="largest", start=start)
    assert abs(hot.largest - 10.0) <= 1e-8 * 10 and abs(cold.largest - 10.0) <= 1e-8 * 10
    assert hot.num_matvecs < cold.num_matvecs
    with pytest.raises(ValueError, match="start"):
        lanczos_extreme_eigenvalues(lambda v: A @ v, n, start=torch.zeros(n, dtype=torch.float64))


def _outlier_spectrum(n: int, seed: int, negative: float) -> torch.Tensor:
    # Hessian-like: a few outliers above a bulk near zero whose lowest eigenvalue is `negative`.
    gen = torch.Generator().manual_seed(seed)
    evals = torch.cat([torch.tensor([12.0, 9.0, 7.0, 5.0], dtype=torch.float64),
                       torch.rand(n - 5, generator=gen, dtype=torch.float64) * 1.5,
                       torch.tensor([negative], dtype=torch.float64)])
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(evals) @ Q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauss_radau_estimate_is_a_tighter_lower_bound_when_the_spectrum_is_above_the_fixed_node(seed):
    # λ_min ≥ 0 ≥ the fixed node ℓ = min(θ_min − r_min, 0): the Radau node is a lower bound on λ_max that is at
    # least the Ritz value (Golub-Meurant), from the same products.
    A = _outlier_spectrum(300, seed, negative=0.0)
    gains = []
    for k in range(1, 12):
        res = lanczos_extreme_eigenvalues(lambda v: A @ v, 300, rtol=1e-14, max_iter=k, which="largest", seed=seed)
        assert res.ritz_largest <= res.largest <= 12.0 + 1e-10
        gains.append((12.0 - res.ritz_largest) - (12.0 - res.largest))
        plain = lanczos_extreme_eigenvalues(lambda v: A @ v, 300, rtol=1e-14, max_iter=k, which="largest",
                                            seed=seed, refine=False)
        assert plain.largest == plain.ritz_largest == res.ritz_largest
        assert plain.largest_history == sorted(plain.largest_history)  # Ritz values interlace: non-decreasing
    assert sum(gains) > 0


def test_gauss_radau_needs_fewer_products_to_a_relative_accuracy_on_an_indefinite_spectrum():
    # With a slightly negative λ_min (where the heuristic fixed node may be too high) the estimate never leaves
    # [Ritz value, Ritz value + bound] and reaches 1e-3 no later than the Ritz value.
    saved = []
    for seed in range(3):
        A = _outlier_spectrum(300, seed, negative=-0.3)
        kw = dict(rtol=1e-14, max_iter=30, which="both", seed=seed)
        refined = lanczos_extreme_eigenvalues(A.__matmul__, 300, **kw)
        plain = lanczos_extreme_eigenvalues(A.__matmul__, 300, refine=False, **kw)

        def first(history):
            return next(k for k in range(len(history)) if all(abs(h - 12.0) <= 1e-3 * 12 for h in history[k:]))

        saved.append(first(plain.largest_history) - first(refined.largest_history))
        assert abs(refined.largest - 12.0) <= 1e-10 and abs(refined.smallest + 0.3) <= 1e-10
        for h, ritz in zip(refined.largest_history, plain.largest_history):
            assert ritz <= h <= 12.0 + 1e-3 * 12
    assert min(saved) >= 0 and sum(saved) >= 1, saved


@pytest.mark.parametrize("case", CASES)
def test_warm_start_from_the_previous_step_converges_to_the_dense_eigenvalues(case):
    # As the provider does: Lanczos on a perturbed model (the "previous step"), then a warm start from its Ritz
    # vectors + 5 % noise on the current one; both ends within rtol 1e-4 of the dense float64 Hessian.
    from trainspect.providers.hvp import HessianExtremeEigenvalues

    model, loss_fn, x, y = make_case(case)
    evals = torch.linalg.eigvalsh(case_hessian(case))
    with torch.no_grad():
        old = [p.clone() for p in model.parameters()]
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prev_op = HessianOperator(model, loss_fn, x, y)
    prev = lanczos_extreme_eigenvalues(prev_op.matvec, prev_op.dim, rtol=1e-3, return_vectors=True)
    with torch.no_grad():
        for p, o in zip(model.parameters(), old):
            p.copy_(o)
    provider = HessianExtremeEigenvalues(inspector=None)
    provider._previous = {"largest": prev.largest_vector, "smallest": prev.smallest_vector}
    start = provider._start(prev_op.dim, "both", step=7, dtype=torch.float64)
    assert start is not None
    op = HessianOperator(model, loss_fn, x, y)
    res = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-4, max_iter=op.dim, start=start)
    scale = float(evals.abs().max())
    assert res.converged
    assert _close(res.largest, float(evals[-1]), scale, 1e-4), (res.largest, float(evals[-1]))
    assert _close(res.smallest, float(evals[0]), scale, 1e-4), (res.smallest, float(evals[0]))
    assert provider._start(op.dim + 1, "both", step=7, dtype=torch.float64) is None  # another model: cold
