"""The cockpit figure: renders for cheap-only and full runs; the panels present match what was tracked."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from views_support import tiny_run

from trainspect.cli import main
from trainspect.store import open_run
from trainspect.views.figure import cockpit_figure, figure_layout, save_figure


def _series_with_data(run: Path) -> set[str]:
    with open_run(run) as r:
        out = set()
        for name, info in r.series_info().items():
            if info["kind"] in ("scalar", "layers"):
                if len(r.series(name)):
                    out.add(name)
            elif len(r.histograms(name).steps):
                out.add(name)
        return out


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


def test_cheap_run_has_no_curvature_column_and_draws_every_tracked_series(cheap_run: Path, tmp_path: Path) -> None:
    with open_run(cheap_run) as r:
        layout = figure_layout(r)
        groups = {info["group"] for info in r.series_info().values()}
    assert "curvature" not in groups
    assert layout.columns == ["step_size", "gradients"]
    assert layout.series == _series_with_data(cheap_run)
    out = save_figure(cheap_run, tmp_path / "cheap.png", dpi=60)
    assert out.series == layout.series
    w, h = _png_size(tmp_path / "cheap.png")
    assert w > 300 and h > 200


def test_full_run_shows_histograms_2d_histograms_curves_and_curvature(full_run: Path) -> None:
    fig, layout = cockpit_figure(full_run)
    try:
        assert layout.columns == ["step_size", "gradients", "curvature"]
        kinds = {p.key: p.kind for p in layout.panels}
        assert kinds["views_test_grad_hist"] == "histogram"
        assert kinds["views_test_hist2d"] == "histogram2d"
        assert kinds["views_test_loss_slice"] == "curve"
        assert layout.series == _series_with_data(full_run)
        titles = [ax.get_title(loc) for ax in fig.axes for loc in ("center", "left")]
        # every column panel is drawn with a title that says what healthy looks like
        for panel in (p for c in layout.columns for p in layout.column_panels[c]):
            matching = [t for t in titles if t.startswith(panel.title.replace("_", " "))]
            assert matching, f"no axes for panel {panel.key}"
            assert f"healthy: {panel.healthy}" in matching[0]
        assert any(t.startswith("Findings (1)") for t in titles)
    finally:
        plt.close(fig)


def test_run_with_only_the_loss_has_no_empty_panels(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "loss-only", steps=4, instruments=["loss"])
    fig, layout = cockpit_figure(run)
    try:
        assert layout.columns == []
        assert [p.key for p in layout.panels] == ["loss"]
        drawn = [ax for ax in fig.axes if ax.get_lines() or ax.texts]
        assert len(fig.axes) == len(drawn) == 2  # performance + findings, nothing empty
    finally:
        plt.close(fig)


def test_formats_dpi_and_size_options(cheap_run: Path, tmp_path: Path) -> None:
    assert main(["plot", str(cheap_run), "-o", str(tmp_path / "a.png"), "--dpi", "40",
                 "--width", "10", "--height", "6"]) == 0
    assert _png_size(tmp_path / "a.png") == (400, 240)
    fig, _ = cockpit_figure(cheap_run, width=8, height=5)  # one layout, two vector formats
    try:
        fig.savefig(tmp_path / "a.svg")
        fig.savefig(tmp_path / "a.pdf")
    finally:
        plt.close(fig)
    assert (tmp_path / "a.svg").read_text()[:200].lstrip().startswith("<?xml")
    assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"png, \.svg or \.pdf"):
        save_figure(cheap_run, tmp_path / "a.txt")
