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


@scenario("lr-too-high", "SGD with a learning rate of 3.0: huge updates, the loss jumps around",
          ("update-too-large", "loss-oscillation"))
def _lr_too_high(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=3.0), nn.CrossEntropyLoss())


@scenario("lr-too-low", "SGD with a learning rate of 1e-5: almost no progress", ("update-too-small", "loss-plateau"))
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


def _scaled(model: nn.Module, gain: float) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(gain)
    return model


@scenario("exploding", "an 8-layer ReLU MLP initialised 1.6x too large, SGD with momentum: gradients grow until "
          "they spike and the loss blows up to NaN", ("exploding-gradients", "loss-divergence"))
def _exploding(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = _scaled(digits_mlp((64,) * 8), 1.6)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss())


@scenario("vanishing", "a 10-layer sigmoid MLP: the first layers get ~1e-9 of the last layer's gradient",
          ("vanishing-gradients",))
def _vanishing(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((32,) * 10, activation=nn.Sigmoid)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())


@scenario("dead-relu", "hidden biases initialised to -3: almost every ReLU unit is dead from the start",
          ("dead-relu",))
def _dead_relu(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    with torch.no_grad():
        for m in list(model)[:-1]:
            if isinstance(m, nn.Linear):
                m.bias.fill_(-3.0)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@scenario("saturation", "a tanh MLP whose weights are drawn with std 2 instead of 1/sqrt(fan_in): units saturate",
          ("saturated-activations",))
def _saturation(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64), activation=nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=2.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


class _LogFeatures(nn.Module):
    """log of ReLU outputs without an epsilon: log(0) = -inf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@scenario("nan", "a 'log features' layer after a ReLU (log 0 = -inf): the loss is NaN at the first step",
          ("nonfinite-loss",))
def _nan(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), _LogFeatures(), nn.Linear(64, 10))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


@scenario("double-softmax", "the model ends with nn.Softmax and feeds nn.CrossEntropyLoss", ("double-softmax",))
def _double_softmax(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    model.append(nn.Softmax(dim=1))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss())


@scenario("head-not-in-optimizer", "the output layer is replaced after the optimizer was built: it never trains",
          ("parameter-not-in-optimizer",))
def _head_not_in_optimizer(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model[4] = nn.Linear(64, 10)
    return Setup(model, optimizer, nn.CrossEntropyLoss())


@scenario("shuffled-labels", "training labels permuted independently of the images: the training loss falls, "
          "validation accuracy stays at chance", ("labels-not-learnable",))
def _shuffled_labels(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    data.y_train = data.y_train[torch.randperm(len(data.y_train))]
    model = digits_mlp((256, 256))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss())


@scenario("unscaled-feature", "one input feature is in other units (x1000)", ("input-feature-scales",))
def _unscaled_feature(data: DigitsData, seed: int) -> Setup:
    torch.manual_seed(seed)
    model = digits_mlp((128, 64))

    def scale(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 20] *= 1000.0
        return x

    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), transform_inputs=scale)
