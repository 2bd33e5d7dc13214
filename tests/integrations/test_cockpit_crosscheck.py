"""Cross-check against Cockpit itself (test-only extra ``cockpit``; skipped if it cannot be imported).

Install (see docs/gradient-statistics.md): backpack-for-pytorch==1.7.1 and cockpit-for-pytorch==1.0.2
under constraints torch==2.13.0, torchvision==0.28.0, then uninstall torchvision; setuptools<81.

Two identical float64 models train on the same batches with plain SGD, one under Cockpit (every
quantity every step), one under trainspect; every quantity both compute must agree to rtol 1e-4 over
10 steps. Scaling: Cockpit's formulas use BackPACK's (1/N)-scaled individual gradients and rescale
(cockpit.md §0); trainspect's g_i are the gradients of the per-sample losses — the final values agree.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import trainspect
from tests.integrations.cockpit_reference import Cockpit, extend, linear, quantities
from trainspect.instruments.histograms import GradHist1d
from trainspect.store import open_run

STEPS = 10
N = 8
RTOL = 1e-4


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 3))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))


def batches(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(N, 1, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (N,), generator=gen))
            for _ in range(STEPS)]


def run_cockpit(model: nn.Module, data) -> dict:
    model = extend(model)
    lossfunc = extend(nn.CrossEntropyLoss())
    individual = nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    every = linear(1)
    qs = [quantities.Alpha(every), quantities.NormTest(every), quantities.InnerTest(every),
          quantities.OrthoTest(every), quantities.MeanGSNR(every), quantities.CABS(every),
          quantities.EarlyStopping(every), quantities.GradNorm(every), quantities.Distance(every),
          quantities.UpdateSize(every), quantities.Loss(every),
          quantities.GradHist1d(every, bins=100, range=(-0.5, 0.5))]
    cp = Cockpit(model.parameters(), quantities=qs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, (x, y) in enumerate(data):
            opt.zero_grad()
            out = model(x)
            loss = lossfunc(out, y)
            losses = individual(out, y)
            with cp(step, info={"batch_size": N, "individual_losses": losses, "loss": loss, "optimizer": opt}):
                loss.backward(create_graph=cp.create_graph(step))
            opt.step()
    return cp.get_output()


def run_trainspect(model: nn.Module, data, run_dir) -> trainspect.Inspector:
    loss = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    instruments = ["alpha", "norm_test", "inner_test", "ortho_test", "mean_gsnr", "cabs", "early_stopping",
                   "grad_norm", "distance", "update_size", "loss", GradHist1d(range=(-0.5, 0.5), exact=True)]
    inspector = trainspect.attach(model, opt, loss, run_dir=run_dir, instruments=instruments, checks=None,
                                  progress=False)
    for x, y in data:
        opt.zero_grad()
        with inspector.step(x, y):
            loss(model(x), y).backward()
        opt.step()
    inspector.close()
    assert not inspector.errors, inspector.errors[0]["traceback"]
    return inspector


def by_step(output: dict, name: str, steps) -> np.ndarray:
    return np.array([np.asarray(output[s][name], dtype=np.float64) for s in steps])


@pytest.mark.parametrize("model_fn", [mlp, cnn], ids=["mlp", "cnn"])
def test_every_shared_quantity_agrees_with_cockpit(model_fn, tmp_path):
    torch.manual_seed(0)
    model = model_fn().double()
    twin = copy.deepcopy(model)
    data = batches(1)
    cockpit_out = run_cockpit(model, data)
    run_trainspect(twin, data, tmp_path / "run")
    run = open_run(tmp_path / "run")
    steps = list(range(STEPS))
    scalar_pairs = {"NormTest": "norm_test", "InnerTest": "inner_test", "OrthoTest": "ortho_test",
                    "MeanGSNR": "mean_gsnr", "CABS": "cabs_batch_size", "EarlyStopping": "early_stopping",
                    "Loss": "loss"}
    for theirs, ours in scalar_pairs.items():
        s, v = run.scalar(ours)
        assert list(s) == steps, ours
        np.testing.assert_allclose(v, by_step(cockpit_out, theirs, steps), rtol=RTOL, err_msg=ours)
    # per-layer lists
    np.testing.assert_allclose(run.series("layer_grad_norm").values, by_step(cockpit_out, "GradNorm", steps),
                               rtol=RTOL)
    # Cockpit stores two-step quantities under the start step t; trainspect's UpdateSize is recorded at t too
    np.testing.assert_allclose(run.series("layer_update_size").values[:-1],
                               by_step(cockpit_out, "UpdateSize", steps[:-1]), rtol=RTOL)
    np.testing.assert_allclose(run.series("layer_distance").values, by_step(cockpit_out, "Distance", steps),
                               rtol=RTOL, atol=1e-12)
    # alpha: Cockpit stores α of step t under t, trainspect records it at t + 1
    s, alpha = run.scalar("alpha")
    assert list(s) == steps[1:]
    np.testing.assert_allclose(alpha, by_step(cockpit_out, "Alpha", steps[:-1]), rtol=RTOL, atol=1e-8)
    # 1-D histogram with Cockpit's fixed range (exact mode: every element)
    ours = run.histograms("grad_hist_1d")
    for k, step in enumerate(steps):
        theirs = np.asarray(cockpit_out[step]["GradHist1d"]["hist"], dtype=np.float64)
        np.testing.assert_allclose(ours.x_edges[k], np.asarray(cockpit_out[step]["GradHist1d"]["edges"]), atol=1e-7)
        # torch.histc and edge comparison may place a value lying exactly on an edge differently
        assert np.abs(ours.counts[k] - theirs).sum() <= 2, (step, np.abs(ours.counts[k] - theirs).sum())
