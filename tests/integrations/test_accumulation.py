"""Gradient accumulation: k micro-batches in one optimizer step equal one batch of k·B samples."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import trainspect
from trainspect.engine.values import SeriesInfo
from trainspect.instruments import Instrument

K, B = 4, 5


class SamplesSeen(Instrument):
    """Test instrument: how many samples (and micro-batches) the step context holds."""

    series = (SeriesInfo("samples_seen", "scalar", "test"), SeriesInfo("micro_batches", "scalar", "test"))

    def compute(self, ctx):
        return {"samples_seen": float(ctx.batch_size), "micro_batches": float(ctx.num_micro_batches)}


SamplesSeen.name = "samples_seen"  # set after class creation: not registered globally

CHEAP = ["loss", "grad_norm", "learning_rate", "nonfinite", "param_norm", "update_size", "update_to_weight",
         "distance"]
#: per-sample statistics must cover all k·B samples of the step
PER_SAMPLE = ["norm_test", "inner_test", "ortho_test", "mean_gsnr", "alpha", "grad_hist_1d", "layer_grad_hist_2d"]


def _run(run_dir, accumulate: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False,
                                  instruments=[*CHEAP, *PER_SAMPLE, SamplesSeen(1)])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(K * B, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (K * B,), generator=g)
        optimizer.zero_grad()
        if accumulate:
            with inspector.step() as step:
                for xb, yb in zip(x.chunk(K), y.chunk(K)):
                    step.add_batch(xb, yb)
                    (loss_fn(model(xb), yb) / K).backward()
        else:
            with inspector.step(x, y):
                loss_fn(model(x), y).backward()
        optimizer.step()
    inspector.close()
    return trainspect.open_run(run_dir)


def test_k_micro_batches_equal_one_batch_of_kB(tmp_path):
    whole = _run(tmp_path / "whole", accumulate=False)
    micro = _run(tmp_path / "micro", accumulate=True)
    # the instruments asked for; the default checks add rank- and micro-batch-local helpers of their own
    # (activation and input statistics) that are not part of this claim
    requested = set(CHEAP) | set(PER_SAMPLE)

    def compared(run):
        return {n for n, i in run.series_info().items() if i["instrument"] in requested}

    names = compared(whole)
    assert names == compared(micro)
    assert {"loss", "grad_norm", "layer_grad_norm", "update_size"} <= names
    assert {"norm_test", "inner_test", "alpha", "mean_gsnr", "grad_hist_1d"} <= names
    assert micro.errors() == [] and whole.errors() == []
    for name, info in sorted(whole.series_info().items()):
        if name not in names:
            continue
        if info["kind"] in ("scalar", "layers"):
            np.testing.assert_allclose(micro.series(name).values, whole.series(name).values, rtol=1e-5,
                                       err_msg=name)
        else:
            w, m = whole.histograms(name), micro.histograms(name)
            for k in range(len(w.steps)):
                np.testing.assert_allclose(m.x_edges[k], w.x_edges[k], rtol=1e-5, atol=1e-12, err_msg=name)
                np.testing.assert_allclose(m.counts[k], w.counts[k], rtol=1e-5, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(micro.scalar("samples_seen")[1], K * B)
    np.testing.assert_array_equal(micro.scalar("micro_batches")[1], K)
