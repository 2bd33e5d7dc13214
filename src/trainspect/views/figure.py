"""The cockpit figure: one dense matplotlib figure of a run, in Cockpit's layout (``trainspect plot``).

Layout (after Cockpit's ``CockpitPlotter``): three columns — *step size* (α, distance, update size, ...),
*gradients* (gradient norm, the gradient tests, 1-D and 2-D histograms), *curvature* (λ_max, trace, TIC) —
over a bottom row with the hyper-parameters (learning rate), the performance (loss and accuracy) and the
findings in words. Panels come from the run's series metadata (:mod:`trainspect.views.data`): an
instrument that was not tracked leaves no empty panel, and a new instrument appears without code here.
Each title says what a healthy value looks like (the series' ``healthy`` text).

Needs matplotlib (``pip install 'trainspect[plot]'``).
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainspect.store import open_run
from trainspect.store.reader import RunReader
from trainspect.views.data import ROW_GROUPS, Panel, build_panels, column_groups, group_title

SEVERITY_COLORS = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
ACCURACY_HINTS = ("acc",)


def _import_pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("trainspect plot needs matplotlib: pip install 'trainspect[plot]'") from error
    return plt


@dataclass
class FigureLayout:
    """What the figure shows: the column groups, each column's panels, and the bottom row's panels."""

    columns: list[str]
    column_panels: dict[str, list[Panel]]
    row_panels: list[Panel]

    @property
    def panels(self) -> list[Panel]:
        return [p for c in self.columns for p in self.column_panels[c]] + self.row_panels

    @property
    def series(self) -> set[str]:
        return {s for p in self.panels for s in p.all_series}


def figure_layout(reader: RunReader) -> FigureLayout:
    """Decide the panels of the figure from the run's series (no drawing)."""
    panels = [p for p in build_panels(reader.series_info()) if _has_data(reader, p)]
    columns = column_groups(panels)
    column_panels = {c: [p for p in panels if p.group == c] for c in columns}
    row: list[Panel] = []
    for group in ROW_GROUPS:
        row.extend(p for p in panels if p.group == group)
    return FigureLayout(columns, column_panels, row)


def _has_data(reader: RunReader, panel: Panel) -> bool:
    for name in panel.all_series:
        sid = reader.conn.execute("SELECT id, kind FROM series WHERE name = ?", (name,)).fetchone()
        if sid is None:
            continue
        table = {"scalar": "scalars", "layers": "vectors"}.get(sid[1], "histograms")
        if reader.conn.execute(f"SELECT 1 FROM {table} WHERE series_id = ? LIMIT 1", (sid[0],)).fetchone():
            return True
    return False


def _title(panel: Panel) -> str:
    title = panel.title.replace("_", " ")
    if panel.healthy:
        title += f"\nhealthy: {panel.healthy}"
    return title


