"""The command line: demo, runs, show (run in-process through ``trainspect.cli.main``)."""

from __future__ import annotations

import subprocess
import sys

from trainspect.cli import main
from trainspect.store import open_run


def test_demo_trains_and_stores_a_run(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--run-dir", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "run stored in" in out and "no findings" in out
    with open_run(run) as r:
        steps, loss = r.scalar("loss")
        assert len(steps) == 2 * 45  # 1437 training digits / batch 32 = 45 steps per epoch
        assert loss[-5:].mean() < loss[:5].mean() / 2  # it really trains
        val = r.scalar("val_accuracy")[1]
        assert len(val) == 2 and val[-1] > 0.8
        assert r.meta["config"]["scenario"] == "healthy"


def test_runs_and_show(tmp_path, capsys):
    run = tmp_path / "runs" / "one"
    assert main(["demo", "--epochs", "1", "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert "one" in capsys.readouterr().out
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "Sequential" in out and "val_accuracy" in out


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "no trainspect run" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "empty")]) == 1


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "trainspect", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout and "show" in out.stdout
