"""bin_index (arithmetic binning with edge correction) against numpy.histogram's and bucketize's edge rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainspect.functional.histograms import bin_index, weighted_histogram


def _reference(values: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """Binary search against the linspace edges (bin b: edges[b] <= v < edges[b+1]), clamped into the edges."""
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return (torch.bucketize(values.to(torch.float64), edges, right=True) - 1).clamp(0, bins - 1)


@pytest.mark.parametrize("low,high,bins", [(-1.0, 1.0, 100), (-0.0375, 0.0375, 100), (0.0, 3.0, 7), (-5e-9, 5e-9, 40)])
def test_bin_index_matches_edge_comparisons(low, high, bins):
    gen = torch.Generator().manual_seed(0)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    width = (high - low) / bins
    values = torch.cat([
        (torch.rand(20000, generator=gen, dtype=torch.float64) * 1.4 - 0.2) * (high - low) + low,
        edges,  # exactly on every edge
        torch.nextafter(edges, torch.full_like(edges, np.inf)),
        torch.nextafter(edges, torch.full_like(edges, -np.inf)),
        torch.tensor([0.0, -0.0, low - 10 * width, high + 10 * width, np.inf, -np.inf, np.nan], dtype=torch.float64),
    ])
    assert torch.equal(bin_index(values, low, high, bins), _reference(values, low, high, bins))
    # float32 inputs (per-sample gradient elements) are binned by their float64 value
    v32 = values.to(torch.float32)
    assert torch.equal(bin_index(v32, low, high, bins), _reference(v32, low, high, bins))


def test_weighted_histogram_agrees_with_numpy_inside_the_range():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(5000, generator=gen, dtype=torch.float64).mul_(0.3).clamp_(-0.99, 0.99)
    values[:500] = 0.0  # exact zeros on the middle edge, as behind a ReLU
    weights = torch.rand(5000, generator=gen, dtype=torch.float64)
    counts, edges = weighted_histogram(values, weights, -1.0, 1.0, 50)
    expected, expected_edges = np.histogram(values.numpy(), bins=50, range=(-1.0, 1.0), weights=weights.numpy())
    np.testing.assert_allclose(counts.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(edges.numpy(), expected_edges, rtol=0, atol=1e-15)


def _adversarial(low: float, high: float, bins: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    width = (high - low) / bins
    return torch.cat([
        (torch.rand(5000, generator=gen, dtype=torch.float64) * 1.4 - 0.2) * (high - low) + low,
        edges,
        torch.nextafter(edges, torch.full_like(edges, np.inf)),
        torch.nextafter(edges, torch.full_like(edges, -np.inf)),
        torch.tensor([0.0, -0.0, low - 10 * width, high + 10 * width, np.inf, -np.inf, np.nan], dtype=torch.float64),
    ])


@pytest.mark.parametrize("native", [True, False], ids=["torch.histogram", "bin_index"])
@pytest.mark.parametrize("low,high,bins", [(-1.0, 1.0, 100), (-0.0375, 0.0375, 100), (0.0, 3.0, 7), (-5e-9, 5e-9, 40)])
def test_weighted_histogram_counts_each_value_in_its_edge_rule_bin(monkeypatch, native, low, high, bins):
    """Both binning paths (the CPU's torch.histogram and bin_index elsewhere) give exactly the counts of the
    binary-search reference, clamping (±inf, far outside) and NaN (last bin) included."""
    import trainspect.functional.histograms as histograms

    if not native:
        monkeypatch.setattr(histograms, "_native", lambda *_: False)
    values = _adversarial(low, high, bins, 2)
    weights = torch.rand(values.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.bincount(_reference(values, low, high, bins), weights=weights, minlength=bins)
    for v in (values, values.to(torch.float32)):
        expected_v = torch.bincount(_reference(v, low, high, bins), weights=weights, minlength=bins)
        counts, edges = histograms.weighted_histogram(v, weights, low, high, bins)
        torch.testing.assert_close(counts, expected_v, rtol=1e-12, atol=0)  # weighted sums: order may differ
        assert torch.equal(edges, torch.linspace(low, high, bins + 1, dtype=torch.float64))
    counts, _ = histograms.weighted_histogram(values, None, low, high, bins)
    assert torch.equal(counts, torch.bincount(_reference(values, low, high, bins), minlength=bins).to(torch.float64))
    assert counts.sum() == values.numel() and expected.sum() > 0


@pytest.mark.parametrize("native", [True, False], ids=["torch.histogramdd", "bin_index"])
def test_weighted_histogram2d_counts_each_pair_in_its_edge_rule_cell(monkeypatch, native):
    import trainspect.functional.histograms as histograms

    if not native:
        monkeypatch.setattr(histograms, "_native", lambda *_: False)
    x = _adversarial(-0.0375, 0.0375, 40, 4)
    y = _adversarial(-2.0, 3.0, 50, 5)[: x.shape[0]]
    y = y[torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(6))]
    weights = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    counts, xe, ye = histograms.weighted_histogram2d(x, y, weights, (-0.0375, 0.0375), (-2.0, 3.0), (40, 50))
    cell = _reference(x, -0.0375, 0.0375, 40) * 50 + _reference(y, -2.0, 3.0, 50)
    torch.testing.assert_close(counts, torch.bincount(cell, weights=weights, minlength=2000).reshape(40, 50),
                               rtol=1e-12, atol=0)
    unweighted, _, _ = histograms.weighted_histogram2d(x, y, None, (-0.0375, 0.0375), (-2.0, 3.0), (40, 50))
    assert torch.equal(unweighted, torch.bincount(cell, minlength=2000).reshape(40, 50).to(torch.float64))
    assert torch.equal(xe, torch.linspace(-0.0375, 0.0375, 41, dtype=torch.float64))
    assert torch.equal(ye, torch.linspace(-2.0, 3.0, 51, dtype=torch.float64))
