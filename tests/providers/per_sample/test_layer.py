"""The batched sampler of outer-product per-sample gradient elements, against explicit per-sample gradients,
and the handlers' outer factors against their own materialized per-sample gradients."""

from __future__ import annotations

import math

import torch

from trainspect.providers.per_sample.bilinear import BilinearLayer
from trainspect.providers.per_sample.layer import ExplicitLayer, sample_outer_elements


def _explicit(u: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """[N, R·C] per-sample gradients from their factors."""
    return u if v is None else (u[:, :, None] * v[:, None, :]).reshape(u.shape[0], -1)


def test_sampled_values_are_the_elements_at_their_sample_and_coordinate():
    torch.manual_seed(0)
    n = 6
    factors = [(torch.randn(n, 5), torch.randn(n, 7)), (torch.randn(n, 5), None),
               (torch.randn(n, 3), torch.randn(n, 1)), (torch.randn(n, 11), torch.randn(n, 2))]
    per_sample = [4, 3, 1, 9]
    out = sample_outer_elements(factors, per_sample, torch.Generator().manual_seed(1))
    assert len(out) == len(factors)
    for (u, v), k, (values, coords) in zip(factors, per_sample, out):
        full = _explicit(u, v)
        assert values.shape == coords.shape == (n * k,)
        assert coords.dtype == torch.int64 and int(coords.min()) >= 0 and int(coords.max()) < full.shape[1]
        samples = torch.arange(n).repeat_interleave(k)  # stratified: k coordinates for each sample, in order
        torch.testing.assert_close(values, full[samples, coords], rtol=0, atol=0)


def test_coordinates_are_uniform_and_rows_independent_of_columns():
    """Chi-square over all R·C cells from one float per element (rows from ⌊u·R⌋, columns from the fraction)."""
    n, r, c, k = 4, 6, 5, 2000
    u, v = torch.randn(n, r), torch.randn(n, c)
    _, coords = sample_outer_elements([(u, v)], [k], torch.Generator().manual_seed(3))[0]
    counts = torch.bincount(coords, minlength=r * c).to(torch.float64)
    expected = n * k / (r * c)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = r * c - 1
    # mean dof, sd √(2·dof): 5 standard deviations is a test that fails for a biased sampler, not by chance
    assert chi2 < dof + 5 * math.sqrt(2 * dof), chi2
    assert int(counts.min()) > 0


def test_rounding_at_the_top_of_the_unit_interval_stays_in_range(monkeypatch):
    """u just below 1 must give the last row and column, not one past them."""
    top = torch.full((8,), 1.0 - 2.0**-53, dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: top.clone())
    u, v = torch.randn(2, 1000), torch.randn(2, 999)
    values, coords = sample_outer_elements([(u, v)], [4], torch.Generator())[0]
    assert int(coords.max()) == 1000 * 999 - 1
    torch.testing.assert_close(values, (u[:, -1] * v[:, -1]).repeat_interleave(4))


def test_handler_factors_reproduce_their_per_sample_gradients():
    torch.manual_seed(0)
    n, din, dout = 5, 4, 3
    a, g = torch.randn(n, 1, din), torch.randn(n, 1, dout)
    layer = BilinearLayer(a, g, 0, 1, torch.Size([dout, din]), torch.Size([dout]))
    weight = next(layer.chunks(0)).reshape(n, -1)
    bias = next(layer.chunks(1)).reshape(n, -1)
    torch.testing.assert_close(_explicit(*layer.outer_factors(0)), weight)
    torch.testing.assert_close(_explicit(*layer.outer_factors(1)), bias)
    # positions (T > 1): the weight is a sum of outer products, not one: no factors (sampled its own way)
    seq = BilinearLayer(torch.randn(n, 3, din), torch.randn(n, 3, dout), 0, 1, torch.Size([dout, din]),
                        torch.Size([dout]))
    assert seq.outer_factors(0) is None
    torch.testing.assert_close(_explicit(*seq.outer_factors(1)), next(seq.chunks(1)).reshape(n, -1))
    grads = [torch.randn(n, 2, 3)]
    explicit = ExplicitLayer([0], [torch.Size([2, 3])], n, grads=grads)
    torch.testing.assert_close(_explicit(*explicit.outer_factors(0)), grads[0].reshape(n, -1))
    chunked = ExplicitLayer([0], [torch.Size([2, 3])], n, chunk_fn=lambda: iter([grads]))
    assert chunked.outer_factors(0) is None


def test_a_handlers_own_sampling_uses_its_factors_and_positions_their_own_draw():
    torch.manual_seed(0)
    n, din, dout = 4, 5, 3
    for t in (1, 3):
        layer = BilinearLayer(torch.randn(n, t, din), torch.randn(n, t, dout), 0, 1, torch.Size([dout, din]),
                              torch.Size([dout]))
        for local in (0, 1):
            full = next(layer.chunks(local)).reshape(n, -1)
            values, coords = layer.sample_elements(local, 10, torch.Generator().manual_seed(2), torch.device("cpu"))
            k = -(-10 // n)
            samples = torch.arange(n).repeat_interleave(k)
            assert values.shape == coords.shape == (n * k,)
            torch.testing.assert_close(values, full[samples, coords])


def test_a_scaled_handler_equals_one_built_on_scaled_output_gradients():
    """BilinearLayer(A, Δ, scale=s) applies s to its results (s² to the quadratic ones) instead of to Δ: every
    statistic must equal that of BilinearLayer(A, s·Δ), in float64, for one position and for several."""
    torch.manual_seed(0)
    n, din, dout, s = 6, 5, 4, 6.0
    for t in (1, 3):
        a = torch.randn(n, t, din, dtype=torch.float64)
        g = torch.randn(n, t, dout, dtype=torch.float64)
        shapes = (torch.Size([dout, din]), torch.Size([dout]))
        folded = BilinearLayer(a, g, 0, 1, *shapes, scale=s)
        reference = BilinearLayer(a, g * s, 0, 1, *shapes)
        folded.gram_overhead_macs = reference.gram_overhead_macs = 1 << 40  # take the Gram form here
        torch.testing.assert_close(folded.gram(), reference.gram(), rtol=1e-12, atol=0)
        for ours, theirs in zip(folded.sum_grads(), reference.sum_grads()):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        torch.testing.assert_close(folded.sq_norms(), reference.sq_norms(), rtol=1e-12, atol=0)
        for ours, theirs in zip(folded.sum_grads_squared(), reference.sum_grads_squared()):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        directions = [[torch.randn(dout, din, dtype=torch.float64), torch.randn(dout, dtype=torch.float64)]
                      for _ in range(2)]
        torch.testing.assert_close(folded.project(directions), reference.project(directions), rtol=1e-12, atol=0)
        torch.testing.assert_close(folded.project(directions[:1]), reference.project(directions[:1]),
                                   rtol=1e-12, atol=0)
        samples, coords = torch.arange(n).repeat_interleave(3), torch.randint(0, din * dout, (3 * n,))
        for local in (0, 1):
            c = coords % shapes[local].numel()
            torch.testing.assert_close(folded.elements(local, samples, c), reference.elements(local, samples, c))
            ours = folded.sample_elements(local, 12, torch.Generator().manual_seed(4), torch.device("cpu"))
            theirs = reference.sample_elements(local, 12, torch.Generator().manual_seed(4), torch.device("cpu"))
            torch.testing.assert_close(ours, theirs)
            torch.testing.assert_close(next(folded.chunks(local)), next(reference.chunks(local)))
            factors = folded.outer_factors(local)
            if factors is not None:
                torch.testing.assert_close(folded.outer_scale(local) * _explicit(*factors),
                                           next(reference.chunks(local)).reshape(n, -1))
