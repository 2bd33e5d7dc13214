"""The offset-major per-sample convolution gradients against vmap of the weight-gradient convolution and a
per-sample autograd loop, for Conv1d/Conv2d with stride, dilation, padding modes and a module called twice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainspect.providers.per_sample.capture import LayerCapture
from trainspect.providers.per_sample.conv import OffsetMajorConvLayer, build_conv

CASES = [
    ("conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)),
    ("conv2d", dict(in_channels=2, out_channels=5, kernel_size=(3, 2), stride=2, dilation=(1, 2))),
    ("conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", padding_mode="reflect")),
    ("conv2d", dict(in_channels=3, out_channels=2, kernel_size=2, stride=(2, 1), padding=(0, 1), bias=False)),
    ("conv1d", dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2, padding=2, padding_mode="circular")),
    ("conv1d", dict(in_channels=2, out_channels=3, kernel_size=4, stride=3)),
]


def per_sample_reference(module: nn.Module, x: torch.Tensor, calls: int, scale: float) -> list[torch.Tensor]:
    """Per-sample gradients of Σ_c sum(module(x_i)·w_c) (a fixed random readout per call), by a Python loop."""
    gen = torch.Generator().manual_seed(5)
    readouts = [torch.randn(module(x[:1]).shape[1:], generator=gen, dtype=x.dtype) for _ in range(calls)]
    params = [p for p in module.parameters()]
    out = [[] for _ in params]
    for i in range(x.shape[0]):
        loss = sum((module(x[i:i + 1])[0] * r).sum() for r in readouts) * scale
        for k, g in enumerate(torch.autograd.grad(loss, params)):
            out[k].append(g)
    return [torch.stack(g) for g in out]


@pytest.mark.parametrize("kind,kwargs", CASES)
@pytest.mark.parametrize("calls", [1, 2])
def test_offset_major_statistics_match_a_per_sample_loop(kind, kwargs, calls):
    torch.manual_seed(0)
    spatial = (7, 6) if kind == "conv2d" else (9,)
    module = (nn.Conv2d if kind == "conv2d" else nn.Conv1d)(**kwargs).double()
    n = 5
    x = torch.randn(n, kwargs["in_channels"], *spatial, dtype=torch.float64)
    scale = 1.0 / n  # as for a mean loss: the hooks see δ/N, the handler multiplies back by N
    ref = per_sample_reference(module, x, calls, 1.0)
    params = list(module.parameters())
    index_of = {id(p): i for i, p in enumerate(params)}
    capture = LayerCapture({"conv": module})
    gen = torch.Generator().manual_seed(5)
    readouts = [torch.randn(module(x[:1]).shape[1:], generator=gen, dtype=x.dtype) for _ in range(calls)]
    loss = sum((module(x) * r).sum() for r in readouts) * scale
    loss.backward()
    capture.remove()
    layer = build_conv(capture.records["conv"], index_of, float(n), 2**30)
    assert isinstance(layer, OffsetMajorConvLayer)
    flat = [g.reshape(n, -1) for g in ref]
    for local, g in enumerate(ref):  # the per-sample gradients themselves, in the parameter's layout
        torch.testing.assert_close(next(layer.chunks(local)), g, rtol=1e-10, atol=1e-12)
    for got, g in zip(layer.sum_grads(), ref):
        torch.testing.assert_close(got, g.sum(0), rtol=1e-10, atol=1e-12)
    for got, g in zip(layer.sum_grads_squared(), ref):
        torch.testing.assert_close(got, g.square().sum(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.sq_norms(), torch.stack([f.square().sum(1) for f in flat], 1), rtol=1e-10,
                               atol=1e-12)
    directions = [[torch.randn_like(p) for p in params] for _ in range(2)]
    expected = torch.stack([torch.stack([f @ d[k].reshape(-1) for d in directions], 1)
                            for k, f in enumerate(flat)], 1)
    torch.testing.assert_close(layer.project(directions), expected, rtol=1e-10, atol=1e-12)
    for local, f in enumerate(flat):  # sampled elements at their (sample, coordinate) pairs
        samples = torch.randint(0, n, (200,))
        coords = torch.randint(0, f.shape[1], (200,))
        torch.testing.assert_close(layer.elements(local, samples, coords), f[samples, coords])
        values, drawn = layer.sample_elements(local, 100, torch.Generator().manual_seed(1), torch.device("cpu"))
        per_sample = values.shape[0] // n
        samples = torch.arange(n).repeat_interleave(per_sample)
        torch.testing.assert_close(values, f[samples, drawn])
