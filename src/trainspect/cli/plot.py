"""``trainspect plot``: the cockpit figure of a run as PNG, SVG or PDF."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a run as one Cockpit-style figure (png, svg, pdf)",
                       description="Draw a run as one figure: step size, gradients and curvature columns over "
                                   "the learning rate, loss/accuracy and the findings. Needs matplotlib "
                                   "(pip install 'trainspect[plot]').")
    p.add_argument("run", help="run folder")
    p.add_argument("-o", "--output", default=None, help="output file; the suffix picks the format "
                                                        "(default: RUN/cockpit.png)")
    p.add_argument("--dpi", type=int, default=150, help="resolution for raster formats (default: 150)")
    p.add_argument("--width", type=float, default=None, help="width in inches (default: from the panels)")
    p.add_argument("--height", type=float, default=None, help="height in inches (default: from the panels)")
    p.set_defaults(func=_plot)


def _plot(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = "Agg"  # no window: the figure goes to a file
    from trainspect.views.figure import save_figure

    output = Path(args.output) if args.output else Path(args.run) / "cockpit.png"
    layout = save_figure(args.run, output, dpi=args.dpi, width=args.width, height=args.height)
    print(f"wrote {output} ({len(layout.panels)} panels: {', '.join(p.key for p in layout.panels)})")
    return 0
