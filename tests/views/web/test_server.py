"""The dashboard server: JSON API equal to the store, and no file outside the runs folder is ever served."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainspect.store import open_run
from trainspect.views.web.server import Dashboard, DashboardServer, Forbidden, safe_join


@pytest.fixture(scope="module")
def server(full_run: Path, cheap_run: Path) -> Iterator[DashboardServer]:
    s = DashboardServer(full_run.parent, port=0).start()
    yield s
    s.stop()


def _get(server: DashboardServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _json(server: DashboardServer, path: str) -> dict:
    status, body = _get(server, path)
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize("bad", ["../secret", "a/../../secret", "..", "/etc", "/etc/passwd", "C:\\Windows",
                                 "\\\\server\\share", "full/../../secret", "x\x00y"])
def test_safe_join_refuses_paths_outside_the_folder(tmp_path: Path, bad: str) -> None:
    with pytest.raises(Forbidden):
        safe_join(tmp_path, bad)


def test_safe_join_refuses_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "link")
    with pytest.raises(Forbidden, match="outside"):
        safe_join(tmp_path / "root", "link")
    assert safe_join(tmp_path / "root", "sub/run") == (tmp_path / "root" / "sub" / "run").resolve()


def test_http_rejects_dotdot_and_absolute_paths(server: DashboardServer, full_run: Path, tmp_path: Path) -> None:
    secret = full_run.parent.parent / "secret.txt"
    secret.write_text("do not serve")
    for path in ["api/run?run=../", "api/run?run=..%2Ffull", "api/run?run=" + str(full_run),
                 "api/run?run=%2Fetc", "api/series?run=../../etc&name=loss",
                 "static/../server.py", "static/%2e%2e/server.py", "static/..%2F..%2Fsecret.txt",
                 "static/%2Fetc%2Fpasswd"]:
        status, body = _get(server, path)
        assert status == 403, (path, status, body)
        assert b"do not serve" not in body and b"root:" not in body
    assert _get(server, "api/run?run=nope")[0] == 404
    assert _get(server, "api/run")[0] == 400
    assert _get(server, "nothing-here")[0] == 404


def test_pages_and_vendored_chart_library_are_served(server: DashboardServer) -> None:
    status, index = _get(server, "")
    assert status == 200 and b"app.js" in index and b"http" not in index.split(b"<body>")[0].replace(b"https://", b"")
    status, js = _get(server, "static/vendor/uplot/uPlot.iife.min.js")
    assert status == 200 and b"uPlot" in js
    assert _get(server, "static/vendor/uplot/LICENSE")[0] == 200


def test_api_matches_the_store(server: DashboardServer, full_run: Path) -> None:
    runs = _json(server, "api/runs")["runs"]
    assert {r["id"] for r in runs} == {"full", "cheap"}
    summary = _json(server, "api/run?run=full")
    with open_run(full_run) as r:
        assert summary["last_step"] == r.last_step
        assert set(summary["series"]) == set(r.series_info())
        assert [f["code"] for f in summary["findings"]] == [f["code"] for f in r.findings()]
        assert summary["findings"][0]["remedies"] == r.findings()[0]["remedies"]
        assert [layer["name"] for layer in summary["layers"]] == r.layer_names
        loss = r.series("loss")
        layer = r.series("layer_grad_norm")
        hist = r.histograms("views_test_grad_hist")
    got = _json(server, "api/series?run=full&name=loss")
    assert got["steps"] == loss.steps.tolist() and np.allclose(got["values"], loss.values)
    got = _json(server, "api/series?run=full&name=layer_grad_norm&since=10")
    assert got["steps"] == [s for s in layer.steps.tolist() if s >= 10]
    assert np.allclose(got["values"], layer.values[layer.steps >= 10])
    assert got["layer_names"] == layer.layer_names
    got = _json(server, "api/histogram?run=full&name=views_test_grad_hist")
    assert got["step"] == int(hist.steps[-1]) and np.allclose(got["counts"], hist.counts[-1])
    assert _get(server, "api/series?run=full&name=no_such_series")[0] == 404
    samples = _json(server, "api/samples?run=full")
    assert samples["steps"] == [0, 5, 10, 15] and samples["examples"]


def test_a_single_run_folder_serves_only_that_run(full_run: Path) -> None:
    d = Dashboard(full_run)
    assert [r["id"] for r in d.runs()] == ["."]
    assert d.handle("run", {"run": "."})["last_step"] is not None
    with pytest.raises(Forbidden):
        d.handle("run", {"run": "../cheap"})
    with pytest.raises(FileNotFoundError):
        Dashboard(full_run / "missing")
