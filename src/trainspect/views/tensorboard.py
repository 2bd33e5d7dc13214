"""TensorBoard export: a run store to event files (``trainspect export-tensorboard``) and a live sink.

Tags are ``<group>/<series>`` (TensorBoard groups on the first ``/``: step_size, gradients, curvature,
performance, ...), per-layer values ``<group>/<series>/<parameter name>``, histograms ``<group>/<series>``
(bucket counts as recorded, via ``add_histogram_raw``: no re-binning), and findings as text under
``findings/<code>``. 2-D histograms and curves have no TensorBoard equivalent and are left out.

The store stays the source of truth (event files are append-only and unindexed); TensorBoard is an export.
Needs the ``tensorboard`` package (``pip install 'trainspect[tensorboard]'``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from trainspect.engine.record import HistogramValue, Sink, StepRecord
from trainspect.engine.values import SeriesInfo
from trainspect.store import open_run


def _summary_writer(log_dir: str | os.PathLike[str]) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "TensorBoard export needs the tensorboard package: pip install 'trainspect[tensorboard]'"
        ) from error
    return SummaryWriter(log_dir=str(log_dir))


def scalar_tag(group: str, name: str) -> str:
    return f"{group or 'other'}/{name}"


def layer_tag(group: str, name: str, layer: str) -> str:
    return f"{group or 'other'}/{name}/{layer}"


def _write_histogram(writer: Any, tag: str, h: HistogramValue, step: int, wall_time: float | None) -> bool:
    """A 1-D histogram as TensorBoard's raw histogram (right bucket edges; sums from bin centres)."""
    if h.y_edges is not None:
        return False
    counts = np.asarray(h.counts, dtype=np.float64).reshape(-1)
    edges = np.asarray(h.x_edges, dtype=np.float64).reshape(-1)
    if counts.size == 0 or edges.size != counts.size + 1 or not np.all(np.isfinite(edges)):
        return False
    counts = np.nan_to_num(counts, nan=0.0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    writer.add_histogram_raw(
        tag, min=float(edges[0]), max=float(edges[-1]), num=float(counts.sum()),
        sum=float((counts * centres).sum()), sum_squares=float((counts * centres**2).sum()),
        bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step, walltime=wall_time,
    )
    return True


def _finding_text(f: dict[str, Any]) -> str:
    where = f" at {f['location']}" if f.get("location") else ""
    lines = [f"**[{f['severity']}] {f['title']}**{where} (steps {f.get('first_step')}–{f.get('last_step')})", "",
             f.get("explanation", "")]
    if f.get("evidence"):
        lines += ["", "evidence: `" + json.dumps(f["evidence"], default=str) + "`"]
    lines += [""] + [f"* try: {r}" for r in f.get("remedies") or []]
    return "\n".join(lines)


class TensorBoardSink(Sink):
    """Writes the run to TensorBoard event files while it trains: ``attach(..., sinks=[TensorBoardSink(dir)])``.

    Args:
        log_dir: the TensorBoard log folder of this run (e.g. ``tb/mlp``).
        histograms: also write 1-D histogram series.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, histograms: bool = True):
        self.log_dir = Path(log_dir)
        self.histograms = histograms
        self.writer: Any = None
        self.layer_names: list[str] = []
        self.info: dict[str, SeriesInfo] = {}

    def open(self, meta: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        self.writer = _summary_writer(self.log_dir)
        self.layer_names = [layer["name"] for layer in layers]
        summary = {k: meta.get(k) for k in ("name", "model_class", "optimizer", "loss", "parameter_count")}
        self.writer.add_text("run/meta", "`" + json.dumps(summary, default=str) + "`", 0)

    def _group(self, name: str) -> str:
        info = self.info.get(name)
        return info.group if info is not None else "performance"

    def write_step(self, record: StepRecord) -> None:
        w = self.writer
        for _, info in record.new_series:
            self.info[info.name] = info
        for name, value in record.scalars.items():
            w.add_scalar(scalar_tag(self._group(name), name), value, record.step, walltime=record.wall_time)
        for name, vec in record.layers.items():
            group = self._group(name)
            for layer, value in zip(self.layer_names, vec):
                w.add_scalar(layer_tag(group, name, layer), float(value), record.step, walltime=record.wall_time)
        if self.histograms:
            for name, h in record.histograms.items():
                if self.info.get(name) is None or self.info[name].kind == "histogram":
                    _write_histogram(w, scalar_tag(self._group(name), name), h, record.step, record.wall_time)

    def write_user_values(self, record: StepRecord) -> None:
        self.write_step(record)

    def write_finding(self, finding: Any, *, new: bool) -> None:
        if new:
            f = {k: getattr(finding, k) for k in ("code", "severity", "title", "explanation", "evidence", "remedies",
                                                  "location", "first_step", "last_step")}
            self.writer.add_text(f"findings/{finding.code}", _finding_text(f), finding.first_step or 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def export_tensorboard(run: str | os.PathLike[str], log_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Write a stored run as TensorBoard event files in ``log_dir``. Returns counts of what was written."""
    counts = {"scalars": 0, "layer_scalars": 0, "histograms": 0, "findings": 0, "skipped_series": 0}
    with open_run(run) as reader:
        writer = _summary_writer(log_dir)
        try:
            steps = reader.steps()
            wall = dict(zip(steps["step"].tolist(), steps["wall_time"].tolist()))
            meta = reader.meta
            summary = {k: meta.get(k) for k in ("name", "model_class", "optimizer", "loss", "parameter_count")}
            writer.add_text("run/meta", "`" + json.dumps(summary, default=str) + "`", 0)
            for name, info in reader.series_info().items():
                group, kind = info.get("group", "performance"), info["kind"]
                if kind == "scalar":
                    s = reader.series(name)
                    for step, value in zip(s.steps.tolist(), s.values.tolist()):
                        writer.add_scalar(scalar_tag(group, name), value, step, walltime=wall.get(step))
                        counts["scalars"] += 1
                elif kind == "layers":
                    s = reader.series(name)
                    for k, step in enumerate(s.steps.tolist()):
                        for j, layer in enumerate(s.layer_names or []):
                            writer.add_scalar(layer_tag(group, name, layer), float(s.values[k, j]), step,
                                              walltime=wall.get(step))
                            counts["layer_scalars"] += 1
                elif kind == "histogram":
                    h = reader.histograms(name)
                    for k, step in enumerate(h.steps.tolist()):
                        value = HistogramValue(h.counts[k], h.x_edges[k])
                        counts["histograms"] += _write_histogram(writer, scalar_tag(group, name), value, step,
                                                                 wall.get(step))
                else:
                    counts["skipped_series"] += 1
            for f in reader.findings():
                writer.add_text(f"findings/{f['code']}", _finding_text(f), f["first_step"] or 0)
                counts["findings"] += 1
        finally:
            writer.flush()
            writer.close()
    return counts
