"""A self-contained HTML report of a run (``trainspect report RUN -o report.html``).

The report is the dashboard frozen: the same page and script, with uPlot, the styles and every API answer
the page needs (run summary, each series in full, the latest histograms, the samples) inlined, so the one
file opens offline, anywhere, and still lets the reader choose a layer and a samples step. The cockpit
figure is embedded as a PNG when matplotlib is installed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from trainspect.store import open_run
from trainspect.views.data import histogram_payload, run_summary, series_payload
from trainspect.views.samples import sample_steps, samples_payload
from trainspect.views.web.server import STATIC_DIR

RUN_ID = "."


def _key(path: str, params: dict[str, Any]) -> str:
    """The key the page's ``api()`` looks up in report mode (``app.js: staticKey``): sorted, unencoded."""
    return path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params))


def report_data(run: str | os.PathLike[str]) -> dict[str, Any]:
    """Every API answer the page asks for, keyed like ``app.js`` asks (no ``since``: series are complete)."""
    data: dict[str, Any] = {}
    with open_run(run) as reader:
        summary = run_summary(reader)
        data[_key("run", {"run": RUN_ID})] = {"id": RUN_ID, **summary}
        for name, info in summary["series"].items():
            if info["kind"] in ("scalar", "layers"):
                data[_key("series", {"run": RUN_ID, "name": name})] = series_payload(reader, name)
            else:
                data[_key("histogram", {"run": RUN_ID, "name": name})] = histogram_payload(reader, name)
        if summary["has_samples"]:
            data[_key("samples", {"run": RUN_ID, "step": "latest"})] = samples_payload(reader, "latest")
            for step in sample_steps(reader):
                data[_key("samples", {"run": RUN_ID, "step": str(step)})] = samples_payload(reader, step)
        name = summary["meta"].get("name") or reader.run_dir.name
    return {"run": RUN_ID, "name": name, "data": data}


def _inline_script(text: str) -> str:
    # "</" inside an inline script would end it early (e.g. "</script>" in a string)
    return "<script>\n" + text.replace("</", "<\\/") + "\n</script>"


def _figure_png(run: str | os.PathLike[str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from trainspect.views.figure import cockpit_figure
    except ImportError:
        return None
    fig, _ = cockpit_figure(run)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def build_report(run: str | os.PathLike[str], *, figure: bool = True) -> str:
    """The report of ``run`` as one HTML string (no external resource: scripts, styles and images inline)."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    vendor = STATIC_DIR / "vendor" / "uplot"
    css = (vendor / "uPlot.min.css").read_text(encoding="utf-8") + "\n" + (STATIC_DIR / "app.css").read_text(
        encoding="utf-8"
    )
    payload = json.dumps(report_data(run), allow_nan=False, ensure_ascii=False)
    scripts = "\n".join([
        "<!-- uPlot 1.6.32, MIT License, (c) 2022 Leon Sorokin: https://github.com/leeoniya/uPlot -->",
        _inline_script((vendor / "uPlot.iife.min.js").read_text(encoding="utf-8")),
        _inline_script("window.TRAINSPECT_STATIC = " + payload + ";"),
        _inline_script((STATIC_DIR / "app.js").read_text(encoding="utf-8")),
    ])
    page = _replace_block(page, "HEAD", "<style>\n" + css + "\n</style>")
    page = _replace_block(page, "SCRIPTS", scripts)
    png = _figure_png(run) if figure else None
    if png is not None:
        page = page.replace(
            "<!--TRAINSPECT:FIGURE-->",
            '<details id="figure" open><summary>Cockpit figure</summary>'
            f'<img alt="cockpit figure of the run" style="max-width:100%" src="data:image/png;base64,{png}"></details>',
        )
    return page.replace("<title>trainspect</title>", f"<title>trainspect report · {Path(run).name}</title>")


def _replace_block(page: str, name: str, content: str) -> str:
    pattern = re.compile(rf"<!--TRAINSPECT:{name}-->.*?<!--/TRAINSPECT:{name}-->", re.S)
    if not pattern.search(page):  # pragma: no cover - the packaged page always has the markers
        raise RuntimeError(f"index.html lacks the TRAINSPECT:{name} block")
    return pattern.sub(lambda _: content, page)


def write_report(run: str | os.PathLike[str], output: str | os.PathLike[str], *, figure: bool = True) -> Path:
    """Write the self-contained report of ``run`` to ``output``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(build_report(run, figure=figure), encoding="utf-8")
    return output
