"""Per-step overhead of trainspect: a plain training step vs the same step with the inspector attached.

Models shaped like Cockpit's benchmark problems, on random inputs of MNIST shape, batch 128:
the 784-1000-500-100-10 ReLU MLP and the "2c2d" CNN (two 5x5 conv layers of 32 and 64 channels with
max-pooling, a 1024-unit dense layer); and the tiny demo MLP on digits (batch 32).

Plain and inspected steps use two identical copies of the model and optimizer and are timed in interleaved
blocks in one process, so both see the same machine state; the ratio of the medians is reported (the targets are
stated in it), and beside it the ratio of the means, which includes the steps where periodic work runs, and a 90 %
bootstrap interval of the ratio of medians (``ratio_interval``: the blocks resampled in plain/inspected pairs), which
on a shared VM is the honest answer to whether a target is met.
Store writes are included (a real run folder in a temporary directory).

Run:  OMP_PROC_BIND=true OMP_PLACES=cores python benchmarks/overhead.py [--steps 300] [--threads 2]
Last line: ``default instruments overhead: X.XXx`` (default schedules and default checks, the larger of the MLP
and CNN ratios); the line before it isolates the checks: inspected step with / without the default checks.

Per-sample gradient rows (Cockpit's ``economy`` set every step and every 16 steps on the MLP, the CNN and a
small transformer, with Cockpit side by side where it is installed, and peak extra memory) are behind a
flag because Cockpit's side takes minutes:
    python benchmarks/overhead.py --economy            # after the default rows
    python benchmarks/overhead.py --economy-only [--no-cockpit] [--economy-steps 100]
ending with ``economy overhead every step: X.XXx`` (larger of MLP and CNN) and
``cockpit economy overhead every step: Y.YYx``.
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

import numpy as np
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


class SelfAttention(nn.Module):
    """Multi-head self-attention from nn.Linear projections (every parameter has a per-sample fast path)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = SelfAttention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallTransformer(nn.Module):
    """A 2-block pre-norm transformer encoder classifying token sequences (vocabulary 32, length 32, width 64)."""

    def __init__(self, vocab: int = 32, length: int = 32, d: int = 64, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.position = nn.Embedding(length, d)
        self.blocks = nn.Sequential(TransformerBlock(d, heads), TransformerBlock(d, heads))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        h = self.blocks(self.embedding(tokens) + self.position(positions))
        return self.head(self.norm(h).mean(1))


def sequence_batch(gen: torch.Generator, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic task: the class is the sum of the tokens modulo 10."""
    tokens = torch.randint(0, 32, (n, 32), generator=gen)
    return tokens, tokens.sum(1) % 10


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "mlp": lambda: Problem("mlp-784", mlp_784, mnist_batch),
    "cnn": lambda: Problem("cnn-2c2d", cnn_2c2d, mnist_batch),
    "digits": digits_problem,
    "transformer": lambda: Problem("transformer", SmallTransformer, sequence_batch),
}


def training_setup(problem: Problem) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, list[Any]]:
    """The benchmarks' training set-up for one problem: the model (seed 0), cross-entropy, SGD with momentum and
    16 batches (seed 0)."""
    torch.manual_seed(0)
    model = problem.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    return model, nn.CrossEntropyLoss(), optimizer, [problem.batch(gen) for _ in range(16)]


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
    # the mean too: periodic work (per-layer instruments every 10 steps, the deferred checks every 16) falls
    # outside the median
    mean_ratio = statistics.fmean(inspected) / statistics.fmean(plain)
    low, high = ratio_interval(plain, inspected, block)
    return {"plain": p, "inspected": q, "ratio": q / p, "mean_ratio": mean_ratio, "ratio_low": low,
            "ratio_high": high}


def ratio_interval(plain: list[float], inspected: list[float], block: int, level: float = 0.9,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A ``level`` bootstrap interval of the ratio of medians, resampling the interleaved blocks in pairs.

    Plain block k and inspected block k ran back to back (``measure``), so they share the machine's state of that
    moment; drawing blocks with replacement, each plain block together with its inspected partner, keeps that
    pairing and the steps' correlation within a block (a block bootstrap, as for any dependent series). The
    percentile interval of the resampled ratios says how far this run's ratio may be from the machine's, which on
    a shared VM whose plain step drifts by tens of percent is what decides whether a target is met.
    """
    blocks = min(len(plain), len(inspected)) // block
    if blocks < 2:
        return float("nan"), float("nan")
    a = np.asarray(plain[:blocks * block]).reshape(blocks, block)
    b = np.asarray(inspected[:blocks * block]).reshape(blocks, block)
    picks = np.random.default_rng(seed).integers(0, blocks, size=(resamples, blocks))
    ratios = np.median(b[picks].reshape(resamples, -1), axis=1) / np.median(a[picks].reshape(resamples, -1), axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1.0 - tail))


def measure_cockpit(problem: Problem, label: str, *, interval: int, steps: int, block: int = 5,
                    warmup: int = 3) -> dict[str, float] | None:
    """Like :func:`measure`, with Cockpit (BackPACK) instead of trainspect: its configuration ``label``
    tracked every ``interval`` steps, used as its documentation shows (extended model and loss, a second
    unreduced loss for the individual losses). None if Cockpit cannot be imported."""
    try:
        import warnings

        warnings.filterwarnings("ignore")
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration
        from cockpit.utils.schedules import linear
    except Exception:
        return None
    torch.manual_seed(0)
    model_plain = problem.build()
    model_cockpit = extend(copy.deepcopy(model_plain))
    loss_fn = nn.CrossEntropyLoss()
    loss_cockpit = extend(nn.CrossEntropyLoss())
    individual = nn.CrossEntropyLoss(reduction="none")
    opt_plain = torch.optim.SGD(model_plain.parameters(), lr=0.01, momentum=0.9)
    opt_cockpit = torch.optim.SGD(model_cockpit.parameters(), lr=0.01, momentum=0.9)
    cockpit = Cockpit(model_cockpit.parameters(), quantities=configuration(label, track_schedule=linear(interval)))
    gen = torch.Generator().manual_seed(0)
    batches = [problem.batch(gen) for _ in range(16)]
    global_step = [0]

    def plain_step(i: int) -> None:
        x, y = batches[i % len(batches)]
        opt_plain.zero_grad()
        loss_fn(model_plain(x), y).backward()
        opt_plain.step()

    def cockpit_step(i: int) -> None:
        x, y = batches[i % len(batches)]
        opt_cockpit.zero_grad()
        out = model_cockpit(x)
        loss = loss_cockpit(out, y)
        losses = individual(out, y)
        step = global_step[0]
        with cockpit(step, info={"batch_size": x.shape[0], "individual_losses": losses, "loss": loss,
                                 "optimizer": opt_cockpit}):
            loss.backward(create_graph=cockpit.create_graph(step))
        opt_cockpit.step()
        global_step[0] += 1

    for i in range(warmup):
        plain_step(i)
        cockpit_step(i)
    plain: list[float] = []
    inspected: list[float] = []
    i = 0
    while len(plain) < steps:
        for fn, out in ((plain_step, plain), (cockpit_step, inspected)):
            for k in range(block):
                t0 = time.perf_counter()
                fn(i + k)
                out.append(time.perf_counter() - t0)
        i += block
    p, q = statistics.median(plain), statistics.median(inspected)
    return {"plain": p, "inspected": q, "ratio": q / p}


def peak_memory_extra(problem_key: str, instruments: str, schedule: int, steps: int = 6) -> float:
    """Peak extra resident memory (MiB) of inspected over plain training, each in a fresh subprocess.

    Once the model, optimizer and (inspected) inspector exist, the process's peak-RSS mark is reset
    (``/proc/self/clear_refs``, Linux); the peak growth above the RSS at that point is measured over ``steps`` + 1
    steps, the first included: what the inspector allocates once and keeps (θ₀ for ``distance``, the per-sample
    workspace reused from step to step) counts, and torch's own first-step allocations cancel against the plain
    run's. Returns NaN where that is not available."""
    import subprocess
    import sys

    def peak(mode: str) -> float:
        code = (
            "import sys, re, warnings, tempfile; warnings.filterwarnings('ignore'); "
            f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r}); "
            "import torch; from torch import nn; import trainspect; from overhead import PROBLEMS; "
            f"torch.set_num_threads(2); p = PROBLEMS[{problem_key!r}](); torch.manual_seed(0); m = p.build(); "
            "lf = nn.CrossEntropyLoss(); o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9); "
            "g = torch.Generator().manual_seed(0); b = [p.batch(g) for _ in range(4)]; "
            f"insp = trainspect.attach(m, o, lf, run_dir=tempfile.mkdtemp() + '/r', instruments={instruments!r}, "
            f"schedule={schedule}, checks=None, progress=False) if {mode == 'inspected'} else None\n"
            "def kb(key):\n"
            "    return float(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "def step(i):\n"
            "    x, y = b[i % 4]; o.zero_grad()\n"
            "    if insp is None:\n        lf(m(x), y).backward()\n"
            "    else:\n        with insp.step(x, y):\n            lf(m(x), y).backward()\n"
            "    o.step()\n"
            "open('/proc/self/clear_refs', 'w').write('5'); base = kb('VmRSS')\n"
            f"for i in range({steps} + 1):\n    step(i)\n"
            "print(kb('VmHWM') - base)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1]) / 1024

    try:
        return peak("inspected") - peak("plain")
    except Exception:
        return float("nan")


