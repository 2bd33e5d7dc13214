"""Curvature cross-check against Cockpit itself (test-only extra ``cockpit``; skipped if it cannot be imported).

Two identical float64 MLPs train on the same batches with plain SGD, one under Cockpit (HessTrace and TICDiag
with BackPACK's exact DiagHessian, HessMaxEV by power iteration), one under trainspect. Over 5 steps:
HessTrace and TICDiag agree to rtol 1e-5; for the largest eigenvalue both are compared with the exact
dense eigenvalue, since Cockpit's power iteration may stop early: ours must be within 1e-3 of it.
Install: see docs/gradient-statistics.md (backpack-for-pytorch, cockpit-for-pytorch).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

import trainspect
from tests.functional.curvature_cases import dense_hessian
from tests.integrations.cockpit_reference import Cockpit, extend, linear, quantities
from trainspect.providers.hvp import HessianExtremeEigenvalues
from trainspect.store import open_run

STEPS = 5
N = 16


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 6), nn.Sigmoid(), nn.Linear(6, 3))


def batches(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(N, 1, 4, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (N,), generator=gen))
            for _ in range(STEPS)]


def run_cockpit(model: nn.Module, data, names) -> dict:
    model = extend(model)
    lossfunc = extend(nn.CrossEntropyLoss())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    every = linear(1)
    qs = [getattr(quantities, name)(every) for name in names]
    cp = Cockpit(model.parameters(), quantities=qs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, (x, y) in enumerate(data):
            opt.zero_grad()
            loss = lossfunc(model(x), y)
            with cp(step, info={"batch_size": N, "loss": loss, "optimizer": opt}):
                loss.backward(create_graph=cp.create_graph(step))
            opt.step()
    return cp.get_output()


def test_hess_trace_tic_and_max_eigenvalue_agree_with_cockpit(tmp_path, monkeypatch):
    # Cockpit's HessTrace is exact: so is ours here (TIC is due, and the trace shares its exact diagonal)
    monkeypatch.setattr(HessianExtremeEigenvalues, "rtol", 1e-4)
    torch.manual_seed(0)
    model = mlp().double()
    twin = copy.deepcopy(model)
    data = batches(1)
    theirs = run_cockpit(model, data, ["HessTrace", "TICDiag"])
    # Cockpit's HessMaxEV fails in float64 ("Float did not match Double" in its convergence test): a float32
    # twin runs it, and its values are compared with the exact eigenvalue like ours.
    power = run_cockpit(copy.deepcopy(model).float(), [(x.float(), y) for x, y in data], ["HessMaxEV"])

    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    inspector = trainspect.attach(twin, opt, loss_fn, run_dir=tmp_path / "run", checks=None, progress=False,
                                  instruments={"hessian_trace": 1, "tic_diag": 1, "hessian_max_eigenvalue": 1})
    exact = []
    for x, y in data:
        opt.zero_grad()
        with inspector.step(x, y):
            loss_fn(twin(x), y).backward()
        exact.append(float(torch.linalg.eigvalsh(dense_hessian(twin, loss_fn, x, y, vectorize=True))[-1]))
        opt.step()
    inspector.close()
    assert not inspector.errors, inspector.errors[0]["traceback"]
    run = open_run(tmp_path / "run")
    steps = list(range(STEPS))

    def cockpit_series(name, reduce=None):
        vals = [np.asarray(theirs[s][name], dtype=np.float64) for s in steps]
        return np.array([v.sum() if reduce == "sum" else v for v in vals])

    s, trace = run.scalar("hessian_trace")
    assert list(s) == steps
    np.testing.assert_allclose(trace, cockpit_series("HessTrace", "sum"), rtol=1e-5)
    np.testing.assert_allclose(run.series("layer_hessian_trace").values,
                               np.array([np.asarray(theirs[t]["HessTrace"]) for t in steps]), rtol=1e-5, atol=1e-12)
    _, tic = run.scalar("tic_diag")
    np.testing.assert_allclose(tic, cockpit_series("TICDiag"), rtol=1e-5)
    _, lam = run.scalar("hessian_max_eigenvalue")
    exact = np.array(exact)
    ours_err = np.abs(lam - exact) / exact
    cockpit_err = np.abs(np.array([float(power[t]["HessMaxEV"]) for t in steps]) - exact) / exact
    assert ours_err.max() <= 1e-3, (ours_err, cockpit_err)
    print("relative error of λ_max: trainspect", ours_err.max(), "Cockpit", cockpit_err.max())
