"""``trainspect runs`` and ``trainspect show``: list runs and print a run's summary."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs in a folder")
    p.add_argument("root", nargs="?", default="runs", help="runs folder (default: runs)")
    p.set_defaults(func=_runs)
    s = sub.add_parser("show", help="print a run's summary: metadata, last values, findings, failures")
    s.add_argument("run", help="run folder")
    s.set_defaults(func=_show)


def _runs(args: argparse.Namespace) -> int:
    from trainspect.views.summary import print_runs

    return print_runs(args.root)


def _show(args: argparse.Namespace) -> int:
    from trainspect.views.summary import print_summary

    print_summary(args.run)
    return 0
