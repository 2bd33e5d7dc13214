"""Hutchinson, Hutch++ and the exact diagonal against the dense float64 Hessian."""

from __future__ import annotations

import math

import pytest
import torch

from tests.functional.curvature_cases import CASES, case_hessian, make_case
from trainspect.functional.hvp import HessianOperator
from trainspect.functional.trace import exact_diagonal, hutchinson_trace, hutchpp_layer_traces, hutchpp_trace


@pytest.mark.parametrize("case", CASES)
def test_exact_diagonal_is_the_dense_diagonal(case):
    model, loss_fn, x, y = make_case(case)
    H = case_hessian(case)
    op = HessianOperator(model, loss_fn, x, y)
    if case != "attention_ce":  # all of it (the attention case: a few entries, to keep the test fast)
        torch.testing.assert_close(exact_diagonal(op.matmat, op.dim, block_size=32), torch.diagonal(H))
    idx = [0, 5, op.dim // 2, op.dim - 1]
    torch.testing.assert_close(exact_diagonal(op.matmat, op.dim, idx), torch.diagonal(H)[idx])


@pytest.mark.parametrize("case", ["mlp_tanh_ce", "cnn_ce"])
def test_stochastic_traces_within_three_standard_errors(case):
    model, loss_fn, x, y = make_case(case)
    exact = float(torch.trace(case_hessian(case)))
    op = HessianOperator(model, loss_fn, x, y)
    # Enough probes that the standard error is itself well estimated (Hutch++: 30 residual probes), so
    # "within 3 standard errors" holds with probability ≈ 99.5 % per draw, not just for a Gaussian.
    for seed in range(3):
        h = hutchinson_trace(op.matvec, op.dim, 40, seed=seed, matmat=op.matmat)
        p = hutchpp_trace(op.matmat, op.dim, 90, seed=seed)
        assert abs(h.value - exact) <= 3 * h.standard_error, (h, exact)
        assert abs(p.value - exact) <= 3 * p.standard_error, (p, exact)
        assert (h.num_matvecs, p.num_matvecs) == (40, 90)


def _spectrum_matrix(n: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    evals = torch.cat([torch.tensor([40.0, 25.0, 15.0, 8.0]), torch.rand(n - 4, generator=gen) - 0.3]).double()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(evals) @ Q.T


def test_hutchinson_standard_error_matches_theory_and_shrinks_as_one_over_sqrt_probes():
    A = _spectrum_matrix()
    n = A.shape[0]
    # Var of one Rademacher probe: 2 (‖A‖_F² − Σ A_ii²)  (Hutchinson 1989).
    sigma = math.sqrt(2 * (float((A**2).sum()) - float((torch.diagonal(A) ** 2).sum())))
    ses = {}
    for m in (16, 64, 256):
        est = [hutchinson_trace(lambda v: A @ v, n, m, seed=s, matmat=lambda V: A @ V) for s in range(20)]
        se = sorted(e.standard_error for e in est)[10]  # median over seeds
        ses[m] = se
        assert se == pytest.approx(sigma / math.sqrt(m), rel=0.35)
    assert ses[16] / ses[256] == pytest.approx(4.0, rel=0.3)


def test_hutchpp_standard_error_shrinks_as_one_over_sqrt_residual_probes_and_beats_hutchinson():
    A = _spectrum_matrix()
    n = A.shape[0]
    exact = float(torch.trace(A))
    se = {}
    for m in (24, 96, 384):
        est = [hutchpp_trace(lambda V: A @ V, n, m, seed=s) for s in range(9)]
        for e in est:
            assert abs(e.value - exact) <= 4 * e.standard_error
        se[m] = sorted(e.standard_error for e in est)[4]
        h = sorted(hutchinson_trace(lambda v: A @ v, n, m, seed=s, matmat=lambda V: A @ V).standard_error
                   for s in range(9))[4]
        assert se[m] < h / 3  # the outliers are deflated
    # residual probes m/3 each time: ×4 probes → ÷2 standard error (the deflated residual also shrinks).
    assert se[24] / se[96] >= 2.0 * 0.7
    assert se[96] / se[384] >= 2.0 * 0.7


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchpp_trace(lambda V: V, 10, 3)
    with pytest.raises(ValueError, match="indices"):
        exact_diagonal(lambda V: V, 10, [10])
    with pytest.raises(ValueError, match="matmat returned shape"):
        hutchpp_trace(lambda V: V[:2], 10, 6)


def test_layer_traces_are_unbiased_blockwise_and_exact_where_asked():
    model, loss_fn, x, y = make_case("mlp_tanh_ce")
    H = case_hessian("mlp_tanh_ce")
    op = HessianOperator(model, loss_fn, x, y)
    sizes = [p.numel() for p in model.parameters()]
    blocks = torch.split(torch.diagonal(H), sizes)
    exact_blocks = torch.stack([b.sum() for b in blocks])
    res = hutchpp_layer_traces(op.matmat, sizes, 60, seed=0, exact_layers=[1, 3])
    assert res.exact.tolist() == [False, True, False, True]
    torch.testing.assert_close(res.values[[1, 3]], exact_blocks[[1, 3]])
    for i in (0, 2):
        assert abs(res.values[i] - exact_blocks[i]) <= 3 * res.standard_errors[i]
    assert abs(res.total.value - float(torch.trace(H))) <= 3 * res.total.standard_error
    assert res.total.num_matvecs == 60 + sizes[1] + sizes[3]
    # Without exact blocks the total is Hutch++'s estimate with the same seed (same sketch and probes).
    plain = hutchpp_layer_traces(op.matmat, sizes, 60, seed=4)
    ref = hutchpp_trace(op.matmat, op.dim, 60, seed=4)
    assert plain.total.value == pytest.approx(ref.value, rel=1e-10)
    assert plain.total.standard_error == pytest.approx(ref.standard_error, rel=1e-10)
