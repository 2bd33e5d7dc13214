"""The run store: round trips, concurrent reading while another process trains, kill -9, versions."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from trainspect.engine.record import HistogramValue, StepRecord
from trainspect.engine.values import SeriesInfo
from trainspect.store import SCHEMA_VERSION, StoreVersionError, StoreWriter, list_runs, open_run

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize("sync", [True, False])
def test_round_trip_of_every_kind(tmp_path, sync):
    writer = StoreWriter(tmp_path / "run", sync=sync)
    layers = [{"name": "w", "module": "fc", "module_class": "Linear", "shape": [3, 2], "numel": 6},
              {"name": "b", "module": "fc", "module_class": "Linear", "shape": [3], "numel": 3}]
    writer.open({"name": "t", "config": {"lr": 0.1, "bad": float("inf")}}, layers)
    infos = [("i", SeriesInfo("loss")), ("i", SeriesInfo("layer_x", "layers")), ("i", SeriesInfo("h", "histogram")),
             ("i", SeriesInfo("h2", "histogram2d"))]
    for step in range(3):
        writer.write_step(StepRecord(
            step, 1000.0 + step, 0.01, 0.001, True,
            scalars={"loss": [1.5, float("nan"), float("inf")][step]},
            layers={"layer_x": np.array([step, -step], dtype=float)},
            histograms={"h": HistogramValue(np.arange(4.0) * step, np.linspace(0, 1, 5)),
                        "h2": HistogramValue(np.ones((2, 3)), np.arange(3.0), np.arange(4.0))},
            new_series=infos if step == 0 else [],
        ))
    writer.close()
    with open_run(tmp_path / "run") as run:
        assert run.meta["config"] == {"lr": 0.1, "bad": float("inf")}
        steps, loss = run.scalar("loss")
        assert list(steps) == [0, 1, 2] and loss[0] == 1.5 and math.isnan(loss[1]) and loss[2] == math.inf
        np.testing.assert_array_equal(run.series("layer_x").values, [[0, 0], [1, -1], [2, -2]])
        h = run.histograms("h")
        np.testing.assert_array_equal(h.counts[2], np.arange(4.0) * 2)
        h2 = run.histograms("h2")
        assert h2.counts[0].shape == (2, 3) and list(h2.y_edges[0]) == [0, 1, 2, 3]
        assert run.series_info()["layer_x"]["kind"] == "layers"
        assert run.layers()[0]["shape"] == [3, 2]
        assert list(run.steps()["wall_time"]) == [1000.0, 1001.0, 1002.0]


TRAINER = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {src!r})
    import trainspect
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    ins = trainspect.attach(model, opt, loss_fn, run_dir={run!r}, progress=False)
    for step in range({steps}):
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        opt.zero_grad()
        with ins.step(x, y):
            loss_fn(model(x), y).backward()
        opt.step()
        print(step, flush=True)
        time.sleep({sleep})
    ins.close()
""")


def _start_trainer(run: Path, steps: int, sleep: float) -> subprocess.Popen[str]:
    script = TRAINER.format(src=SRC, run=str(run), steps=steps, sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_reading_a_run_while_another_process_writes_it(tmp_path):
    run = tmp_path / "live"
    proc = _start_trainer(run, steps=60, sleep=0.02)
    try:
        assert proc.stdout is not None
        seen_counts = []
        for line in proc.stdout:
            if not line.strip().isdigit():
                continue  # the closing summary
            step = int(line)
            if step % 10 == 5:
                with open_run(run) as reader:  # a reader opened mid-run, while the writer commits
                    # (under heavy load the writer may not have committed the first step yet)
                    seen_counts.append(len(reader.series("loss")) if "loss" in reader.series_names() else 0)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert len(seen_counts) == 6 and seen_counts == sorted(seen_counts) and seen_counts[-1] > seen_counts[0]
    with open_run(run) as reader:
        assert len(reader.series("loss")) == 60 and reader.meta["status"] == "finished"


def test_kill_minus_nine_loses_at_most_the_last_step(tmp_path):
    run = tmp_path / "killed"
    proc = _start_trainer(run, steps=10_000, sleep=0.005)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 40:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # the writer process commits what it received, then exits; wait for the database to settle
    deadline = time.time() + 30
    committed = -1
    while time.time() < deadline:
        with open_run(run) as reader:
            now = reader.last_step
        if now is not None and now == committed:
            break
        committed = -1 if now is None else now
        time.sleep(0.3)
    assert committed >= last - 1, (committed, last)
    with open_run(run) as reader:
        assert reader.meta["status"] == "running"  # never closed
        steps, _ = reader.scalar("loss")
        assert list(steps) == list(range(committed + 1))  # no gaps


def test_newer_schema_is_refused_clearly(tmp_path):
    writer = StoreWriter(tmp_path / "run", sync=True)
    writer.close()
    conn = sqlite3.connect(tmp_path / "run" / "trainspect.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionError, match="newer trainspect"):
        open_run(tmp_path / "run")
    with pytest.raises(StoreVersionError, match="newer trainspect"):
        StoreWriter(tmp_path / "run", overwrite=True)


def test_list_runs_and_missing_run(tmp_path):
    for name in ("a", "b"):
        StoreWriter(tmp_path / "runs" / name, sync=True).close()
        time.sleep(0.01)
    assert [p.name for p in list_runs(tmp_path / "runs")] == ["b", "a"]
    with pytest.raises(Exception, match="no trainspect run"):
        open_run(tmp_path / "nothing")


def test_no_pickle_in_the_store_package():
    store = Path(SRC) / "trainspect" / "store"
    for path in store.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text and "pickle.dump" not in text, path
