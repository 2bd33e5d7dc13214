"""Gradient norms taken in post-accumulate-grad hooks (large tensors) agree with norms of the final gradients,
including when the gradient changes after the hooks ran: clipping, accumulation, replacement, AMP-like rescaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import trainspect
from trainspect.providers.snapshots import GradientNorms
from trainspect.store import open_run


def model() -> nn.Module:
    torch.manual_seed(0)
    # 300×300 = 90 000 elements: above GradientNorms.hot_min_numel, so its norm comes from the hook
    return nn.Sequential(nn.Linear(20, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 4))


@pytest.mark.parametrize("after_backward", ["none", "clip", "scale_in_place", "replace", "accumulate"])
def test_hot_gradient_norms_equal_the_final_gradients(after_backward, tmp_path):
    net = model()
    assert any(p.numel() >= GradientNorms.hot_min_numel for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, opt, loss_fn, run_dir=tmp_path / "r", instruments=["grad_norm"], checks=None,
                                  progress=False)
    hot = inspector.provider("grad_norms")
    gen = torch.Generator().manual_seed(1)
    expected = []
    for _ in range(4):
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        with inspector.step(x, y) as step:
            if after_backward == "accumulate":  # the hooks fire on every micro-batch; the last one counts
                for k in range(2):
                    step.add_batch(x[8 * k:8 * k + 8], y[8 * k:8 * k + 8])
                    loss_fn(net(x[8 * k:8 * k + 8]), y[8 * k:8 * k + 8]).backward()
            else:
                loss_fn(net(x), y).backward()
            # changes after the hooks ran, inside the block (the gradient phase is at its end)
            if after_backward == "clip":
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)
            elif after_backward == "scale_in_place":
                for p in net.parameters():
                    p.grad.mul_(0.5)
            elif after_backward == "replace":
                for p in net.parameters():
                    p.grad = p.grad * 3.0
        expected.append([float(p.grad.double().norm()) for p in net.parameters()])
        opt.step()
    assert not hot._armed and hot._handles, "the hooks are in place and only armed during steps"
    inspector.close()
    assert not inspector.errors
    layer_norms = open_run(tmp_path / "r").series("layer_grad_norm").values
    np.testing.assert_allclose(layer_norms, np.array(expected), rtol=1e-5)


def test_hot_norms_are_used_when_nothing_changes_the_gradient(tmp_path, monkeypatch):
    """The hook's value is what the instrument reports (the fallback is not silently always taken)."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, opt, loss_fn, store=False, instruments=["grad_norm"], checks=None,
                                  progress=False)
    calls = []
    import trainspect.providers.snapshots as snapshots

    real = snapshots._dottable  # asked only of gradients without a norm from the hooks
    monkeypatch.setattr(snapshots, "_dottable", lambda t: calls.append(t.numel()) or real(t))
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    opt.zero_grad()
    with inspector.step(x, y):
        loss_fn(net(x), y).backward()
    opt.step()
    inspector.close()
    small = [p.numel() for p in net.parameters() if p.numel() < GradientNorms.hot_min_numel]
    assert calls == small  # only the small ones were read again


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_difference_norms_match_float64_norms_of_the_differences(dtype):
    """Blocked (large tensors, several blocks and a partial one), foreach (small, non-contiguous) and empty."""
    from trainspect.providers.snapshots import _BLOCK, difference_norms

    gen = torch.Generator().manual_seed(0)
    shapes = [(3 * _BLOCK + 17,), (1000, 300), (7,), (5, 4)]
    a = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    b = [x + 1e-3 * torch.randn(x.shape, generator=gen, dtype=dtype) for x in a]
    a.append(torch.randn(6, 5, generator=gen, dtype=dtype).T)  # non-contiguous
    b.append(torch.randn(5, 6, generator=gen, dtype=dtype))
    expected = torch.stack([(x.double() - y.double()).norm() for x, y in zip(a, b)])
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    got, none = difference_norms(a, b)
    assert got.dtype == torch.float64 and none is None
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)
    # the norms of a from the same pass
    again, norms = difference_norms(a, b, with_norms=True)
    torch.testing.assert_close(again, expected, rtol=rtol, atol=0)
    torch.testing.assert_close(norms, torch.stack([x.double().norm() for x in a]), rtol=rtol, atol=0)
    assert difference_norms([], [])[0].shape == (0,)


@pytest.mark.parametrize("instruments", [["distance", "param_norm"], ["param_norm", "distance"], ["distance"],
                                         ["nonfinite", "param_norm", "distance"]])
def test_distance_and_parameter_norms_from_one_pass_equal_their_definitions(instruments, tmp_path):
    """Whichever of the two is asked for first computes both (one read of θ_t); each equals its definition."""
    net = model()
    initial = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, opt, loss_fn, run_dir=tmp_path / "r", instruments=instruments, checks=None,
                                  progress=False)
    gen = torch.Generator().manual_seed(2)
    distances, norms = [], []
    for _ in range(3):
        params = [p.detach().double() for p in net.parameters()]
        distances.append([float((p - q.double()).norm()) for p, q in zip(params, initial)])
        norms.append([float(p.norm()) for p in params])
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        with inspector.step(x, y):
            loss_fn(net(x), y).backward()
        opt.step()
    inspector.close()
    assert not inspector.errors, inspector.errors
    run = open_run(inspector.run_dir)
    got = run.series("layer_distance").values
    np.testing.assert_allclose(got, distances, rtol=1e-5)
    if "param_norm" in instruments:
        got = run.series("layer_param_norm").values
        np.testing.assert_allclose(got, norms, rtol=1e-5)


class _MixedPrecision(nn.Module):
    """A float32 layer, a float64 layer and a parameter that gets no gradient on odd steps: every norm of a small
    model comes from one foreach call, whatever the dtypes (read back one by one when they differ)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3).double()
        self.sometimes = nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.use_sometimes = True

    def forward(self, x):
        out = self.second(torch.tanh(self.first(x)).double())
        return out * self.sometimes if self.use_sometimes else out


def test_small_model_gradient_norms_equal_float64_norms(tmp_path):
    torch.manual_seed(0)
    net = _MixedPrecision()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, opt, loss_fn, run_dir=tmp_path / "r", instruments=["grad_norm"], checks=None,
                                  progress=False)
    assert inspector.provider("grad_norms")._small_only
    gen = torch.Generator().manual_seed(1)
    expected, totals = [], []
    for step in range(4):
        net.use_sometimes = step % 2 == 0
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        with inspector.step(x, y):
            loss_fn(net(x), y).backward()
        norms = [0.0 if p.grad is None else float(p.grad.double().norm()) for p in net.parameters()]
        expected.append(norms)
        totals.append(float(np.sqrt(np.sum(np.square(norms)))))
        opt.step()
    inspector.close()
    assert not inspector.errors
    run = open_run(tmp_path / "r")
    np.testing.assert_allclose(run.series("layer_grad_norm").values, np.array(expected), rtol=1e-6)
    np.testing.assert_allclose(run.series("grad_norm").values, np.array(totals), rtol=1e-6)
