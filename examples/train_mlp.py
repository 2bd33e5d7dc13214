"""A plain PyTorch training script, with no trainspect in it.

    python examples/train_mlp.py --epochs 3            # trains
    trainspect run examples/train_mlp.py --epochs 3    # trains, with trainspect attached

Classifies points of three noisy interleaved spirals (generated here: no download) with a small MLP.
"""

import argparse
import math

import torch
from torch import nn


def spirals(n_per_class: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(3):
        t = torch.linspace(0.2, 1.0, n_per_class)
        angle = 3.0 * t + 2.0 * math.pi * k / 3 + noise * torch.randn(n_per_class, generator=g)
        xs.append(torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1))
        ys.append(torch.full((n_per_class,), k))
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x, y = spirals(200, noise=0.15, seed=args.seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), args.batch_size):
            idx = order[start:start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        model.train()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, train accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
