"""The HTML report: one file, no external resource, and the data inside equals the store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from trainspect.cli import main
from trainspect.store import open_run


def _static_data(html: str) -> dict:
    m = re.search(r"window\.TRAINSPECT_STATIC = (.*?);\n</script>", html, re.S)
    assert m, "no frozen data in the report"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_report_is_self_contained_and_holds_the_runs_data(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(full_run), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    # nothing fetched from elsewhere: no src/href to files or URLs, everything inline
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["'](?!data:)""", html)
    assert "fetch(" in html  # the page's code is there, but report mode never calls it (TRAINSPECT_STATIC)
    assert 'src="data:image/png;base64,' in html  # the cockpit figure
    data = _static_data(html)["data"]
    with open_run(full_run) as r:
        for name, info in r.series_info().items():
            if info["kind"] == "scalar":
                got = data[f"series?name={name}&run=."]
                s = r.series(name)
                assert got["steps"] == s.steps.tolist()
                assert np.allclose(np.array(got["values"], dtype=float), s.values, equal_nan=True)
            elif info["kind"] == "histogram":
                got = data[f"histogram?name={name}&run=."]
                assert np.allclose(got["counts"], r.histograms(name).counts[-1])
        assert data["run?run=."]["findings"][0]["remedies"] == r.findings()[0]["remedies"]
    assert data["samples?run=.&step=latest"]["step"] == 15
    assert "samples?run=.&step=5" in data
