"""Views' shared reading of a run: JSON-ready payloads and the panel layout, driven by series metadata.

Every view (figure, web dashboard, HTML report, TensorBoard export) reads the run store only, through
:func:`trainspect.store.open_run`, so it works while the run trains and after it ended. Nothing here knows a
particular instrument: panels come from each series' ``group``, ``kind``, ``log_scale`` and ``healthy`` text,
so a new instrument shows up without editing a view.

Panel rules (shared by the figure and the dashboard):

* a scalar series ``x`` and its per-layer counterpart ``layer_x`` share one panel (total drawn bold,
  layers thin);
* histograms, 2-D histograms and curves get one panel each (the latest one is drawn);
* the Cockpit columns are the groups ``step_size``, ``gradients``, ``curvature`` (then any new group);
  ``hyperparameters``, ``performance`` and ``health`` go to the bottom row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.store.reader import RunReader

#: the three Cockpit columns, in order
COLUMN_GROUPS: tuple[str, ...] = ("step_size", "gradients", "curvature")
#: groups drawn in the bottom row (not columns)
ROW_GROUPS: tuple[str, ...] = ("hyperparameters", "performance", "health")
GROUP_TITLES: dict[str, str] = {
    "step_size": "Step size",
    "gradients": "Gradients",
    "curvature": "Curvature",
    "hyperparameters": "Hyperparameters",
    "performance": "Performance",
    "health": "Health",
}
LAYER_PREFIX = "layer_"


def group_title(group: str) -> str:
    return GROUP_TITLES.get(group, group.replace("_", " ").capitalize())


@dataclass
class Panel:
    """One plot: the series it draws and how.

    Attributes:
        key: stable id (the main series name).
        group: the series group (the figure column / dashboard section).
        kind: ``scalar`` (line plot of scalar and/or per-layer series), ``histogram``, ``histogram2d``
            or ``curve``.
        series: the series drawn (scalar first, then per-layer).
        companions: scalars of the same instrument named ``<key>_<suffix>`` (standard errors, counts),
            drawn on a second axis.
        title: short title; ``healthy``: what a healthy value looks like; ``description``: one line.
        log_scale: whether the y axis (or the colour scale of a 2-D histogram) is logarithmic.
    """

    key: str
    group: str
    kind: str
    series: list[str]
    title: str
    healthy: str = ""
    description: str = ""
    log_scale: bool = False
    unit: str = ""
    layers_series: str | None = None
    companions: list[str] = field(default_factory=list)

    @property
    def all_series(self) -> list[str]:
        """Every series the panel draws: main, per-layer and companions (second axis)."""
        return self.series + self.companions

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "group": self.group, "kind": self.kind, "series": self.series, "title": self.title,
            "healthy": self.healthy, "description": self.description, "log_scale": self.log_scale,
            "unit": self.unit, "layers_series": self.layers_series, "companions": self.companions,
        }


def companion_of(name: str, info: dict[str, dict[str, Any]]) -> str | None:
    """The main series a scalar ``<main>_<suffix>`` accompanies (e.g. ``hessian_trace_standard_error`` of
    ``hessian_trace``): another scalar of the same instrument and group whose name is a prefix. None if none."""
    meta = info[name]
    if meta.get("kind") != "scalar":
        return None
    parts = name.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        base = "_".join(parts[:cut])
        other = info.get(base)
        if (other is not None and other.get("kind") == "scalar" and other.get("instrument") == meta.get("instrument")
                and other.get("group") == meta.get("group")):
            return base
    return None


def build_panels(info: dict[str, dict[str, Any]]) -> list[Panel]:
    """Panels for a run's ``series_info()``, in series registration order.

    A scalar ``x`` and its per-layer ``layer_x`` share a panel; a companion scalar ``x_suffix`` of the same
    instrument (an error bar, a count of products) is drawn in ``x``'s panel on a second axis.
    """
    panels: dict[str, Panel] = {}
    companions: dict[str, list[str]] = {}
    for name in info:
        base = companion_of(name, info)
        if base is not None:
            while companion_of(base, info) is not None:  # x_a_b accompanies x, not x_a
                base = companion_of(base, info)  # type: ignore[assignment]
            companions.setdefault(base, []).append(name)
    folded = {c for cs in companions.values() for c in cs}
    for name, meta in info.items():
        if name in folded:
            continue
        kind = meta.get("kind", "scalar")
        group = meta.get("group") or "performance"
        if kind == "layers":
            base = name[len(LAYER_PREFIX):] if name.startswith(LAYER_PREFIX) else name
            partner = info.get(base)
            key = base if partner is not None and partner.get("kind") == "scalar" else name
        else:
            key = name
        panel = panels.get(key)
        if panel is None:
            panel = panels[key] = Panel(
                key=key, group=group, kind="scalar" if kind in ("scalar", "layers") else kind, series=[],
                title=key, healthy=meta.get("healthy", ""), description=meta.get("description", ""),
                log_scale=bool(meta.get("log_scale", False)), unit=meta.get("unit", ""),
            )
        if kind == "layers":
            panel.series.append(name)
            panel.layers_series = name
        else:
            panel.series.insert(0, name)
            # the scalar's metadata wins for the title line
            panel.group = group
            panel.healthy = meta.get("healthy", "") or panel.healthy
            panel.description = meta.get("description", "") or panel.description
            panel.log_scale = bool(meta.get("log_scale", panel.log_scale))
            panel.companions = companions.get(name, [])
    return list(panels.values())


def column_groups(panels: list[Panel]) -> list[str]:
    """The figure columns present: Cockpit's three in order, then any new group, only if it has panels."""
    present = {p.group for p in panels}
    cols = [g for g in COLUMN_GROUPS if g in present]
    cols += sorted(g for g in present if g not in COLUMN_GROUPS and g not in ROW_GROUPS)
    return cols


