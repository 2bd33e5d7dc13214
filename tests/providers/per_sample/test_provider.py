"""Every per-sample statistic vs a brute-force loop of per-sample torch.autograd.grad (float64, rtol 1e-5)."""

from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
import torch
from torch import nn

import trainspect
from trainspect.engine.values import SeriesInfo
from trainspect.instruments.base import Instrument
from trainspect.providers.per_sample import PerSampleGradients, PerSampleLayerProvider, project_per_sample

from .models import KINDS, brute_force_per_sample_grads, problem

RTOL = 1e-5


class GrabPerSample(Instrument):
    """Test instrument: keeps the step's per-sample statistics and projections on two directions."""

    name = "test_grab_per_sample"
    requires = ("per_sample_grads",)
    per_sample_quantities = ("sum_grads", "sum_grads_squared", "proj_mean", "elements", "element_params")
    series = (SeriesInfo("test_grab_dummy"),)
    directions: ClassVar[list[list[torch.Tensor]]] = []
    grabbed: ClassVar[list] = []

    def compute(self, ctx):
        stats = ctx.get("per_sample_grads")
        proj = project_per_sample(ctx, self.directions) if self.directions else None
        GrabPerSample.grabbed.append((stats, proj))
        return {}


def run_one_step(kind: str, reduction: str, tmp_path, n: int = 6):
    model, x, y, loss = problem(kind, n)
    loss.reduction = reduction
    reference = brute_force_per_sample_grads(model, x, y, loss)
    gen = torch.Generator().manual_seed(1)
    params = [p for p in model.parameters()]
    GrabPerSample.directions = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(2)]
    GrabPerSample.grabbed = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, optimizer, loss, run_dir=tmp_path / kind, instruments=["test_grab_per_sample"],
                                  checks=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.zero_grad()
        with inspector.step(x, y):
            out = loss(model(x), y)
            out.backward()
        batch_grads = [p.grad.clone() for p in params]
        before = [p.detach().clone() for p in params]
        optimizer.step()
    inspector.close()
    assert not inspector.errors, inspector.errors
    (stats, proj), = GrabPerSample.grabbed
    return stats, proj, reference, batch_grads, GrabPerSample.directions, before


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_statistics_match_brute_force(kind, reduction, tmp_path):
    check_against_brute_force(kind, reduction, tmp_path)


@pytest.mark.parametrize("kind", ["cnn", "embedding", "wide", "custom", "attention"])
def test_statistics_match_brute_force_under_a_tiny_memory_cap(kind, tmp_path, monkeypatch):
    """Nothing fits: sequence Linear layers use the Gram/projection formulas, embeddings the sparse rows,
    convolutions and the torch.func fallback recompute their per-sample gradients block by block."""
    monkeypatch.setattr(PerSampleLayerProvider, "memory_cap", 1)
    check_against_brute_force(kind, "mean", tmp_path)


