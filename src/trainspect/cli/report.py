"""``trainspect report``: one self-contained HTML file of a run (opens offline)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a run as one self-contained HTML file (opens offline)",
                       description="Write the run's dashboard, with all its data, scripts and the cockpit figure "
                                   "inlined, as one HTML file that opens offline.")
    p.add_argument("run", help="run folder")
    p.add_argument("-o", "--output", default=None, help="output file (default: RUN/report.html)")
    p.add_argument("--no-figure", action="store_true", help="leave out the matplotlib cockpit figure")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainspect.views.report import write_report

    output = Path(args.output) if args.output else Path(args.run) / "report.html"
    write_report(args.run, output, figure=not args.no_figure)
    print(f"wrote {output} ({output.stat().st_size / 1e3:.0f} kB)")
    return 0
