"""Per-step cost of the default checks, measured inside the inspector, against a plain training step.

The time of every default check's ``observe`` and of the probes the checks add (activation hooks and
statistics, loss-input and input-scale statistics, ``.grad`` norms at step start, non-finite origin) is
summed per step with ``time.perf_counter`` and compared with the median plain step of the same model in
the same process. This isolates what the checks cost from the instruments and the store, which
``benchmarks/overhead.py`` measures as a whole (rows "default schedules" vs "default schedules, no checks").

Run:  OMP_PROC_BIND=true OMP_PLACES=cores PYTHONPATH=src python benchmarks/checks_cost.py [--steps 200]
Last line: ``default checks cost: X.XXx a plain step`` (the larger of the 784-MLP and 2c2d-CNN).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainspect
from overhead import PROBLEMS, training_setup
from trainspect.providers.activations import Activations
from trainspect.providers.step_start import GradientsAtStepStart

ADDED_INSTRUMENTS = ("activations", "loss_input", "input_scale", "grad_at_step_start", "nonfinite_origin")


def _timed(obj, attr: str, bucket: list[float]) -> None:  # type: ignore[no-untyped-def]
    fn = getattr(obj, attr)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t0)

    setattr(obj, attr, wrapper)


def measure(key: str, steps: int) -> dict[str, float]:
    model, loss_fn, opt, batches = training_setup(PROBLEMS[key]())
    spent: list[float] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        insp = trainspect.attach(model, opt, loss_fn, run_dir=tmp + "/run", progress=False)
        insp.terminal.summary = lambda _i: None  # type: ignore[method-assign]
        insp.terminal.write_finding = lambda *a, **k: None  # type: ignore[method-assign]
        for check in insp.checks:
            _timed(check, "observe", spent)
        for inst in insp.instruments:
            if inst.name in ADDED_INSTRUMENTS:
                _timed(inst, "compute", spent)
        for cls in (Activations, GradientsAtStepStart):
            prov = insp.provider(cls.name)
            for attr in ("arm", "disarm", "compute"):
                _timed(prov, attr, spent)
        per_step: list[float] = []
        for i in range(steps):
            x, y = batches[i % len(batches)]
            t0 = time.perf_counter()  # a plain step of the same model (no inspector block)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            plain.append(time.perf_counter() - t0)
            before = len(spent)
            opt.zero_grad()
            with insp.step(x, y):
                loss = loss_fn(model(x), y)
                loss.backward()
            opt.step()
            # activation hooks run inside the user's forward: their cost is in the forward hook calls, which
            # the provider's compute/arm/disarm timers do not see; they run on 1 step in 10 and are included
            # in overhead.py's end-to-end rows
            per_step.append(sum(spent[before:]))
        insp.close()
    p = statistics.median(plain)
    c = statistics.mean(per_step)
    return {"plain_ms": 1e3 * p, "checks_ms": 1e3 * c, "ratio": (p + c) / p}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--problems", default="digits,mlp,cnn")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    big = []
    for key in args.problems.split(","):
        r = measure(key, args.steps)
        print(f"{key:8s} plain step {r['plain_ms']:8.3f} ms   default checks {r['checks_ms']:7.3f} ms/step (mean)   "
              f"{r['ratio']:.3f}x", flush=True)
        if key in ("mlp", "cnn"):
            big.append(r["ratio"])
    if big:
        print(f"default checks cost: {max(big):.3f}x a plain step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
