"""Models, data and the two training loops (plain and with trainspect) of the bug suite."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainspect.demo.digits import DigitsData, digits_cnn, load_digits

_DATA: dict[bool, DigitsData] = {}


def data(standardize: bool = True) -> DigitsData:
    if standardize not in _DATA:
        _DATA[standardize] = load_digits(seed=0, standardize=standardize)
    return _DATA[standardize]


# -- models --------------------------------------------------------------------------------------------
def mlp(hidden: tuple[int, ...] = (128, 64), act: Callable[[], nn.Module] = nn.ReLU, out: int = 10,
        batchnorm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(act())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def cnn(channels: int = 16, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    model = digits_cnn(channels)
    if act is not nn.ReLU:
        for i, m in enumerate(model):
            if isinstance(m, nn.ReLU):
                model[i] = act()
    return model


class GRUClassifier(nn.Module):
    """Reads the 8x8 digit row by row (8 steps of 8 features)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.view(-1, 8, 8))
        return self.head(h[-1])


class TinyTransformer(nn.Module):
    """8 row tokens of 8 features, one pre-norm encoder layer, mean pooling."""

    def __init__(self, d: int = 32, softmax_head: bool = False):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(1, 8, d))
        self.encoder = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d, 10)
        self.softmax_head = softmax_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x.view(-1, 8, 8)) + self.pos)
        out = self.head(h.mean(1))
        return out.softmax(-1) if self.softmax_head else out


def scale_init(model: nn.Module, gain: float) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(gain)
    return model


def bias_init(model: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for m in list(model.modules())[:-1]:
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.fill_(value)
    return model


# -- a case --------------------------------------------------------------------------------------------
@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    zero_grad: bool = True
    shuffle_labels: bool = False
    accumulate: int = 1  # optimizer.step() every k micro-batches (healthy accumulation)
    standardize: bool = True
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Case:
    name: str
    fault: str  # "" for a healthy case
    family: str  # mlp, cnn, gru, transformer
    build: Callable[[], Setup]
    expected: tuple[str, ...] = ()  # codes that count as detecting the fault (first = the primary one)
    verify: Callable[[PlainResult], tuple[bool, str]] | None = None
    steps: int = 300


@dataclass
class PlainResult:
    losses: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    first_grad_norms: dict[str, float] = field(default_factory=dict)  # per parameter at step 0
    grad_norms: list[float] = field(default_factory=list)
    model: Any = None
    setup: Any = None

    @property
    def nonfinite(self) -> bool:
        return any(not math.isfinite(v) for v in self.losses)

    def start(self, n: int = 10) -> float:
        return float(torch.tensor(self.losses[:n]).median())

    def end(self, n: int = 20) -> float:
        v = torch.tensor(self.losses[-n:])
        return float(v.median()) if torch.isfinite(v).all() else float("nan")


BATCH = 32
VAL_EVERY = 50


def _batches(n: int, steps: int, seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + BATCH > n:
            order, pos = torch.randperm(n, generator=g), 0
        yield order[pos:pos + BATCH]
        pos += BATCH


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    return float((out.argmax(-1) == y).float().mean())


def run(case: Case, inspector_factory: Callable[[Setup], Any] | None = None, seed: int = 0) -> tuple[PlainResult, Any]:
    """Train ``case`` for ``case.steps`` steps; with ``inspector_factory`` under trainspect."""
    torch.manual_seed(seed)
    setup = case.build()
    d = data(setup.standardize)
    x_train, y_train, x_val, y_val = d.x_train, d.y_train, d.x_val, d.y_val
    if setup.transform is not None:
        x_train, x_val = setup.transform(x_train), setup.transform(x_val)
    if setup.shuffle_labels:
        y_train = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1))]
    model, opt, loss_fn = setup.model, setup.optimizer, setup.loss_fn
    inspector = inspector_factory(setup) if inspector_factory else None
    result = PlainResult(model=model, setup=setup)
    for step, idx in enumerate(_batches(len(x_train), case.steps, seed)):
        x, y = x_train[idx], y_train[idx]
        if setup.zero_grad and step % setup.accumulate == 0:
            opt.zero_grad()
        if inspector is not None:
            with inspector.step(x, y):
                loss = loss_fn(model(x), y)
                (loss / setup.accumulate).backward()
        else:
            loss = loss_fn(model(x), y)
            (loss / setup.accumulate).backward()
        if inspector is None:
            if step == 0:
                result.first_grad_norms = {n: float(p.grad.norm()) if p.grad is not None else 0.0
                                           for n, p in model.named_parameters() if p.requires_grad}
            result.grad_norms.append(float(torch.stack(
                [p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()))
        if (step + 1) % setup.accumulate == 0:
            opt.step()
        result.losses.append(float(loss))
        if (step + 1) % VAL_EVERY == 0:
            val = accuracy(model, x_val, y_val)
            result.val_acc.append(val)
            result.train_acc.append(accuracy(model, x_train, y_train))
            if inspector is not None:
                inspector.log(val_accuracy=val)
    return result, inspector
