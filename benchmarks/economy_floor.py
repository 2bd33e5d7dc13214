"""The floor of the ``economy`` set on the 784-1000-500-100-10 MLP: a plain training step against the same step
plus only the passes no implementation of Cockpit's economy quantities can avoid, written by hand (no trainspect).

Those passes, per step (batch 128, SGD with momentum, as in ``overhead.py``):

* alpha's per-sample directional derivatives along the momentum buffer, g_iᵀb = δ_iᵀ B a_i for every Linear layer
  (one [N, Din]×[Din, Dout] product each: a forward pass with b in place of the weights);
* the Gram matrices (a_i·a_j)(δ_i·δ_j) of the two wide layers (‖g_i‖² and g_iᵀḡ for the gradient tests);
* ``distance``: θ − θ₀ and its norm;
* the momentum buffers' norms (the length of the update, for alpha and ``update_size``).

Run::

    OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/economy_floor.py

and compare its ratio with ``overhead.py --economy-only``'s MLP row: the difference is what trainspect adds on
top of the arithmetic (histogram sampling and binning, the small tensor operations of the statistics, the engine).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from overhead import PROBLEMS


def main() -> None:
    torch.manual_seed(0)
    problem = PROBLEMS["mlp"]()
    model = problem.build()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [problem.batch(gen) for _ in range(16)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    differences = [torch.empty_like(p) for p in params]
    captured: dict[nn.Module, list[torch.Tensor | None]] = {}

    def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured[module] = [args[0].detach(), None]
        output.register_hook(lambda g, m=module: captured[m].__setitem__(1, g.detach()))

    for m in linears:
        m.register_forward_hook(forward_hook)

    def step(i: int, essential: bool) -> None:
        x, y = batches[i % len(batches)]
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        if essential and optimizer.state:
            n = x.shape[0]
            for m in linears:
                a, g = captured[m]
                g = g * n  # per-sample gradients of a mean loss
                ((a @ optimizer.state[m.weight]["momentum_buffer"].T) * g).sum(1)
                g @ optimizer.state[m.bias]["momentum_buffer"]
                if m.in_features * m.out_features > n * (m.in_features + m.out_features):
                    (a @ a.T) * (g @ g.T)
            for out, p, p0 in zip(differences, params, theta0):
                torch.sub(p.detach(), p0, out=out)
            [torch.dot(d.view(-1), d.view(-1)) for d in differences]
        optimizer.step()
        if essential:
            buffers = [optimizer.state[p]["momentum_buffer"].view(-1) for p in params]
            [torch.dot(b, b) for b in buffers]

    for i in range(20):
        step(i, False)
        step(i, True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for block in range(40):  # interleaved blocks: both variants see the same drift of the machine
        for essential in (False, True):
            for k in range(5):
                t0 = time.perf_counter()
                step(block * 5 + k, essential)
                times[essential].append(time.perf_counter() - t0)
    plain, floor = statistics.median(times[False]), statistics.median(times[True])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"plain step {plain * 1e3:.2f} ms, with the essential passes {floor * 1e3:.2f} ms")
    print(f"economy floor every step (mlp): {floor / plain:.2f}x")


if __name__ == "__main__":
    main()
