"""The digits data set (bundled with scikit-learn, no download) and the demo's models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class DigitsData:
    """Standardized digits: 8x8 images flattened to 64 features, 10 classes, train/validation split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return 10


def load_digits(val_fraction: float = 0.2, seed: int = 0, standardize: bool = True,
                dtype: torch.dtype = torch.float32) -> DigitsData:
    """Load ``sklearn.datasets.load_digits``, shuffle with ``seed``, split, and standardize on the train split.

    Raises:
        ImportError: if scikit-learn is missing (``pip install trainspect[demo]``).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("the digits demo needs scikit-learn: pip install 'trainspect[demo]'") from error
    data = sk_load_digits()
    x = data.data.astype(np.float64)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(round(val_fraction * len(x)))
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if standardize:
        mean = x_train.mean(0)
        std = x_train.std(0)
        std[std == 0] = 1.0  # constant border pixels
        x_train = (x_train - mean) / std
        x_val = (x_val - mean) / std
    return DigitsData(
        torch.tensor(x_train, dtype=dtype), torch.tensor(y_train),
        torch.tensor(x_val, dtype=dtype), torch.tensor(y_val),
    )


def digits_mlp(hidden: tuple[int, ...] = (128, 64), activation: type[nn.Module] = nn.ReLU,
               num_features: int = 64, num_classes: int = 10) -> nn.Sequential:
    """A ReLU MLP for digits: 64 → hidden... → 10."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def digits_cnn(channels: int = 16, num_classes: int = 10) -> nn.Sequential:
    """A small CNN for 8x8 digits (input reshaped to 1x8x8)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(channels * 16, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return acc