# ---------------------------------------------------------------------------------------------------
# JSON payloads (dashboard API and the frozen HTML report)
# ---------------------------------------------------------------------------------------------------
def clean(values: Any) -> Any:
    """NumPy → JSON-ready lists; NaN and ±inf become ``None`` (JSON has neither)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iub":
            return values.tolist()
        return [clean(v) for v in values.tolist()] if values.ndim > 1 else [
            None if not math.isfinite(v) else v for v in values.tolist()
        ]
    if isinstance(values, float):
        return None if not math.isfinite(values) else values
    if isinstance(values, list):
        return [clean(v) for v in values]
    if isinstance(values, dict):
        return {k: clean(v) for k, v in values.items()}
    if isinstance(values, (np.floating, np.integer)):
        return clean(values.item())
    return values


def run_summary(reader: RunReader) -> dict[str, Any]:
    """Metadata, panels, layers, findings, failures and the last step of a run."""
    meta = reader.meta
    info = reader.series_info()
    panels = build_panels(info)
    return clean({
        "meta": {k: v for k, v in meta.items() if k != "model_summary"},
        "model_summary": meta.get("model_summary", ""),
        "series": info,
        "panels": [p.to_json() for p in panels],
        "columns": column_groups(panels),
        "group_titles": {g: group_title(g) for g in {p.group for p in panels}},
        "layers": reader.layers(),
        "findings": reader.findings(),
        "errors": [{k: e[k] for k in ("step", "source", "message")} for e in reader.errors()],
        "last_step": reader.last_step,
        "has_samples": has_samples(reader),
    })


def series_payload(reader: RunReader, name: str, since: int | None = None) -> dict[str, Any]:
    """A scalar or per-layer series (steps ≥ ``since``); per-layer values are steps × layers."""
    s = reader.series(name, since=since)
    out: dict[str, Any] = {"name": name, "kind": s.kind, "steps": s.steps.tolist(), "values": clean(s.values)}
    if s.layer_names is not None:
        out["layer_names"] = s.layer_names
    return out


def histogram_payload(reader: RunReader, name: str, step: int | None = None) -> dict[str, Any]:
    """The histogram (or 2-D histogram, or curve) of ``name`` at ``step`` (default: the latest)."""
    h = reader.histograms(name)
    if len(h.steps) == 0:
        return {"name": name, "kind": h.info.get("kind"), "steps": [], "step": None}
    k = len(h.steps) - 1 if step is None else int(np.searchsorted(h.steps, step, side="right")) - 1
    k = max(k, 0)
    kind = reader.series_info()[name]["kind"]
    out: dict[str, Any] = {
        "name": name, "kind": kind, "steps": h.steps.tolist(), "step": int(h.steps[k]),
        "counts": clean(h.counts[k]), "x_edges": clean(h.x_edges[k]),
    }
    if h.y_edges[k] is not None:
        out["y_edges"] = clean(h.y_edges[k])
    return out


def has_samples(reader: RunReader) -> bool:
    try:
        return reader.conn.execute("SELECT 1 FROM samples LIMIT 1").fetchone() is not None
    except Exception:  # an older store without the table
        return False
