"""``trainspect export-tensorboard``: a stored run as TensorBoard event files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-tensorboard", help="write a run as TensorBoard event files",
                       description="Write a run's scalars, per-layer values and histograms as TensorBoard event "
                                   "files (tags <group>/<series>[/<layer>]). Needs the tensorboard package "
                                   "(pip install 'trainspect[tensorboard]').")
    p.add_argument("run", help="run folder")
    p.add_argument("log_dir", help="TensorBoard log folder to write (e.g. tb/my-run)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from trainspect.views.tensorboard import export_tensorboard

    counts = export_tensorboard(args.run, args.log_dir)
    print(f"wrote {args.log_dir}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    print(f"view with: tensorboard --logdir {args.log_dir}")
    return 0
