"""Demo scenarios: a healthy digits run and deliberately broken ones, to show what trainspect finds.

A scenario builds the model, optimizer and loss, and may alter the training loop (e.g. skip
``zero_grad``). New scenarios register with :func:`scenario`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainspect.demo.digits import DigitsData, digits_mlp

SCENARIOS: dict[str, Scenario] = {}


@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    zero_grad: bool = True  # False: the loop forgets optimizer.zero_grad()
    transform_inputs: Callable[[torch.Tensor], torch.Tensor] | None = None
    transform_targets: Callable[[torch.Tensor], torch.Tensor] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str
    expected: tuple[str, ...]  # finding codes this scenario should produce (empty: healthy)
    build: Callable[[DigitsData, int], Setup]


def scenario(name: str, description: str, expected: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    def register(build: Callable[[DigitsData, int], Setup]) -> Callable[[DigitsData, int], Setup]:
        SCENARIOS[name] = Scenario(name, description, expected, build)
        return build

    return register


@scenario("healthy", "a well-configured ReLU MLP trained with Adam (lr 1e-3)")
def _healthy(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@scenario("lr-too-high", "SGD with a learning rate of 3.0: the loss diverges", ("loss-divergence",))
def _lr_too_high(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=3.0), nn.CrossEntropyLoss())


@scenario("lr-too-low", "SGD with a learning rate of 1e-5: almost no progress", ("update-too-small",))
def _lr_too_low(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-5), nn.CrossEntropyLoss())


@scenario("no-zero-grad", "the loop forgets optimizer.zero_grad(): gradients accumulate",
          ("gradient-accumulation",))
def _no_zero_grad(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), zero_grad=False)
