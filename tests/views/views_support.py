"""Test support for the views: small instruments of every kind, a check that emits a finding, tiny runs.

The real histogram / curvature instruments come from other branches; these stand-ins produce each value
kind (1-D and 2-D histograms, a curve, curvature-group scalars) so the views can be tested on their own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import trainspect
from trainspect.checks import Check, Finding
from trainspect.engine.values import Curve, Histogram, Histogram2d, SeriesInfo
from trainspect.instruments import Instrument


class ViewsTestGradHistogram(Instrument):
    """1-D histogram of all gradient entries (gradients group)."""

    name = "views_test_grad_hist"
    series = (SeriesInfo("views_test_grad_hist", "histogram", "histogram of gradient entries",
                         "centred on 0, not all in one bin", group="gradients", log_scale=True),)

    def compute(self, ctx: Any) -> dict[str, Any]:
        g = torch.cat([p.grad.reshape(-1) for p in ctx.params if p.grad is not None]).double()
        edges = torch.linspace(float(g.min()) - 1e-12, float(g.max()) + 1e-12, 21, dtype=torch.float64)
        return {"views_test_grad_hist": Histogram(torch.histc(g, 20, float(edges[0]), float(edges[-1])), edges)}


class ViewsTestParamGrad2d(Instrument):
    """2-D histogram of (parameter, gradient) entries (gradients group)."""

    name = "views_test_hist2d"
    series = (SeriesInfo("views_test_hist2d", "histogram2d", "parameters vs gradients",
                         "gradients spread for every parameter value", group="gradients", log_scale=True),)

    def compute(self, ctx: Any) -> dict[str, Any]:
        w = torch.cat([p.detach().reshape(-1) for p in ctx.params]).numpy()
        g = torch.cat([p.grad.reshape(-1) for p in ctx.params]).numpy()
        counts, xe, ye = np.histogram2d(w, g, bins=(12, 10))
        return {"views_test_hist2d": Histogram2d(counts, xe, ye)}


class ViewsTestCurvature(Instrument):
    """Curvature-group stand-ins: a scalar 'max eigenvalue' (‖g‖² / loss, not a real one) and a loss curve."""

    name = "views_test_curvature"
    series = (
        SeriesInfo("views_test_max_eig", "scalar", "stand-in curvature scale", "stable, not growing",
                   group="curvature", log_scale=True),
        SeriesInfo("views_test_loss_slice", "curve", "loss along the gradient direction", "a valley",
                   group="curvature"),
    )

    def compute(self, ctx: Any) -> dict[str, Any]:
        g2 = sum(float((p.grad.double() ** 2).sum()) for p in ctx.params)
        x = np.linspace(-1, 1, 11)
        return {"views_test_max_eig": g2 / max(float(ctx.loss.detach()), 1e-12),
                "views_test_loss_slice": Curve(x, float(ctx.loss.detach()) + g2 * x ** 2)}


class ViewsTestCheck(Check):
    """Emits one warning finding (with remedies) from step ``at`` on."""

    name = "views_test_check"
    codes = ("views-test-finding",)
    default = False

    def __init__(self, at: int = 3):
        self.at = at

    def observe(self, record: Any, ctx: Any) -> list[Finding]:
        if record.step < self.at:
            return []
        return [Finding("views-test-finding", "warning", "Test finding: the loss is being watched",
                        "A check made for the views tests saw the loss.",
                        evidence={"loss": record.scalars.get("loss"), "threshold": 0.0},
                        remedies=("Lower the learning rate by 10x", "Check the data pipeline"),
                        location="0 (Linear)")]


FULL_INSTRUMENTS: list[Any] = ["cheap", ViewsTestGradHistogram(), ViewsTestParamGrad2d(), ViewsTestCurvature()]


def tiny_run(run_dir: Path, *, steps: int = 12, full: bool = False, samples: bool = False,
             step_sleep: float = 0.0, seed: int = 0, instruments: Any = None) -> Path:
    """Train a 2-layer MLP on synthetic 8x8 'images' of 4 classes for ``steps`` steps; return the run folder."""
    torch.manual_seed(seed)
    n_classes = 4
    x_all = torch.randn(256, 64)
    y_all = torch.arange(256) % n_classes
    x_all[torch.arange(256), y_all * 16] += 3.0  # a learnable signal per class
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, n_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    if instruments is None:
        instruments = _resolve(FULL_INSTRUMENTS) if full else "cheap"
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments=instruments,
                                  checks=[ViewsTestCheck()], progress=False, overwrite=True, name=run_dir.name)
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        x, y = x_all[idx], y_all[idx]
        optimizer.zero_grad()
        with inspector.step(x, y):
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
        optimizer.step()
        if samples:
            inspector.log_samples(x, out, y, schedule=5, image_shape=(8, 8),
                                  class_names=["zero", "one", "two", "three"])
        if step % 5 == 4:
            inspector.log(val_accuracy=float((model(x_all).argmax(1) == y_all).float().mean()))
        if step_sleep:
            time.sleep(step_sleep)
    inspector.close()
    return run_dir


def _resolve(spec: list[Any]) -> list[Any]:
    from trainspect.configurations import CONFIGURATIONS

    out: list[Any] = []
    for item in spec:
        out.extend(CONFIGURATIONS[item]) if isinstance(item, str) else out.append(item)
    return out


if __name__ == "__main__":  # the browser test: python -m tests.views.views_support RUN STEPS SLEEP
    import sys

    tiny_run(Path(sys.argv[1]), steps=int(sys.argv[2]), full=True, samples=True, step_sleep=float(sys.argv[3]))
