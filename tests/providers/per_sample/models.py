"""Tiny float64 models covering every per-sample path, and a brute-force per-sample gradient reference."""

from __future__ import annotations

import torch
from torch import nn


class AttentionModel(nn.Module):
    """Embedding-free sequence model with LayerNorm and nn.MultiheadAttention (fallback parameters)."""

    def __init__(self, d_in: int = 3, d: int = 8, classes: int = 3):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.norm = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.proj(x))
        a, _ = self.attention(h, h, h)
        return self.head((h + a).mean(1))


class GRUModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class EmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 4, padding_idx=0)
        self.group_norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x)  # [N, T, E]
        h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h).mean(1)


class Scale(nn.Module):
    """A custom module with its own parameters (no fast path)."""

    def __init__(self, d: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.randn(d) * 0.1)
        self.shift = nn.Parameter(torch.randn(d) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp() + torch.tanh(self.shift)


class CustomModel(nn.Module):
    """A custom module, a Linear used twice (shared layer) and a Conv1d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.scale = Scale(12)
        self.shared = nn.Linear(12, 12)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        h = self.scale(h)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(h)


class WideModel(nn.Module):
    """Layers wider than the batch: their statistics come from the per-layer Gram matrices (T = 3 and T = 1)."""

    def __init__(self):
        super().__init__()
        self.sequence_layer = nn.Linear(40, 60)
        self.wide = nn.Linear(60, 30)
        self.head = nn.Linear(30, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.sequence_layer(x)).mean(1)
        return self.head(torch.tanh(self.wide(h)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(inplace=True), nn.Linear(7, 5), nn.Sigmoid(), nn.Linear(5, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding="valid"), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3),
    )


def problem(kind: str, n: int = 6, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    """(model, inputs, targets, loss module) in float64."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model, x, y, loss = mlp(), torch.randn(n, 6), torch.randint(0, 3, (n,)), nn.CrossEntropyLoss()
    elif kind == "cnn":
        model, x, y, loss = cnn(), torch.randn(n, 2, 6, 6), torch.randint(0, 3, (n,)), nn.CrossEntropyLoss()
    elif kind == "attention":
        model, x, y, loss = AttentionModel(), torch.randn(n, 5, 3), torch.randint(0, 3, (n,)), nn.CrossEntropyLoss()
    elif kind == "gru":
        model, x, y, loss = GRUModel(), torch.randn(n, 4, 3), torch.randn(n, 2), nn.MSELoss()
    elif kind == "embedding":
        model, x, y = EmbeddingModel(), torch.randint(0, 11, (n, 5)), torch.randint(0, 3, (n,))
        x[0, :2] = 0  # padding
        x[1, 1] = x[1, 3]  # a repeated row within a sample
        loss = nn.CrossEntropyLoss()
    elif kind == "wide":
        model, x, y, loss = WideModel(), torch.randn(n, 3, 40), torch.randint(0, 3, (n,)), nn.CrossEntropyLoss()
    elif kind == "custom":
        model, x, y, loss = CustomModel(), torch.randn(n, 2, 4), torch.randint(0, 2, (n,)), nn.CrossEntropyLoss()
    else:
        raise ValueError(kind)
    model = model.double()
    if x.is_floating_point():
        x = x.double()
    if y.is_floating_point():
        y = y.double()
    return model, x, y, loss


KINDS = ("mlp", "cnn", "attention", "gru", "embedding", "custom", "wide")


def brute_force_per_sample_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module
) -> list[torch.Tensor]:
    """Per-sample gradients g_i = ∇ℓ_i by a Python loop of torch.autograd.grad, [N, *shape] per parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        li = loss(model(x[i:i + 1]), y[i:i + 1])
        rows.append(torch.autograd.grad(li, params, allow_unused=True))
    return [torch.stack([r[p] if r[p] is not None else torch.zeros_like(params[p]) for r in rows])
            for p in range(len(params))]
