"""How much a plain training step slows when other code runs between its steps, by the kind of that code.

A plain training loop of the digits MLP; after each step one of: nothing, a tight Python loop, varied library
code (JSON, NumPy, sorting, string formatting), small tensor operations. Prints the cost of that code alone and
the medians of the step's forward, loss + backward and optimizer phases. The point (``docs/engine.md``): the
step slows with how many *different* things run between its steps, not with how long they take.

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/step_pollution.py [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from overhead import PROBLEMS, training_setup

_TABLE = {f"k{i}": float(i) for i in range(40)}


def tight_loop(n: int = 3000) -> float:
    s = 0.0
    for i in range(n):
        s += i * 0.5
    return s


def varied_code(n: int = 6) -> None:
    for _ in range(n):
        json.dumps(_TABLE)
        np.array(list(_TABLE.values())).sum()
        sorted(_TABLE.items())
        math.fsum(_TABLE.values())
        str(_TABLE)[:10]


def tensor_ops(n: int = 6) -> None:
    t = torch.ones(8)
    for _ in range(n):
        torch.stack([t.sum(), t.mean()]).tolist()
        (t * 2).max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, loss_fn, optimizer, batches = training_setup(PROBLEMS["digits"]())
    between: dict[str, Callable[[], object]] = {
        "nothing": lambda: None, "tight loop": tight_loop, "varied code": varied_code, "tensor ops": tensor_ops,
    }
    clock = time.perf_counter
    print(f"{'between steps':<14} {'its cost µs':>11} {'forward µs':>11} {'loss+backward µs':>17} {'optimizer µs':>13}")
    for name, code in between.items():
        t0 = clock()
        for _ in range(100):
            code()
        cost = (clock() - t0) / 100
        forward, backward, step = [], [], []
        for i in range(args.steps):
            x, y = batches[i % 16]
            optimizer.zero_grad()
            t1 = clock()
            out = model(x)
            t2 = clock()
            loss_fn(out, y).backward()
            t3 = clock()
            optimizer.step()
            t4 = clock()
            code()
            if i >= 50:
                forward.append(t2 - t1)
                backward.append(t3 - t2)
                step.append(t4 - t3)
        print(f"{name:<14} {1e6 * cost:>11.1f} {1e6 * statistics.median(forward):>11.1f} "
              f"{1e6 * statistics.median(backward):>17.1f} {1e6 * statistics.median(step):>13.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
