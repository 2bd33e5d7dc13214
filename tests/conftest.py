"""Shared test fixtures: tiny models and a training loop with the inspector attached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import trainspect

torch.set_num_threads(1)


def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def batches(
    n: int, seed: int = 0, dtype: torch.dtype = torch.float32, size: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def train(inspector: trainspect.Inspector, model: nn.Module, optimizer: torch.optim.Optimizer,
          loss_fn: Callable[..., torch.Tensor], data: list[tuple[torch.Tensor, torch.Tensor]],
          on_step: Callable[[int], Any] | None = None) -> None:
    for i, (x, y) in enumerate(data):
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss = loss_fn(model(x), y)
            loss.backward()
        if on_step is not None:
            on_step(i)
        optimizer.step()


@pytest.fixture
def run_dir(tmp_path):  # type: ignore[no-untyped-def]
    return tmp_path / "run"