def _ema(values: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    out = np.empty_like(values)
    acc = math.nan
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc = v if not math.isfinite(acc) else alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def _is_noisy(values: np.ndarray) -> bool:
    """True for a series that jumps around (a loss), False for a smooth or piecewise-constant one (a lr)."""
    v = values[np.isfinite(values)]
    if v.size < 3:
        return False
    d = np.abs(np.diff(v))
    return bool(np.median(d) > 0 and np.median(d) > 0.02 * (np.abs(v).mean() + 1e-30))


def _draw_scalar_panel(
    ax: Any, reader: RunReader, panel: Panel, max_layers: int = 12, legend: bool | list[bool] = True,
    ema: bool = True, color: str | None = "k",
) -> None:
    """Scalar total (bold; with an EMA when noisy) and per-layer lines (thin) of one panel.

    ``legend`` may be a one-element list shared by the panels of a figure: the layer legend is drawn once
    (the first panel with per-layer lines) and the flag is cleared.
    """
    import matplotlib.cm as cm

    drew_total = False
    layer_legend = legend[0] if isinstance(legend, list) else legend
    for name in panel.series:
        s = reader.series(name)
        if len(s) == 0:
            continue
        if s.kind == "layers":
            n = s.values.shape[1]
            # per-layer lines, thin; the largest layers (by last value) when there are many
            order = np.arange(n)
            if n > max_layers:
                last = np.nan_to_num(s.values[-1], nan=-np.inf)
                order = np.sort(np.argsort(last)[-max_layers:])
            colors = cm.viridis(np.linspace(0, 0.9, len(order)))
            for c, j in zip(colors, order):
                ax.plot(s.steps, s.values[:, j], lw=0.8, alpha=0.8, color=c,
                        label=s.layer_names[j] if s.layer_names and layer_legend else None)
            if layer_legend and isinstance(legend, list):
                legend[0] = False
        else:
            noisy = ema and len(s) > 50 and _is_noisy(s.values)
            line = ax.plot(s.steps, s.values, lw=1.0, color="0.6" if noisy else color, label=name)[0]
            if noisy:
                ax.plot(s.steps, _ema(s.values), lw=1.6, color=color or line.get_color(), label=f"{name} (EMA)")
            drew_total = True
    if panel.log_scale:
        _safe_log(ax)
    if drew_total or layer_legend:
        ax.legend(fontsize=5.5, loc="best", frameon=False, ncol=2 if len(ax.get_lines()) > 6 else 1)
    if panel.companions:
        _draw_companions(ax, reader, panel)


def _draw_companions(ax: Any, reader: RunReader, panel: Panel) -> None:
    """Companion series (``<key>_<suffix>``: standard errors, counts) dashed on a second y axis."""
    twin = ax.twinx()
    for name, color in zip(panel.companions, ("#c62828", "#6a1b9a", "#00838f", "#9e9d24")):
        s = reader.series(name)
        if len(s):
            twin.plot(s.steps, s.values, lw=0.9, ls="--", color=color, label=name[len(panel.key) + 1:])
    vals = np.concatenate([np.asarray(line.get_ydata(), float) for line in twin.get_lines()] or [np.array([])])
    vals = vals[np.isfinite(vals)]
    if vals.size and vals.min() > 0 and vals.max() / vals.min() > 100:
        twin.set_yscale("log")
    twin.tick_params(labelsize=6, colors="#666")
    twin.legend(fontsize=5.5, loc="upper right", frameon=False)


def _safe_log(ax: Any) -> None:
    ys = [line.get_ydata() for line in ax.get_lines()]
    vals = np.concatenate([np.asarray(y, dtype=float) for y in ys]) if ys else np.array([])
    if vals.size and np.any(vals[np.isfinite(vals)] > 0):
        ax.set_yscale("log")


def _draw_histogram_panel(ax: Any, reader: RunReader, panel: Panel) -> None:
    h = reader.histograms(panel.series[0])
    if not len(h.steps):
        return
    k = len(h.steps) - 1
    counts, x = h.counts[k], h.x_edges[k]
    if panel.kind == "histogram":
        widths = np.diff(x)
        ax.bar(x[:-1], counts, width=widths, align="edge", color="#1565c0", alpha=0.8)
        if panel.log_scale:
            ax.set_yscale("log")
        ax.set_xlabel(f"step {int(h.steps[k])}", fontsize=7)
    elif panel.kind == "histogram2d":
        import matplotlib.colors as mcolors

        y = h.y_edges[k]
        norm = mcolors.LogNorm(vmin=1, vmax=max(counts.max(), 1)) if panel.log_scale else None
        mesh = ax.pcolormesh(x, y, counts.T, cmap="magma", norm=norm, shading="flat")
        ax.figure.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
        ax.set_xlabel(f"step {int(h.steps[k])}", fontsize=7)
    else:  # curve: y (stored as counts) over x; earlier curves fade
        ks = range(max(0, len(h.steps) - 5), len(h.steps))
        for j, kk in enumerate(ks):
            ax.plot(h.x_edges[kk], h.counts[kk], color="#1565c0", alpha=0.25 + 0.75 * (j + 1) / len(ks),
                    label=f"step {int(h.steps[kk])}" if kk == k else None)
        if panel.log_scale:
            _safe_log(ax)
        ax.legend(fontsize=6, frameon=False)


def _draw_performance(ax: Any, reader: RunReader, panels: list[Panel]) -> list[Panel]:
    """Loss-like series on the left axis, accuracy-like ones on a twin right axis. Returns panels drawn."""
    acc = [p for p in panels if any(h in p.key.lower() for h in ACCURACY_HINTS)]
    loss = [p for p in panels if p not in acc]
    for p in loss:
        s = reader.series(p.series[0])
        if len(s):
            line = ax.plot(s.steps, s.values, lw=0.8, alpha=0.5 if len(s) > 50 else 1.0, label=p.key)[0]
            if len(s) > 50:
                ax.plot(s.steps, _ema(s.values), lw=1.6, color=line.get_color(), label=f"{p.key} (EMA)")
    if any(p.log_scale for p in loss):
        _safe_log(ax)
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        twin = ax.twinx()
        for p, color in zip(acc, ("#2e7d32", "#6a1b9a", "#00838f", "#ad1457")):
            s = reader.series(p.series[0])
            twin.plot(s.steps, s.values, marker="o", ms=2.5, lw=1.2, color=color, label=p.key)
        twin.set_ylabel("accuracy", fontsize=7)
        twin.tick_params(labelsize=6)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=6, frameon=False, loc="best")
    healthy = "; ".join(f"{p.key}: {p.healthy}" for p in (loss + acc)[:2] if p.healthy)
    ax.set_title("Performance" + (f"\nhealthy: {healthy}" if healthy else ""), fontsize=8)
    return loss + acc