STORE_MODES: dict[str, Any] = {"auto": True, "process": "process", "sync": "sync", "none": False}


def economy_rows(args: argparse.Namespace) -> None:
    """Per-sample gradient instruments (issue 3): Cockpit's ``economy`` set every step and every 16 steps,
    trainspect and (where it imports) Cockpit side by side; peak extra memory of trainspect's economy."""
    print()
    print("economy configuration (Cockpit's set: alpha, distance, grad_hist_1d, grad_norm, inner_test, loss, "
          "norm_test, ortho_test, update_size); SGD with momentum, batch 128")
    print(f"{'problem':<12} {'system / interval':<30} {'plain ms':>9} {'inspected ms':>13} {'ratio':>7} "
          f"{'peak extra MiB':>15} {'90% interval':>14}")
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    for key in args.economy_problems.split(","):
        problem = PROBLEMS[key]()
        for interval in (1, 16):
            r = measure(problem, "economy", schedule=interval, steps=args.economy_steps, block=5, warmup=5,
                        checks=None, attach_kwargs={"store": STORE_MODES[args.store]})
            memory = peak_memory_extra(key, "economy", interval) if interval == 1 and args.memory else float("nan")
            if interval == 1:
                ours[key] = r["ratio"]
            print(f"{problem.name:<12} {'trainspect every ' + str(interval):<30} {1e3 * r['plain']:>9.3f} "
                  f"{1e3 * r['inspected']:>13.3f} {r['ratio']:>6.2f}x {memory:>15.1f} "
                  f"{r['ratio_low']:>7.2f}–{r['ratio_high']:.2f}x", flush=True)
        if key == "transformer" or not args.cockpit:
            continue  # BackPACK has no LayerNorm/attention support (cockpit.md §5.1)
        for interval in (1, 16):
            c = measure_cockpit(problem, "economy", interval=interval, steps=args.cockpit_steps)
            if c is None:
                print(f"{problem.name:<12} {'cockpit':<30} (not installed: pip install '.[cockpit]')")
                break
            if interval == 1:
                theirs[key] = c["ratio"]
            print(f"{problem.name:<12} {'cockpit every ' + str(interval):<30} {1e3 * c['plain']:>9.3f} "
                  f"{1e3 * c['inspected']:>13.3f} {c['ratio']:>6.2f}x", flush=True)
    big = [ours[k] for k in ("mlp", "cnn") if k in ours]
    if big:
        print(f"economy overhead every step: {max(big):.2f}x")
    if "transformer" in ours:
        print(f"economy overhead every step (transformer): {ours['transformer']:.2f}x")
    big_c = [theirs[k] for k in ("mlp", "cnn") if k in theirs]
    if big_c:
        print(f"cockpit economy overhead every step: {max(big_c):.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant and row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--problems", default="mlp,cnn,digits")
    parser.add_argument("--store", default="auto", choices=["auto", "process", "sync", "none"],
                        help="run store: automatic choice (default), writer process, in-process commits, or none")
    parser.add_argument("--economy", action="store_true",
                        help="also the per-sample gradient rows (economy every step / every 16, Cockpit side by side)")
    parser.add_argument("--economy-only", action="store_true", help="only the economy rows")
    parser.add_argument("--economy-problems", default="mlp,cnn,transformer")
    parser.add_argument("--economy-steps", type=int, default=100, help="timed steps per economy row")
    parser.add_argument("--cockpit", action=argparse.BooleanOptionalAction, default=True,
                        help="time Cockpit's economy set side by side where it is installed")
    parser.add_argument("--cockpit-steps", type=int, default=20, help="timed steps per Cockpit row (it is slow)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure peak extra memory of the economy rows (subprocesses)")
    args = parser.parse_args(argv)
    if args.economy_only:
        torch.set_num_threads(args.threads)
        economy_rows(args)
        return 0
    torch.set_num_threads(args.threads)
    rows = [
        ("default schedules", "default", None, "default"),
        ("default schedules, no checks", "default", None, None),
        ("every instrument every step", "cheap", 1, "default"),
    ]
    results: dict[tuple[str, str], dict[str, float]] = {}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps per variant")
    print(f"{'problem':<12} {'configuration':<30} {'plain ms':>9} {'inspected ms':>13} {'ratio':>7} {'mean ratio':>11} "
          f"{'90% interval':>14}")
    for key in args.problems.split(","):
        problem = PROBLEMS[key]()
        for label, instruments, schedule, checks in rows:
            store = STORE_MODES[args.store]
            r = measure(problem, instruments, schedule=schedule, steps=args.steps, checks=checks,
                        attach_kwargs={"store": store})
            results[(key, label)] = r
            print(f"{problem.name:<12} {label:<30} {1e3 * r['plain']:>9.3f} {1e3 * r['inspected']:>13.3f} "
                  f"{r['ratio']:>6.2f}x {r['mean_ratio']:>10.2f}x {r['ratio_low']:>7.2f}–{r['ratio_high']:.2f}x",
                  flush=True)
    big = [results[(k, "default schedules")]["ratio"] for k in ("mlp", "cnn") if (k, "default schedules") in results]
    # what the default checks (and the probes they add: activations, loss input, input scale, grad at step
    # start, non-finite origin) cost on top of the default instruments: a ratio of the two rows' ratios, each
    # against its own plain steps (the rows run minutes apart, and the machine's speed drifts between them)
    with_checks = [results[(k, "default schedules")]["ratio"] / results[(k, "default schedules, no checks")]
                   ["ratio"] for k in ("mlp", "cnn") if (k, "default schedules, no checks") in results]
    if with_checks:
        print(f"default checks overhead (on top of the default instruments): {max(with_checks):.2f}x")
    if big:
        print(f"default instruments overhead: {max(big):.2f}x")
    if args.economy:
        economy_rows(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
