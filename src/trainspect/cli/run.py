"""``trainspect run script.py [args...]``: run an unmodified training script with trainspect attached."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an unmodified training script with trainspect attached (like python -m cProfile)",
        description="Run SCRIPT as __main__ with its own arguments. trainspect finds the model, optimizer and "
                    "loss module with PyTorch's global hooks during the first optimizer step, then records "
                    "every following step. It refuses (and the script runs on) where it cannot tell: two "
                    "optimizers, no loss module, several loss modules.",
    )
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>-<model>)")
    p.add_argument("--instruments", default="default", help="configuration name (default, cheap, ...)")
    p.add_argument("--checks", default="default", help="'default' or 'none'")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no live panel")
    p.add_argument("script", help="the training script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from trainspect.integrations.script import run_script

    code, attacher = run_script(
        args.script, args.args, run_dir=args.run_dir, instruments=args.instruments, checks=args.checks,
        overwrite=args.overwrite, progress=False if args.quiet else "auto",
    )
    if code == 0 and attacher.refusal is not None:
        return 2
    if code == 0 and attacher.inspector is None:
        print("trainspect run: the script finished before its second optimizer step; nothing was recorded",
              file=sys.stderr)
        return 2
    return code
