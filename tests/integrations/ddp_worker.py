"""Worker of the DDP tests: run in 2 spawned processes (gloo backend, CPU).

Not a test module (no ``test_`` prefix): ``test_distributed.py`` spawns :func:`run` and reads the stores
rank 0 wrote. Each scenario trains a tiny float64 MLP for a few steps with trainspect attached.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

import trainspect
from trainspect.engine import distributed as dist_utils
from trainspect.engine.values import SeriesInfo
from trainspect.instruments import Instrument

IN, HIDDEN, OUT = 5, 7, 3
LOCAL_BATCH = 6
STEPS = 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).double()


def global_batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batch of every step (world × LOCAL_BATCH samples); rank r trains on its r-th slice."""
    g = torch.Generator().manual_seed(1)
    n = world * LOCAL_BATCH
    return [
        (torch.randn(n, IN, generator=g, dtype=torch.float64), torch.randint(0, OUT, (n,), generator=g))
        for _ in range(STEPS)
    ]


def train(model: nn.Module, batches, run_dir, instruments, *, rank: int = 0, world: int = 1,
          ddp: bool = False, poison: tuple[int, int] | None = None) -> None:
    """Train with trainspect attached; rank r uses its slice of each global batch."""
    module = nn.parallel.DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(module, optimizer, loss_fn, run_dir=run_dir, instruments=instruments,
                                  progress=False, overwrite=True)
    for step, (x, y) in enumerate(batches):
        lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
        x, y = (x[lo:hi], y[lo:hi]) if ddp else (x, y)
        if poison is not None and poison == (step, rank):
            x = x.clone()
            x[0, 0] = float("nan")
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss = loss_fn(module(x), y)
            loss.backward()
        optimizer.step()
    inspector.close()


def plain_ddp(model: nn.Module, batches, rank: int) -> None:
    """The same DDP training without trainspect."""
    module = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
        optimizer.zero_grad()
        loss_fn(module(x[lo:hi]), y[lo:hi]).backward()
        optimizer.step()


# -- instruments of the failure scenario (names set after class creation: not registered globally) -----
class FailsOnRankOne(Instrument):
    """Reduces a partial sum on every rank, except rank 1, where it raises from step 1 on."""

    series = (SeriesInfo("fails_on_rank_one", "scalar", "test value"),)

    def compute(self, ctx):
        if dist_utils.rank() == 1 and ctx.step >= 1:
            raise RuntimeError("deliberate failure on rank 1")
        (total,) = dist_utils.all_reduce_sum([torch.tensor(1.0)])
        return {"fails_on_rank_one": total}


class SumOfRanks(Instrument):
    """Σ_r (r + 1) over ranks, through all_reduce_sum (3 with 2 ranks) after the failing instrument."""

    series = (SeriesInfo("sum_of_ranks", "scalar", "test value"),)

    def compute(self, ctx):
        (total,) = dist_utils.all_reduce_sum([torch.tensor(float(dist_utils.rank() + 1))])
        return {"sum_of_ranks": total}


FailsOnRankOne.name = "fails_on_rank_one"
SumOfRanks.name = "sum_of_ranks"

CHEAP = ["loss", "grad_norm", "learning_rate", "nonfinite", "param_norm", "update_size", "update_to_weight",
         "distance"]
#: every instrument built on per-sample statistics (Cockpit's economy set and more): sums all-reduced over ranks
PER_SAMPLE = ["loss", "alpha", "norm_test", "inner_test", "ortho_test", "mean_gsnr", "cabs", "early_stopping",
              "grad_hist_1d", "layer_grad_hist_1d", "grad_hist_2d", "layer_grad_hist_2d"]


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    out = Path(out_dir)
    try:
        batches = global_batches(world)
        # 1. every cheap instrument, DDP over `world` ranks (compared with one process by the test)
        train(make_model(), batches, out / "ddp", {name: 1 for name in CHEAP}, rank=rank, world=world, ddp=True)
        # 1b. the per-sample (economy) instruments
        train(make_model(), batches, out / "per_sample", {name: 1 for name in PER_SAMPLE}, rank=rank, world=world,
              ddp=True)
        # 2. an instrument that fails on rank 1 only, then one that reduces: no hang, values still right
        train(make_model(), batches, out / "failure", [FailsOnRankOne(1), SumOfRanks(1), "loss"],
              rank=rank, world=world, ddp=True)
        # 3. a NaN in rank 1's batch at step 2: the finding names rank 1
        train(make_model(), batches, out / "nan", ["loss", "nonfinite"], rank=rank, world=world, ddp=True,
              poison=(2, 1))
        # 4. trainspect attached on rank 0 only (a common slip): no hang, rank 0 records its own values
        dist_utils.ATTACH_TIMEOUT_S = 3.0
        if rank == 0:
            train(make_model(), batches, out / "rank0_only", ["loss", "grad_norm"], rank=rank, world=world, ddp=True)
        else:
            plain_ddp(make_model(), batches, rank)
        torch.distributed.barrier()
        (out / f"done-{rank}.json").write_text(json.dumps({"rank": rank, "pid": os.getpid()}))
    finally:
        torch.distributed.destroy_process_group()
