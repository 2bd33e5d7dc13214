"""Per-step overhead of trainspect: a plain training step vs the same step with the inspector attached.

Models shaped like Cockpit's benchmark problems, on random inputs of MNIST shape, batch 128:
the 784-1000-500-100-10 ReLU MLP and the "2c2d" CNN (two 5x5 conv layers of 32 and 64 channels with
max-pooling, a 1024-unit dense layer); and the tiny demo MLP on digits (batch 32).

Plain and inspected steps use two identical copies of the model and optimizer and are timed in interleaved
blocks in one process, so both see the same machine state; the ratio of the medians is reported.
Store writes are included (a real run folder in a temporary directory).

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/overhead.py [--steps 300] [--threads 2]
Last line: ``default instruments overhead: X.XXx`` (default schedules, the larger of the MLP and CNN ratios).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import trainspect


def mlp_784() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
                         nn.Linear(500, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn_2c2d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )


@dataclass
class Problem:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def mnist_batch(gen: torch.Generator, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def digits_problem() -> Problem:
    from trainspect.demo.digits import digits_mlp, load_digits

    data = load_digits()

    def batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(data.x_train), (32,), generator=gen)
        return data.x_train[idx], data.y_train[idx]

    return Problem("digits-mlp", lambda: digits_mlp((128, 64)), batch)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "mlp": lambda: Problem("mlp-784", mlp_784, mnist_batch),
    "cnn": lambda: Problem("cnn-2c2d", cnn_2c2d, mnist_batch),
    "digits": digits_problem,
}


def measure(problem: Problem, instruments: Any, *, steps: int, block: int = 10, warmup: int = 20,
            schedule: Any = None, checks: Any = "default", attach_kwargs: dict[str, Any] | None = None,
            ) -> dict[str, float]:
    """Median seconds per plain step and per inspected step, timed in interleaved blocks."""
    torch.manual_seed(0)
    model_plain = problem.build()
    model_inspected = copy.deepcopy(model_plain)
    loss_fn = nn.CrossEntropyLoss()
    opt_plain = torch.optim.SGD(model_plain.parameters(), lr=0.01, momentum=0.9)
    opt_inspected = torch.optim.SGD(model_inspected.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [problem.batch(gen) for _ in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        inspector = trainspect.attach(model_inspected, opt_inspected, loss_fn, run_dir=tmp + "/run",
                                      instruments=instruments, schedule=schedule, checks=checks,
                                      progress=False, **(attach_kwargs or {}))
        # the terminal summary at close would clutter the benchmark output
        inspector.terminal.summary = lambda _inspector: None  # type: ignore[method-assign]

        def plain_step(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt_plain.zero_grad()
            loss = loss_fn(model_plain(x), y)
            loss.backward()
            opt_plain.step()

        def inspected_step(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt_inspected.zero_grad()
            with inspector.step(x, y):
                loss = loss_fn(model_inspected(x), y)
                loss.backward()
            opt_inspected.step()

        for i in range(warmup):
            plain_step(i)
            inspected_step(i)
        plain: list[float] = []
        inspected: list[float] = []
        i = 0
        while len(plain) < steps:
            for fn, out in ((plain_step, plain), (inspected_step, inspected)):
                for k in range(block):
                    t0 = time.perf_counter()
                    fn(i + k)
                    out.append(time.perf_counter() - t0)
            i += block
        inspector.close()
    p, q = statistics.median(plain), statistics.median(inspected)
    return {"plain": p, "inspected": q, "ratio": q / p}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant and row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--problems", default="mlp,cnn,digits")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        ("default schedules", "default", None),
        ("every instrument every step", "cheap", 1),
    ]
    results: dict[tuple[str, str], dict[str, float]] = {}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps per variant")
    print(f"{'problem':<12} {'configuration':<30} {'plain ms':>9} {'inspected ms':>13} {'ratio':>7}")
    for key in args.problems.split(","):
        problem = PROBLEMS[key]()
        for label, instruments, schedule in rows:
            r = measure(problem, instruments, schedule=schedule, steps=args.steps)
            results[(key, label)] = r
            print(f"{problem.name:<12} {label:<30} {1e3 * r['plain']:>9.3f} {1e3 * r['inspected']:>13.3f} "
                  f"{r['ratio']:>6.2f}x", flush=True)
    big = [results[(k, "default schedules")]["ratio"] for k in ("mlp", "cnn") if (k, "default schedules") in results]
    if big:
        print(f"default instruments overhead: {max(big):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
