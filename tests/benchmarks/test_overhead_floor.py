"""The floor loop of ``benchmarks/overhead_floor.py`` does the work the default instruments do: its stored gradient
norms (large ones from the hooks, small ones from one foreach call) equal float64 norms of the gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from overhead_floor import HOT_MIN_NUMEL, FloorLoop
from trainspect.store import open_run
from trainspect.store.writer import StoreWriter


def test_floor_loop_stores_the_gradient_norms(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 3))
    assert any(p.numel() >= HOT_MIN_NUMEL for p in net.parameters())  # both paths are exercised
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    store = StoreWriter(tmp_path / "floor")
    loop = FloorLoop(net, opt, store)
    gen = torch.Generator().manual_seed(1)
    expected, losses = [], []
    for _ in range(3):
        x, y = torch.randn(16, 10, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        before = [p.detach().clone() for p in net.parameters()]
        # the gradient this step will have, computed independently on a copy of θ_t
        copy = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m
                               for m in net])
        with torch.no_grad():
            for q, b in zip(copy.parameters(), before):
                q.copy_(b)
        loss = loss_fn(copy(x), y)
        grads = torch.autograd.grad(loss, list(copy.parameters()))
        expected.append([float(g.double().norm()) for g in grads])
        losses.append(loss.item())
        loop.step(x, y, loss_fn)
    store.close()
    run = open_run(tmp_path / "floor")
    np.testing.assert_allclose(run.series("layer_grad_norm").values, np.array(expected), rtol=1e-5)
    np.testing.assert_allclose(run.series("loss").values, np.array(losses), rtol=1e-6)
