"""Profile trainspect's per-step cost on the tiny digits MLP (where fixed Python costs dominate).

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/profile_step.py [configuration] [--store sync]
Prints the functions with the most own time over 2000 inspected steps.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile

import torch
from torch import nn

import trainspect
from overhead import digits_problem


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configuration", nargs="?", default="default")
    parser.add_argument("--store", default="sync", choices=["process", "sync", "none"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = digits_problem()
    torch.manual_seed(0)
    model = problem.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    batches = [problem.batch(gen) for _ in range(16)]
    store = {"process": True, "sync": "sync", "none": False}[args.store]
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=tempfile.mkdtemp() + "/run",
                                  instruments=args.configuration, progress=False, store=store)

    def run(n: int) -> None:
        for i in range(n):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad()
            with inspector.step(x, y):
                loss_fn(model(x), y).backward()
            optimizer.step()

    run(50)
    profile = cProfile.Profile()
    profile.enable()
    run(args.steps)
    profile.disable()
    inspector.close()
    pstats.Stats(profile).sort_stats(args.sort).print_stats(35)


if __name__ == "__main__":
    main()
