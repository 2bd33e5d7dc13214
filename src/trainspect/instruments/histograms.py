"""Histograms of per-sample gradient elements (Cockpit's ``GradHist1d`` and ``GradHist2d``), total and per layer.

A histogram over all N·D per-sample gradient elements g_{i,p}[c] costs O(N·D) however it is computed
(Cockpit: up to 43x a training step for the 1-D and 198x for the 2-D one). By default it is **estimated**
from a uniform random sample of (sample, coordinate) pairs: ``PerSampleGradients.histogram_samples``
(2**14; 2**18 for the 2-D histogram) pairs per step, allocated to the parameter tensors in proportion to their
sizes (at least 2**12 each; every element of smaller tensors), each weighted by N·D_p/S_p, so the counts
estimate the exact counts (the positions of Linear weights and biases repeat every
``PerSampleGradients.position_cycle`` = 16 steps, where drawing them would cost as much as the histogram)
(documented accuracy: total-variation distance ≤ 0.02 from the exact histogram on the benchmark models,
``tests/instruments/test_histograms.py``). ``exact=True`` bins every element, materializing per-sample
gradients a block at a time.

Bins: ``bins`` equal bins on [−r, r] with r = 6·rms(g) — the root-mean-square of all N·D elements, known
exactly from Σ_i‖g_i‖² without a pass over the elements and identical on every process — unless ``range``
is given. Elements outside are clamped into the edge bins (as in Cockpit). The 2-D histogram's parameter
axis spans [−max|θ|, max|θ|] (the parameters are the same on every process). Counts are all-reduced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainspect.engine.distributed import all_reduce_sum
from trainspect.engine.values import Histogram, Histogram2d, SeriesInfo
from trainspect.functional.histograms import weighted_histogram, weighted_histogram2d
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext

#: half-width of the gradient axis in units of the elements' root-mean-square
RMS_RANGE = 6.0


def gradient_range(sum_sq: torch.Tensor, count: float) -> tuple[float, float]:
    r = RMS_RANGE * float((sum_sq / max(count, 1.0)).sqrt())
    r = r if r > 0 else 1e-12
    return -r, r


class _GradientHistogram(Instrument):
    """What both histogram families share: bins/range/exact options and per-layer series named ``<name>:<param>``.

    ``exact=True`` bins every element, so the sampled-element quantities are not requested.
    """

    requires = ("per_sample_grads",)
    bins: Any = None
    layer_description = "{}"
    layer_healthy = ""

    def __init__(self, schedule: Any = None, *, bins: Any = None, range: Any = None, exact: bool = False):
        super().__init__(schedule)
        self.bins = bins or self.bins
        self.range = range
        self.exact = exact
        if exact:
            self.per_sample_quantities = ()

    def series_info(self, name: str) -> SeriesInfo:
        prefix = f"layer_{self.series[0].name}:"
        if name.startswith(prefix):
            return SeriesInfo(name, self.series[0].kind, self.layer_description.format(name[len(prefix):]),
                              self.layer_healthy, group="gradients")
        return super().series_info(name)


class GradHist1d(_GradientHistogram):
    """1-D histogram of all per-sample gradient elements (sampled estimate by default; see module docstring)."""

    name = "grad_hist_1d"
    per_sample_quantities = ("elements",)
    per_layer = False
    bins = 100
    series = (
        SeriesInfo("grad_hist_1d", "histogram", "per-sample gradient elements g_i[d] (all parameters)",
                   "centred, no spikes at the edges", group="gradients"),
    )

    layer_description = "per-sample gradient elements of {}"
    layer_healthy = "centred"

    def _groups(self, ctx: StepContext) -> list[tuple[str, list[int]]]:
        all_p = list(range(len(ctx.params)))
        groups = [("grad_hist_1d", all_p)]
        if self.per_layer:
            groups = [(f"layer_grad_hist_1d:{ctx.param_names[p]}", [p]) for p in all_p]
        return groups

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        stats = ctx.get("per_sample_grads")
        n = stats.batch_size
        numel = [p.numel() for p in ctx.params]
        out: dict[str, Any] = {}
        counts_list, edges_list, keys = [], [], []
        for key, members in self._groups(ctx):
            if self.range:
                lo, hi = self.range
            elif len(members) == len(numel):  # all parameters (every step: no index gathers)
                lo, hi = gradient_range(stats.sum_sq_norms.sum(), n * float(sum(numel)))
            else:
                lo, hi = gradient_range(stats.sum_sq_norms[members].sum(), n * float(sum(numel[m] for m in members)))
            if self.exact:
                counts = torch.zeros(self.bins, dtype=torch.float64)
                for values in _exact_values(ctx, members):
                    counts += weighted_histogram(values, None, lo, hi, self.bins)[0]
                edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
            else:
                el = stats.elements
                if len(members) == len(ctx.params):
                    counts, edges = weighted_histogram(el.values, el.weights, lo, hi, self.bins)
                else:
                    mask = torch.isin(el.layer, torch.tensor(members))
                    counts, edges = weighted_histogram(el.values[mask], el.weights[mask], lo, hi, self.bins)
            counts_list.append(counts)
            edges_list.append(edges)
            keys.append(key)
        for key, counts, edges in zip(keys, all_reduce_sum(counts_list), edges_list):
            out[key] = Histogram(counts, edges)
        return out


class LayerGradHist1d(GradHist1d):
    """The 1-D per-sample gradient element histogram of each parameter tensor (series ``layer_grad_hist_1d:<name>``)."""

    name = "layer_grad_hist_1d"
    per_sample_quantities = ("elements", "layer_elements")
    per_layer = True


def _exact_values(ctx: StepContext, members: list[int]):
    """Every per-sample gradient element of the given parameters, a block at a time (flattened)."""
    layers = ctx.get("per_sample_layers")
    for h in layers.handlers:
        for loc, idx in enumerate(h.param_indices):
            if idx in members:
                for block in h.chunks(loc):
                    yield block.reshape(-1)


def _exact_pairs(ctx: StepContext, members: list[int]):
    layers = ctx.get("per_sample_layers")
    for h in layers.handlers:
        for loc, idx in enumerate(h.param_indices):
            if idx in members:
                theta = ctx.params[idx].detach()
                for block in h.chunks(loc):
                    yield block.reshape(-1), theta.unsqueeze(0).expand_as(block).reshape(-1)


class GradHist2d(_GradientHistogram):
    """2-D histogram of (per-sample gradient element, parameter value) pairs (Cockpit's ``GradHist2d``)."""

    name = "grad_hist_2d"
    per_sample_quantities = ("elements", "element_params")
    per_layer = False
    bins = (40, 50)
    series = (
        SeriesInfo("grad_hist_2d", "histogram2d", "per-sample gradient element (x) vs parameter value (y)",
                   "no structure at the parameter extremes", group="gradients"),
    )

    layer_description = "gradient element vs parameter value of {}"

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        stats = ctx.get("per_sample_grads")
        n = stats.batch_size
        all_p = list(range(len(ctx.params)))
        groups = [("grad_hist_2d", all_p)]
        if self.per_layer:
            groups = [(f"layer_grad_hist_2d:{ctx.param_names[p]}", [p]) for p in all_p]
        keys, counts_list, edges_list = [], [], []
        for key, members in groups:
            numel = float(sum(ctx.params[p].numel() for p in members))
            if self.range is not None:
                x_range, y_range = self.range
            else:
                x_range = gradient_range(stats.sum_sq_norms[members].sum(), n * numel)
                m = float(torch.stack([ctx.params[p].detach().abs().max() for p in members]).max())
                y_range = (-m, m) if m > 0 else (-1e-12, 1e-12)
            if self.exact:
                counts = torch.zeros(self.bins, dtype=torch.float64)
                for g, theta in _exact_pairs(ctx, members):
                    counts += weighted_histogram2d(g, theta, None, x_range, y_range, self.bins)[0]
                xe = torch.linspace(*x_range, self.bins[0] + 1, dtype=torch.float64)
                ye = torch.linspace(*y_range, self.bins[1] + 1, dtype=torch.float64)
            else:
                el = stats.elements
                mask = slice(None) if len(members) == len(ctx.params) else torch.isin(el.layer, torch.tensor(members))
                counts, xe, ye = weighted_histogram2d(el.values[mask], el.param_values[mask], el.weights[mask],
                                                      x_range, y_range, self.bins)
            keys.append(key)
            counts_list.append(counts)
            edges_list.append((xe, ye))
        return {k: Histogram2d(c, *e) for k, c, e in zip(keys, all_reduce_sum(counts_list), edges_list)}


class LayerGradHist2d(GradHist2d):
    """The 2-D histogram per parameter tensor (series ``layer_grad_hist_2d:<name>``)."""

    name = "layer_grad_hist_2d"
    per_sample_quantities = ("elements", "element_params", "layer_elements")
    per_layer = True
