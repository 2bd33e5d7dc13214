"""Helpers for the checks' tests: tiny training loops and hand-made step records."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import trainspect
from trainspect.engine.record import StepRecord


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Any, x: torch.Tensor, y: torch.Tensor,
           steps: int = 30, *, checks: Any = "default", zero_grad: str = "before", batch: int = 16,
           accumulate: int = 1, instruments: Any = "default") -> trainspect.Inspector:
    """Train for ``steps`` steps with trainspect attached (no store, no terminal); returns the closed inspector.

    zero_grad: "before" the step block, "inside" it, or "never".
    """
    insp = trainspect.attach(model, optimizer, loss_fn, store=False, progress=False, checks=checks,
                             instruments=instruments)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            xb, yb = x[idx], y[idx]
            if zero_grad == "before" and step % accumulate == 0:
                optimizer.zero_grad()
            with insp.step(xb, yb):
                if zero_grad == "inside":
                    optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
            if (step + 1) % accumulate == 0:
                optimizer.step()
        insp.terminal.summary = lambda *_: None  # type: ignore[method-assign]
        insp.close()
    return insp


@pytest.fixture
def train():
    return _train


@pytest.fixture
def data():
    """A small, learnable 4-class problem: 256 samples, 16 standardised features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    w = torch.randn(16, 4, generator=g)
    y = (x @ w).argmax(1)
    return x, y


def codes(inspector: trainspect.Inspector) -> set[str]:
    return {f.code for f in inspector.findings}


@pytest.fixture
def codes_of():
    return codes


def fake_ctx(param_shapes: list[tuple[int, ...]], module_classes: list[str] | None = None,
             optimizer: Any = None, loss_fn: Any = None, model_output: Any = None) -> SimpleNamespace:
    """A stand-in StepContext for feeding hand-made records to a check."""
    classes = module_classes or ["Linear"] * len(param_shapes)
    layers = [{"name": f"l{i}.weight", "module": f"l{i}", "module_class": c, "shape": list(s), "numel": 1}
              for i, (s, c) in enumerate(zip(param_shapes, classes))]
    params = [nn.Parameter(torch.zeros(s)) for s in param_shapes]
    inspector = SimpleNamespace(layers=layers, _user_loss_fn=loss_fn, instruments=[], add_finding=lambda f, s: None)
    return SimpleNamespace(inspector=inspector, param_names=[ly["name"] for ly in layers], params=params,
                           optimizer=optimizer, extras={}, model_output=model_output, batch_size=32,
                           cached=lambda name: False)


@pytest.fixture
def ctx_factory():
    return fake_ctx


def record(step: int, scalars: dict[str, float] | None = None, layers: dict[str, Any] | None = None,
           stepped: bool = True) -> StepRecord:
    r = StepRecord(step, 0.0, 0.0, 0.0, stepped)
    r.scalars.update(scalars or {})
    r.layers.update({k: np.asarray(v, dtype=np.float64) for k, v in (layers or {}).items()})
    return r


@pytest.fixture
def make_record():
    return record


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight over the cores of a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