def check_against_brute_force(kind, reduction, tmp_path):
    stats, proj, ref, batch_grads, directions, params = run_one_step(kind, reduction, tmp_path)
    n = ref[0].shape[0]
    assert stats.batch_size == n
    flat = torch.cat([g.reshape(n, -1) for g in ref], 1)
    # Σ_i g_i, and its consistency with the real mini-batch gradient
    for s, g, bg in zip(stats.sum_grads, ref, batch_grads):
        torch.testing.assert_close(s, g.sum(0), rtol=RTOL, atol=1e-10)
        torch.testing.assert_close(s / (n if reduction == "mean" else 1), bg, rtol=RTOL, atol=1e-10)
    torch.testing.assert_close(stats.mean_grad_sq_norms, torch.stack([g.mean(0).square().sum() for g in ref]),
                               rtol=RTOL, atol=1e-14)
    # ‖g_{i,p}‖², Σ_i ‖g_{i,p}‖²
    sq = torch.stack([g.reshape(n, -1).square().sum(1) for g in ref], 1)
    torch.testing.assert_close(stats.sq_norms, sq, rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(stats.sum_sq_norms, sq.sum(0), rtol=RTOL, atol=1e-12)
    # Σ_i g_i²
    for s, g in zip(stats.sum_grads_squared, ref):
        torch.testing.assert_close(s, g.square().sum(0), rtol=RTOL, atol=1e-12)
    # projections on ḡ, per parameter and in total
    mean = [g.mean(0) for g in ref]
    pi = torch.stack([(g.reshape(n, -1) * m.reshape(1, -1)).sum(1) for g, m in zip(ref, mean)], 1)
    torch.testing.assert_close(stats.proj_mean, pi, rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(stats.sum_proj_mean_sq, pi.square().sum(0), rtol=RTOL, atol=1e-12)
    total = flat @ torch.cat([m.reshape(-1) for m in mean])
    torch.testing.assert_close(stats.sum_proj_mean_total_sq, total.square().sum(), rtol=RTOL, atol=1e-12)
    # projections on arbitrary directions (computed from the capture, in the gradient phase)
    for k, d in enumerate(directions):
        expected = torch.stack([(g.reshape(n, -1) * v.reshape(1, -1)).sum(1) for g, v in zip(ref, d)], 1)
        torch.testing.assert_close(proj[:, :, k], expected, rtol=RTOL, atol=1e-12)
    # sampled elements: every (sample, coordinate) is the right per-sample gradient element
    el = stats.elements
    for p, g in enumerate(ref):
        mask = el.layer == p
        assert mask.any()
        # all elements of these tiny parameters are taken (N·D ≤ histogram_samples)
        torch.testing.assert_close(el.values[mask].sort().values, g.reshape(-1).sort().values, rtol=RTOL, atol=1e-12)
        torch.testing.assert_close(el.weights[mask].sum(), torch.tensor(float(g.numel()), dtype=torch.float64))
        pv = params[p].reshape(-1)
        assert set(el.param_values[mask].tolist()) <= set(pv.tolist())


def test_sampled_elements_are_the_right_elements(tmp_path, monkeypatch):
    """With sampling (fewer samples than elements) each sampled value is g_i[c] for its (i, c)."""
    monkeypatch.setattr(PerSampleGradients, "histogram_samples", 17)
    monkeypatch.setattr(PerSampleGradients, "histogram_min_samples", 17)
    monkeypatch.setattr(PerSampleGradients, "histogram_global_min_samples", 17)
    stats, _, ref, *_ = run_one_step("cnn", "mean", tmp_path)
    el = stats.elements
    for p, g in enumerate(ref):
        mask = el.layer == p
        n_el = int(mask.sum())
        budget = PerSampleGradients.histogram_2d_factor * 17  # the grab instrument asks for element_params (2-D)
        n = g.shape[0]
        # every element if there are at most that many, else ⌈budget/N⌉ coordinates for each of the N samples
        assert n_el == (g.numel() if g.numel() <= budget else n * -(-budget // n))
        torch.testing.assert_close(el.weights[mask].sum(), torch.tensor(float(g.numel()), dtype=torch.float64))
        values = set(round(v, 9) for v in g.reshape(-1).tolist())
        assert all(round(v, 9) in values for v in el.values[mask].tolist())


def test_batchnorm_in_training_mode_warns_and_names_the_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    loss = nn.CrossEntropyLoss()
    GrabPerSample.directions, GrabPerSample.grabbed = [], []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, optimizer, loss, run_dir=tmp_path / "bn", instruments=["test_grab_per_sample"],
                                  checks=None, progress=False)
    with pytest.warns(RuntimeWarning, match=r"BatchNorm1d '1' is in training mode"):
        with inspector.step(x, y):
            loss(model(x), y).backward()
    optimizer.step()
    inspector.close()
    stats, _ = GrabPerSample.grabbed[0]
    assert stats.ill_defined == ["1"]
    # documented behaviour: the per-sample contributions still sum to the mini-batch gradient
    for s, p in zip(stats.sum_grads, model.parameters()):
        torch.testing.assert_close(s / 8, p.grad, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "wide", "attention", "custom"])
def test_statistics_match_brute_force_on_flops_alone(kind, tmp_path, monkeypatch):
    """Without the per-operation charge the test problems' small Linear layers take the sums-and-projections
    path (``test_wide_layers_use_the_gram_path``): it is checked here, the Gram path by the tests above."""
    from trainspect.providers.per_sample.bilinear import BilinearLayer

    monkeypatch.setattr(BilinearLayer, "gram_overhead_macs", 0)
    check_against_brute_force(kind, "mean", tmp_path)
    check_against_brute_force(kind, "sum", tmp_path / "sum")


def test_wide_layers_use_the_gram_path(monkeypatch):
    """On flops alone, the `wide` test problem really exercises the Gram path and small layers do not; with the
    per-operation charge (the default) small layers take the Gram path too."""
    from trainspect.providers.per_sample.bilinear import BilinearLayer

    small = BilinearLayer(torch.randn(6, 1, 3), torch.randn(6, 1, 4), 0, None, torch.Size([4, 3]), None)
    assert small.gram() is not None and small.gram(with_sums=True) is not None
    # a layer whose Gram matrices cost more than its sums and projections plus the charge
    big = BilinearLayer(torch.randn(128, 1, 1024), torch.randn(128, 1, 10), 0, None, torch.Size([10, 1024]), None)
    assert big.gram() is None
    monkeypatch.setattr(BilinearLayer, "gram_overhead_macs", 0)
    n, t = 6, 3
    layer = BilinearLayer(torch.randn(n, t, 40), torch.randn(n, t, 60), 0, 1, torch.Size([60, 40]),
                          torch.Size([60]))
    assert layer.gram() is not None
    assert BilinearLayer(torch.randn(n, 1, 3), torch.randn(n, 1, 4), 0, None, torch.Size([4, 3]), None).gram() is None
    # N(Din + Dout) = 78: below Σ_i g_i plus the projections (2·Din·Dout = 84), not below the projections alone (42)
    middling = BilinearLayer(torch.randn(n, 1, 6), torch.randn(n, 1, 7), 0, None, torch.Size([7, 6]), None)
    assert middling.gram() is not None and middling.gram(with_sums=True) is None


def test_outer_positions_repeat_every_cycle_and_agree_across_instances():
    """Outer-product positions: a fresh draw per slot of the cycle, the same one in that slot ``position_cycle``
    steps later, and the same on another provider instance (another process) — seeded by the slot."""
    shapes = ((8, 30, 20, 16), (8, 20, 1, 4))
    first, second = PerSampleGradients(None), PerSampleGradients(None)  # type: ignore[arg-type]
    cycle = PerSampleGradients.position_cycle
    cpu = torch.device("cpu")
    draws = [first._outer_positions(shapes, step, cpu) for step in range(cycle)]
    assert len({tuple(p.coords.tolist()) for p in draws}) == cycle  # every slot its own positions
    for step in range(cycle, 2 * cycle):
        assert first._outer_positions(shapes, step, cpu) is draws[step % cycle]
        again = second._outer_positions(shapes, step, cpu)
        assert torch.equal(again.coords, draws[step % cycle].coords)
        assert torch.equal(again.u_index, draws[step % cycle].u_index)
    # another batch size: new positions of the new shape, in range
    other = first._outer_positions(((5, 30, 20, 16), (5, 20, 1, 4)), 3, cpu)
    assert other.coords.shape[0] == 5 * 16 + 5 * 4
    assert int(other.coords[:80].max()) < 600 and int(other.coords[80:].max()) < 20


class GrabLosses(Instrument):
    """Test instrument: keeps the step's per-sample losses and the loss reduction the inspector saw."""

    name = "test_grab_per_sample_losses"
    requires = ("per_sample_losses",)
    series = (SeriesInfo("test_grab_losses_dummy"),)
    grabbed: ClassVar[list] = []

    def compute(self, ctx):
        GrabLosses.grabbed.append((ctx.get("per_sample_losses"), ctx.loss_reduction))
        return {}


class HalfSquaredError(nn.Module):
    """A user-defined loss with a ``reduction`` attribute (not one of torch's)."""

    def __init__(self):
        super().__init__()
        self.reduction = "mean"

    def forward(self, output, target):
        per_sample = 0.5 * (output - target).square().sum(1)
        return per_sample if self.reduction == "none" else per_sample.mean()


@pytest.mark.parametrize("kind", ["cross_entropy", "custom"])
def test_per_sample_losses_follow_the_loss_modules_current_settings(kind, tmp_path):
    """ℓ_i against a loop of the loss on one sample at a time, also after the loss module's settings change (the
    unreduced twin must not keep stale ones), and without the inspector's loss hook seeing the extra call."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    loss_fn = nn.CrossEntropyLoss() if kind == "cross_entropy" else HalfSquaredError()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=tmp_path / kind,
                                  instruments=["test_grab_per_sample_losses"], checks=None, progress=False)
    GrabLosses.grabbed = []
    expected = []
    for step in range(2):
        if step == 1 and kind == "cross_entropy":
            loss_fn.label_smoothing = 0.3
        x = torch.randn(7, 5, dtype=torch.float64)
        y = torch.randint(0, 3, (7,)) if kind == "cross_entropy" else torch.randn(7, 3, dtype=torch.float64)
        with torch.no_grad():  # outside the step: the inspector sees only the training call
            expected.append(torch.stack([loss_fn(model(x[i:i + 1]), y[i:i + 1]) for i in range(7)]))
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
        optimizer.step()
    inspector.close()
    assert not inspector.errors, inspector.errors
    for (losses, reduction), reference in zip(GrabLosses.grabbed, expected):
        torch.testing.assert_close(losses, reference, rtol=1e-12, atol=1e-12)
        assert reduction == "mean"
    assert loss_fn.reduction == "mean"


class GrabWorkspace(Instrument):
    """Test instrument: the step's per-sample statistics and the workspace buffers in use during the step."""

    name = "test_grab_workspace"
    requires = ("per_sample_grads",)
    series = (SeriesInfo("test_grab_workspace_dummy"),)
    grabbed: ClassVar[list] = []

    def compute(self, ctx):
        stats = ctx.get("per_sample_grads")
        buffers = ctx.inspector.provider("per_sample_layers").workspace._buffers
        GrabWorkspace.grabbed.append((ctx.step, stats, {k: t.data_ptr() for k, t in buffers.items()}))
        return {}


@pytest.mark.parametrize("kind", ["attention", "cnn"])
def test_workspace_is_reused_on_consecutive_due_steps_and_freed_before_idle_ones(kind, tmp_path):
    """The fast paths' large temporaries (sequence and convolution per-sample weight gradients) live in the
    provider's workspace: the same tensors on consecutive due steps, with each step's statistics still those of
    its own batch (brute force), and released after a due step whose next step is idle."""
    model, x, y, loss = problem(kind, 6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # due at steps 0, 1 (consecutive), then 3 after an idle step 2
    inspector = trainspect.attach(model, optimizer, loss, run_dir=tmp_path / kind,
                                  instruments={"test_grab_workspace": lambda s: s in (0, 1, 3)}, checks=None,
                                  progress=False)
    provider = inspector.provider("per_sample_layers")
    GrabWorkspace.grabbed = []
    gen = torch.Generator().manual_seed(3)
    after, references = [], {}
    for step in range(4):
        xs = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        references[step] = brute_force_per_sample_grads(model, xs, y, loss)
        optimizer.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with inspector.step(xs, y):
                loss(model(xs), y).backward()
        optimizer.step()
        after.append(dict(provider.workspace._buffers))
    inspector.close()
    assert not inspector.errors, inspector.errors
    steps = [s for s, *_ in GrabWorkspace.grabbed]
    assert steps == [0, 1, 3]
    during = {s: ptrs for s, _, ptrs in GrabWorkspace.grabbed}
    assert any(k[1] == "weight_grads" for k in during[0]), during[0]
    assert during[1] == during[0]  # the next step wrote into the same buffers
    assert after[0] and not after[1] and not after[3]  # kept for step 1; freed before the idle step 2 and at the end
    for step, stats, _ in GrabWorkspace.grabbed:
        expected = torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in references[step]], 1)
        torch.testing.assert_close(stats.sq_norms, expected, rtol=RTOL, atol=1e-12)
