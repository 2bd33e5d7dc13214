"""The batch-test formulas (functions of sums) vs the published formulas computed naively with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainspect.functional.batch_tests import (
    alpha_quadratic_fit,
    cabs_batch_size,
    early_stopping_criterion,
    inner_product_test,
    mean_gsnr,
    norm_test,
    orthogonality_test,
)
from trainspect.functional.histograms import total_variation_distance, weighted_histogram2d


@pytest.fixture
def grads() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0.3, 1.0, size=(9, 13))


def sums(g: np.ndarray):
    t = torch.from_numpy(g)
    n = g.shape[0]
    mean = t.mean(0)
    return n, t, mean, [t.sum(0)], [t.square().sum(0)]


def test_gradient_tests_match_naive_formulas(grads):
    n, _t, mean, _, _ = sums(grads)
    g2 = float(mean @ mean)
    sq = (grads**2).sum(1)
    pi = grads @ grads.mean(0)
    # Byrd et al. 2012 Eq. 3.9 with the unbiased sample variance of the per-sample gradients
    var = np.sum((grads - grads.mean(0)) ** 2) / (n - 1)
    assert float(norm_test(sq.sum(), g2, n)) == pytest.approx(np.sqrt(var / (n * g2)), rel=1e-12)
    # Bollapragada et al. 2017 Eq. 2.6: variance of g_iᵀḡ
    var_inner = np.var(pi, ddof=1)
    assert float(inner_product_test((pi**2).sum(), g2, n)) == pytest.approx(np.sqrt(var_inner / (n * g2**2)),
                                                                             rel=1e-12)
    # Eq. 3.3: variance of the component orthogonal to ḡ
    ortho = grads - np.outer(pi / g2, grads.mean(0))
    var_ortho = np.sum(ortho**2) / (n - 1)
    assert float(orthogonality_test(sq.sum(), (pi**2).sum(), g2, n)) == pytest.approx(
        np.sqrt(var_ortho / (n * g2)), rel=1e-12)


def test_gsnr_cabs_early_stopping_match_naive_formulas(grads):
    n, _t, _mean, s, s2 = sums(grads)
    m = grads.mean(0)
    biased = grads.var(0)
    unbiased = grads.var(0, ddof=1)
    assert float(mean_gsnr(s, s2, n)) == pytest.approx(np.mean(m**2 / (biased + 1e-5)), rel=1e-12)
    assert float(cabs_batch_size(s, s2, n, 0.1, 2.5)) == pytest.approx(0.1 * biased.sum() / 2.5, rel=1e-12)
    assert float(early_stopping_criterion(s, s2, n)) == pytest.approx(1 - n * np.mean(m**2 / (unbiased + 1e-5)),
                                                                     rel=1e-12)


def test_alpha_fit_matches_weighted_least_squares_and_known_cases():
    rng = np.random.default_rng(1)
    t = 0.7
    f = rng.normal(size=4)
    var = rng.uniform(0.1, 2.0, size=4)
    phi = np.array([[1, 0, 0], [1, t, t * t], [0, 1, 0], [0, 1, 2 * t]])
    w = 1 / np.sqrt(var)
    mu = np.linalg.lstsq(phi * w[:, None], f * w, rcond=None)[0]
    expected = -1.0 if mu[2] < 0 else 2 * t / (-mu[1] / mu[2]) - 1
    assert alpha_quadratic_fit(t, *f, *var) == pytest.approx(expected, rel=1e-10)
    # exact parabola f(x) = (x − 1)²: a step of length 1 lands in the minimum (α = 0), of length 2 at equal
    # height on the other side (α = 1), of length 0.5 halfway down (α = −0.5)
    for step, alpha in ((1.0, 0.0), (2.0, 1.0), (0.5, -0.5)):
        f0, f1, df0, df1 = 1.0, (step - 1) ** 2, -2.0, 2 * (step - 1)
        assert alpha_quadratic_fit(step, f0, f1, df0, df1, 1.0, 1.0, 1.0, 1.0) == pytest.approx(alpha, abs=1e-10)
    assert alpha_quadratic_fit(0.0, 1, 1, 1, 1, 1, 1, 1, 1) == -1.0
    # concave: −1
    assert alpha_quadratic_fit(1.0, 0.0, -1.0, 0.0, -2.0, 1, 1, 1, 1) == -1.0


def test_histogram2d_and_total_variation():
    x = torch.tensor([0.1, 0.6, 0.6, 2.0])
    y = torch.tensor([-1.0, 0.2, 0.2, 0.9])
    counts, _xe, _ye = weighted_histogram2d(x, y, None, (0.0, 1.0), (-1.0, 1.0), (2, 2))
    assert counts.tolist() == [[1.0, 0.0], [0.0, 3.0]]
    assert total_variation_distance(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])) == pytest.approx(0.5)
