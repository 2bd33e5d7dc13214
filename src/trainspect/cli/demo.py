"""``trainspect demo``: train an MLP on digits with trainspect attached."""

from __future__ import annotations

import argparse

from trainspect.demo.scenarios import SCENARIOS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train an MLP on digits (no download) with trainspect attached",
                       description="Train a real digits MLP with trainspect attached and show what it finds. "
                                   "Scenarios: " + "; ".join(f"{s.name}: {s.description}"
                                                             for s in SCENARIOS.values()))
    p.add_argument("--scenario", default="healthy", choices=sorted(SCENARIOS),
                   help="a healthy run or a deliberately broken one (default: healthy)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruments", default="default", help="configuration name (default, cheap, ...)")
    p.add_argument("--runs", default="runs", help="folder that receives the run folder (default: runs)")
    p.add_argument("--run-dir", default=None, help="exact run folder (overrides --runs)")
    p.add_argument("--quiet", action="store_true", help="no live panel")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: for a model this small, more threads only add overhead)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from trainspect.demo.run import run_demo
    from trainspect.views.summary import print_summary

    run_dir = run_demo(
        args.scenario, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        runs_root=args.runs, run_dir=args.run_dir, instruments=args.instruments,
        progress=False if args.quiet else "auto", threads=args.threads,
    )
    print_summary(run_dir)
    print(f"\nrun stored in {run_dir}  ·  `trainspect show {run_dir}` prints this summary again")
    return 0