def _draw_findings(ax: Any, reader: RunReader) -> None:
    ax.axis("off")
    findings = reader.findings()
    errors = reader.errors()
    ax.set_title(f"Findings ({len(findings)})", fontsize=9, loc="left")
    y = 1.0
    if not findings:
        ax.text(0, y, "No findings: every check passed so far.", color="#2e7d32", fontsize=8, va="top",
                transform=ax.transAxes)
        y -= 0.12
    order = {"error": 0, "warning": 1, "info": 2}
    for f in sorted(findings, key=lambda f: (order.get(f["severity"], 3), f["first_step"] or 0))[:6]:
        where = f" @ {f['location']}" if f["location"] else ""
        head = f"[{f['severity']}] {f['title']}{where} (steps {f['first_step']}–{f['last_step']})"
        ax.text(0, y, textwrap.fill(head, 70), color=SEVERITY_COLORS.get(f["severity"], "k"), fontsize=7,
                fontweight="bold", va="top", transform=ax.transAxes)
        y -= 0.075 * (1 + len(head) // 70)
        if f["remedies"]:
            remedy = "try: " + f["remedies"][0]
            ax.text(0.02, y, textwrap.fill(remedy, 72), fontsize=6.5, va="top", transform=ax.transAxes)
            y -= 0.065 * (1 + len(remedy) // 72)
        if y < 0.05:
            break
    if len(findings) > 6:
        ax.text(0, max(y, 0.0), f"... and {len(findings) - 6} more (trainspect show RUN)", fontsize=6.5,
                va="top", transform=ax.transAxes)
    if errors and y > 0.1:
        ax.text(0, 0.0, f"{len(errors)} instrument/check failure(s): " + ", ".join(e["source"] for e in errors[:3]),
                fontsize=6.5, color="#c62828", va="bottom", transform=ax.transAxes)


def _row_cells(layout: FigureLayout) -> list[tuple[str, list[Panel]]]:
    """Bottom-row cells: one per row group (hyper-parameters, performance split into loss/accuracy and the
    rest, health) holding all that group's panels."""
    cells: list[tuple[str, list[Panel]]] = []
    for group in ROW_GROUPS:
        panels = [p for p in layout.row_panels if p.group == group]
        if not panels:
            continue
        if group == "performance":
            main = [p for p in panels if "loss" in p.key.lower() or any(h in p.key.lower() for h in ACCURACY_HINTS)]
            rest = [p for p in panels if p not in main]
            if main:
                cells.append(("performance", main))
            if rest:
                cells.append(("performance-other", rest))
        else:
            cells.append((group, panels))
    return cells


def _draw_row_cell(ax: Any, reader: RunReader, kind: str, panels: list[Panel]) -> None:
    if kind == "performance":
        _draw_performance(ax, reader, panels)
        return
    legend = len(panels) > 1
    for panel in panels:
        _draw_scalar_panel(ax, reader, panel, legend=legend, ema=False, color=None if legend else "k")
    if any(p.log_scale for p in panels):
        _safe_log(ax)
    if len(panels) == 1:
        ax.set_title(_title(panels[0]), fontsize=8)
    else:
        healthy = {p.healthy for p in panels if p.healthy}
        head = group_title(panels[0].group)
        ax.set_title(head + (f"\nhealthy: {healthy.pop()}" if len(healthy) == 1 else ""), fontsize=8)


def cockpit_figure(
    run: str | os.PathLike[str] | RunReader, *, width: float | None = None, height: float | None = None
) -> tuple[Any, FigureLayout]:
    """Draw the cockpit figure of a run. Returns ``(matplotlib Figure, FigureLayout)``.

    A group with more panels than the figure has rows spreads over several sub-columns, so the figure
    stays compact whatever the instruments tracked.
    """
    plt = _import_pyplot()
    reader = run if isinstance(run, RunReader) else open_run(run)
    try:
        layout = figure_layout(reader)
        counts = [len(layout.column_panels[c]) for c in layout.columns]
        n_rows = max(2, math.ceil(sum(counts) / max(3, len(counts)))) if counts else 0
        n_rows = min(n_rows, max(counts or [0]))
        sub_cols = [math.ceil(c / n_rows) for c in counts] if n_rows else []
        cells = _row_cells(layout)
        bottom_cells = len(cells) + 1  # + findings
        top_width = sum(sub_cols)
        width = width or max(3.6 * max(top_width, 3), 3.0 * bottom_cells + 2.5, 12.0)
        height = height or 2.3 * (n_rows + 1.25) + 1.0
        fig = plt.figure(figsize=(width, height), layout="constrained")
        meta = reader.meta
        fig.suptitle(
            f"trainspect · {meta.get('name', reader.run_dir.name)} · {meta.get('model_class', '')} · "
            f"{meta.get('optimizer', '')} · step {reader.last_step} · {meta.get('status', '')}",
            fontsize=11, fontweight="bold",
        )
        outer = fig.add_gridspec(2, 1, height_ratios=[max(n_rows, 1), 1.25] if n_rows else [0.01, 1])
        self_legend = [True]
        if n_rows:
            top = outer[0].subgridspec(1, len(layout.columns), width_ratios=sub_cols)
            for ci, group in enumerate(layout.columns):
                col = layout.column_panels[group]
                cell = top[ci].subgridspec(n_rows, sub_cols[ci])
                for k, panel in enumerate(col):
                    ax = fig.add_subplot(cell[k % n_rows, k // n_rows])
                    if panel.kind == "scalar":
                        _draw_scalar_panel(ax, reader, panel, legend=self_legend)
                    else:
                        _draw_histogram_panel(ax, reader, panel)
                    ax.set_title(_title(panel), fontsize=8)
                    ax.tick_params(labelsize=6)
                    if k == 0:
                        ax.annotate(group_title(group), (0.5, 1.0), xycoords=ax.title, xytext=(0, 10),
                                    textcoords="offset points", ha="left" if sub_cols[ci] > 1 else "center",
                                    va="bottom", fontsize=10, fontweight="bold", color="#37474f")
        bottom = outer[1].subgridspec(1, bottom_cells, width_ratios=[1] * len(cells) + [1.8])
        for b, (kind, panels) in enumerate(cells):
            ax = fig.add_subplot(bottom[b])
            _draw_row_cell(ax, reader, kind, panels)
            ax.tick_params(labelsize=6)
        _draw_findings(fig.add_subplot(bottom[len(cells)]), reader)
        return fig, layout
    finally:
        if not isinstance(run, RunReader):
            reader.close()


def save_figure(
    run: str | os.PathLike[str], output: str | os.PathLike[str], *, dpi: int = 150,
    width: float | None = None, height: float | None = None,
) -> FigureLayout:
    """Render the cockpit figure of ``run`` to ``output`` (format from the suffix: png, svg, pdf, ...)."""
    plt = _import_pyplot()
    output = Path(output)
    suffix = output.suffix.lower().lstrip(".")
    supported = {"png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}
    if suffix not in supported:
        raise ValueError(f"trainspect plot: cannot tell the format of {output}; use a .png, .svg or .pdf file name")
    if dpi <= 0:
        raise ValueError(f"trainspect plot: dpi must be positive, got {dpi}")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig, layout = cockpit_figure(run, width=width, height=height)
    try:
        fig.savefig(output, dpi=dpi)
    finally:
        plt.close(fig)
    return layout
