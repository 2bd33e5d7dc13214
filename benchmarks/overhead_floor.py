"""The floor under the default instruments' overhead: hand-written training loops that do only what the default
configuration must do on every step, timed side by side with a plain step and with trainspect itself.

The default instruments need, on every step, the loss as a float and the gradient norm of every parameter tensor
(grad_norm, and the non-finite test, which reads the norms); the run store needs one frame per step, because a
killed process may lose at most the last step. The variants, all on identical copies of the model and optimizer,
timed in interleaved blocks in one process (as ``overhead.py``):

* ``plain``: forward, backward, SGD step.
* ``floor: loss + norms``: plain, plus ``loss.item()`` and the per-tensor gradient norms the cheapest way found
  (squared norms of the large gradients by ``torch.dot`` in a post-accumulate-grad hook while they are in cache,
  the others by one ``torch._foreach_norm``), read back in one ``torch.stack(...).tolist()``. No record, no store.
* ``floor: + store frame``: also one binary step frame (loss, global norm, learning rate, step time, the norm
  vector) through trainspect's store writer (the shared-memory ring, committed by the writer process).
* ``trainspect default``: ``trainspect.attach(..., instruments="default", checks="default")``.

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/overhead_floor.py [--steps 300] [--problems mlp,digits]

Medians and means are printed (the median is what ``overhead.py``'s targets are stated in; the mean includes
the steps where periodic work runs, e.g. the deferred checks every 16 steps).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import trainspect
from overhead import PROBLEMS, Problem
from trainspect.engine.record import StepRecord
from trainspect.engine.values import SeriesInfo
from trainspect.store.writer import StoreWriter

#: gradients with at least this many elements get their squared norm in a hook (as trainspect's provider)
HOT_MIN_NUMEL = 1 << 16


class FloorLoop:
    """One training loop with the minimum per-step work of the default instruments (and optionally a store)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, store: StoreWriter | None):
        self.model, self.optimizer, self.store = model, optimizer, store
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.hot: dict[int, torch.Tensor] = {}
        self.large = [i for i, p in enumerate(self.params) if p.numel() >= HOT_MIN_NUMEL]
        self.small = [i for i in range(len(self.params)) if i not in self.large]
        for i in self.large:
            self.params[i].register_post_accumulate_grad_hook(self._hook(i))
        self.step_index = 0
        if store is not None:
            store.open({}, [{"name": f"p{i}", "module": "", "module_class": "", "shape": list(p.shape),
                             "numel": p.numel()} for i, p in enumerate(self.params)])

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            flat = p.grad.detach().view(-1)  # type: ignore[union-attr]
            self.hot[index] = torch.dot(flat, flat)
        return hook

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> None:
        t0 = time.perf_counter()
        self.optimizer.zero_grad()
        loss = loss_fn(self.model(x), y)
        loss.backward()
        loss_value = loss.item()
        grads = [p.grad for p in self.params]
        squares: list[torch.Tensor] = [None] * len(grads)  # type: ignore[list-item]
        for i in self.large:
            squares[i] = self.hot[i]
        if self.small:
            for i, norm in zip(self.small, torch._foreach_norm([grads[i] for i in self.small])):
                squares[i] = norm
        read = torch.stack(squares).tolist()
        norms = [math.sqrt(v) if i in self.hot else v for i, v in enumerate(read)]
        grad_norm = math.sqrt(sum(v * v for v in norms))
        self.optimizer.step()
        if self.store is not None:
            record = StepRecord(self.step_index, time.time(), time.perf_counter() - t0, 0.0, True)
            record.scalars.update(loss=loss_value, grad_norm=grad_norm, lr=self.optimizer.param_groups[0]["lr"],
                                  step_time=record.user_seconds)
            record.layers["layer_grad_norm"] = np.array(norms)
            if self.step_index == 0:  # the series are described once, as the engine does
                record.new_series = [("floor", SeriesInfo(name, "scalar", name, "")) for name in record.scalars]
                record.new_series.append(("floor", SeriesInfo("layer_grad_norm", "layers", "norms", "")))
            self.store.write_step(record)
        self.step_index += 1


def measure(problem: Problem, *, steps: int, block: int = 10, warmup: int = 20) -> dict[str, tuple[float, float]]:
    """(median, mean) seconds per step of each variant, timed in interleaved blocks."""
    torch.manual_seed(0)
    base = problem.build()
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    batches = [problem.batch(gen) for _ in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
            model = copy.deepcopy(base)
            return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        m_plain, o_plain = fresh()
        m_floor, o_floor = fresh()
        m_store, o_store = fresh()
        m_insp, o_insp = fresh()
        store = StoreWriter(tmp + "/floor")
        floor = FloorLoop(m_floor, o_floor, None)
        floor_store = FloorLoop(m_store, o_store, store)
        inspector = trainspect.attach(m_insp, o_insp, loss_fn, run_dir=tmp + "/run", instruments="default",
                                      checks="default", progress=False)
        inspector.terminal.summary = lambda _inspector: None  # type: ignore[method-assign]

        def plain(i: int) -> None:
            x, y = batches[i % 16]
            o_plain.zero_grad()
            loss_fn(m_plain(x), y).backward()
            o_plain.step()

        def inspected(i: int) -> None:
            x, y = batches[i % 16]
            o_insp.zero_grad()
            with inspector.step(x, y):
                loss_fn(m_insp(x), y).backward()
            o_insp.step()

        variants: dict[str, Callable[[int], None]] = {
            "plain": plain,
            "floor: loss + norms": lambda i: floor.step(*batches[i % 16], loss_fn),
            "floor: + store frame": lambda i: floor_store.step(*batches[i % 16], loss_fn),
            "trainspect default": inspected,
        }
        for i in range(warmup):
            for fn in variants.values():
                fn(i)
        times: dict[str, list[float]] = {k: [] for k in variants}
        i = 0
        while len(times["plain"]) < steps:
            for name, fn in variants.items():
                for k in range(block):
                    t0 = time.perf_counter()
                    fn(i + k)
                    times[name].append(time.perf_counter() - t0)
            i += block
        inspector.close()
        store.close()
    return {k: (statistics.median(v), statistics.fmean(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--problems", default="mlp,digits")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps per variant")
    print(f"{'problem':<12} {'variant':<22} {'median ms':>10} {'ratio':>7} {'mean ms':>9} {'ratio':>7}")
    for key in args.problems.split(","):
        problem = PROBLEMS[key]()
        result = measure(problem, steps=args.steps)
        p_median, p_mean = result["plain"]
        for name, (median, mean) in result.items():
            print(f"{problem.name:<12} {name:<22} {1e3 * median:>10.3f} {median / p_median:>6.3f}x "
                  f"{1e3 * mean:>9.3f} {mean / p_mean:>6.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
