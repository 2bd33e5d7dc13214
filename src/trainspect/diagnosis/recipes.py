"""Training recipes: how to train one configuration (width, batch size, data fraction) with one seed.

A *recipe* is what model diagnosis needs besides the trained model itself: the pairwise landscape metrics
(mode connectivity, CKA) compare two models of the *same* configuration trained with different seeds, so
``trainspect.diagnose`` asks for a function that trains a sibling, and the zoo builder asks for one that
trains any grid point. The recipes shipped here are the zoo's: small MLPs/CNNs on the digits data set
(bundled with scikit-learn), clean and with 10 % label noise, trained like the MD-tree paper's models
(SGD, momentum 0.9, weight decay 5e-4, fixed learning rate and epoch count, learning rate × 0.1 at 75 % of
the epochs, incomplete batches dropped), so the batch size is the "temperature" knob.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from trainspect.demo.digits import load_digits

#: The subset of the training data used at a fraction ``d`` is the first ``round(d n)`` samples of a
#: permutation drawn with this seed, so the subsets are nested (as in the MD-tree paper's subsets).
SUBSET_SEED = 12345
#: Seed of the label-noise draw (fixed, so all models of a noisy collection see the same noisy labels).
LABEL_NOISE_SEED = 4321


@dataclass
class ZooData:
    """Training inputs/labels (possibly noisy) and a clean test set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def subset(self, data_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The nested training subset of ``data_fraction`` (in (0, 1])."""
        if not 0.0 < data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction}")
        n = len(self.x_train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))
        keep = order[: max(1, int(round(data_fraction * n)))]
        return self.x_train[keep], self.y_train[keep]


def corrupt_labels(labels: torch.Tensor, probability: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace each label, with ``probability``, by a uniformly drawn class (may equal the true one), as
    ``--label-corrupt-prob`` in Zhang et al. (2017) and the MD-tree paper's noisy collection."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"label-noise probability must be in [0, 1], got {probability}")
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < probability
    noisy = labels.clone()
    noisy[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=g)
    return noisy


def train_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    epochs: int,
    lr: float,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    decay_at: float = 0.75,
    loss_fn: nn.Module | None = None,
) -> nn.Module:
    """Train ``model`` in place with SGD for ``epochs`` epochs over (x, y), shuffling with ``seed``.

    Incomplete batches are dropped (``--ignore-incomplete-batch`` in the paper's scripts); if
    ``batch_size`` exceeds the data, one full batch per epoch is used. The learning rate drops ×0.1 once at
    ``decay_at`` of the epochs.
    """
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"batch_size must be ≥ 1 and epochs ≥ 0, got {batch_size}, {epochs}")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    n = len(x)
    bs = min(batch_size, n)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed + 1_000_003)
    model.train()
    for epoch in range(epochs):
        if epoch == int(decay_at * epochs):
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - bs + 1, bs):
            idx = perm[start: start + bs]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def digits_mlp_width(width: int) -> nn.Sequential:
    """64 → width → width → 10 ReLU MLP (the zoo's MLP; ``width`` plays the role of ResNet-18's k)."""
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def digits_cnn_width(width: int) -> nn.Sequential:
    """A two-conv CNN on the 1×8×8 digits with ``width`` and ``2 width`` channels."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 4, 10),
    )


@dataclass
class ZooRecipe:
    """How to train one zoo configuration.

    ``make_model(width)`` builds the network; ``load_data()`` returns the (possibly noisy) training data and
    the clean test data; training is :func:`train_sgd` with the fields below.
    """

    name: str
    description: str
    make_model: Callable[[int], nn.Module]
    load_data: Callable[[], ZooData]
    lr: float = 0.02
    epochs: int = 30
    momentum: float = 0.9
    weight_decay: float = 5e-4
    _data: ZooData | None = field(default=None, repr=False)

    def data(self) -> ZooData:
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def train(self, width: int, batch_size: int, data_fraction: float, seed: int) -> nn.Module:
        """Train the configuration (width, batch_size, data_fraction) with ``seed``; returns the model."""
        x, y = self.data().subset(data_fraction)
        torch.manual_seed(seed)
        model = self.make_model(width)
        return train_sgd(model, x, y, batch_size=batch_size, epochs=self.epochs, lr=self.lr, seed=seed,
                         momentum=self.momentum, weight_decay=self.weight_decay)

    def sibling_recipe(self, width: int, batch_size: int, data_fraction: float) -> Callable[[int], nn.Module]:
        """``seed -> trained model`` for one configuration: the ``recipe`` argument of ``diagnose``."""
        return lambda seed: self.train(width, batch_size, data_fraction, seed)


def _digits(noise: float) -> Callable[[], ZooData]:
    def load() -> ZooData:
        d = load_digits(val_fraction=0.25, seed=0)
        y = corrupt_labels(d.y_train, noise, 10, LABEL_NOISE_SEED) if noise > 0 else d.y_train
        return ZooData(d.x_train, y, d.x_val, d.y_val)

    return load


def _recipes() -> dict[str, ZooRecipe]:
    out = {}
    for arch, make, lr in (("mlp", digits_mlp_width, 0.02), ("cnn", digits_cnn_width, 0.02)):
        out[f"digits-{arch}"] = ZooRecipe(
            f"digits-{arch}", f"digits {arch.upper()} (clean labels), SGD lr {lr}, 30 epochs",
            make, _digits(0.0), lr=lr)
        out[f"digits-{arch}-noisy"] = ZooRecipe(
            f"digits-{arch}-noisy", f"digits {arch.upper()} with 10% label noise, SGD lr {lr}, 30 epochs",
            make, _digits(0.1), lr=lr)
    # the same MLP at a 2.5× larger learning rate: the batch-size optimum moves to the middle of the grid
    for noise, suffix in ((0.0, ""), (0.1, "-noisy")):
        out[f"digits-mlp-lr05{suffix}"] = ZooRecipe(
            f"digits-mlp-lr05{suffix}", f"digits MLP{' with 10% label noise' if noise else ''}, SGD lr 0.05, 30 epochs",
            digits_mlp_width, _digits(noise), lr=0.05)
    return out


#: The shipped recipes, by name.
RECIPES: dict[str, ZooRecipe] = _recipes()


def get_recipe(name: str) -> ZooRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
