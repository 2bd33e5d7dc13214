"""Overhead of trainspect under DDP: time per training step with and without trainspect, 2 gloo processes on CPU.

Each rank trains the 784-1000-500-100-10 MLP (Cockpit's benchmark problem) on random MNIST-shaped batches
of 64 per rank, wrapped in DistributedDataParallel. For each configuration a fresh model and optimizer are
timed in interleaved blocks against a plain DDP step (same process, same machine state); the ratio of the
median block times is reported. Under DDP trainspect adds, per step, the loss reduction of the global batch and
the end-of-phase agreement (about four small all-reduces), plus two per per-sample statistic set.

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/distributed_overhead.py [--steps 40] [--blocks 5]
      (``--world 1``: the same in one process, where the cross-rank protocol is skipped: the baseline)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

import trainspect

BATCH = 64


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(), nn.Linear(500, 100),
                         nn.ReLU(), nn.Linear(100, 10))


def _setup(config: str | None, run_dir: Path):
    model = nn.parallel.DistributedDataParallel(_mlp())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    inspector = None
    if config is not None:
        inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, instruments=config,
                                      progress=False, overwrite=True, checks="none")
    return model, optimizer, loss_fn, inspector


def _block(setup, batches) -> float:
    model, optimizer, loss_fn, inspector = setup
    torch.distributed.barrier()
    t0 = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        if inspector is None:
            loss_fn(model(x), y).backward()
        else:
            with inspector.step(x, y):
                loss_fn(model(x), y).backward()
        optimizer.step()
    torch.distributed.barrier()
    return (time.perf_counter() - t0) / len(batches)


def _worker(rank: int, world: int, init_file: str, out: str, steps: int, blocks: int, threads: int,
            configs: list[str]) -> None:
    torch.set_num_threads(threads)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=timedelta(seconds=120))
    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
               for _ in range(steps)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            plain = _setup(None, Path(tmp))
            inspected = _setup(config, Path(tmp) / config)
            _block(plain, batches[:5])
            _block(inspected, batches[:5])  # warm-up
            times_plain, times_inspected = [], []
            for _ in range(blocks):
                times_plain.append(_block(plain, batches))
                times_inspected.append(_block(inspected, batches))
            inspected[3].close()
            results[config] = {
                "plain_ms": 1e3 * statistics.median(times_plain),
                "inspected_ms": 1e3 * statistics.median(times_inspected),
            }
            results[config]["ratio"] = results[config]["inspected_ms"] / results[config]["plain_ms"]
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--configs", default="default,cheap,economy")
    parser.add_argument("--world", type=int, default=2, help="processes (1: the same code without the "
                        "distributed protocol, as a baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, args.world, str(Path(tmp) / "init"), str(out), args.steps,
                                                   args.blocks, args.threads, args.configs.split(",")))
                 for r in range(args.world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
        results = json.loads(out.read_text())
    print(f"DDP, {args.world} gloo process(es) x {args.threads} thread(s), MLP 784-1000-500-100-10, "
          f"batch {BATCH} per rank")
    for config, r in results.items():
        print(f"  {config:8s} plain {r['plain_ms']:7.2f} ms/step  with trainspect {r['inspected_ms']:7.2f} ms/step  "
              f"ratio {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
