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
    assert float((evals - res.largest).abs().min()) <= res.error_bound_largest
    assert float((evals - res.smallest).abs().min()) <= res.error_bound_smallest
    assert res.largest < 10.0 + 1e-12 and res.smallest > -1.0 - 1e-12  # Ritz values interlace


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
