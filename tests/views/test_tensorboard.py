"""TensorBoard export and live sink, read back with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea

import trainspect
from trainspect.cli import main
from trainspect.store import open_run
from trainspect.views.tensorboard import TensorBoardSink


def _read(log_dir: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _check_against_store(acc: ea.EventAccumulator, run: Path, histograms: bool = True) -> None:
    tags = acc.Tags()
    with open_run(run) as r:
        for name, info in r.series_info().items():
            group = info["group"]
            if info["kind"] == "scalar":
                s = r.series(name)
                events = acc.Scalars(f"{group}/{name}")
                assert [e.step for e in events] == s.steps.tolist()
                assert np.allclose([e.value for e in events], s.values, rtol=1e-6, equal_nan=True)
            elif info["kind"] == "layers":
                s = r.series(name)
                for j, layer in enumerate(s.layer_names):
                    events = acc.Scalars(f"{group}/{name}/{layer}")
                    assert [e.step for e in events] == s.steps.tolist()
                    assert np.allclose([e.value for e in events], s.values[:, j], rtol=1e-6)
            elif info["kind"] == "histogram" and histograms:
                h = r.histograms(name)
                events = acc.Histograms(f"{group}/{name}")
                assert [e.step for e in events] == h.steps.tolist()
                for e, counts, edges in zip(events, h.counts, h.x_edges):
                    v = e.histogram_value
                    assert np.allclose(v.bucket, counts) and np.allclose(v.bucket_limit, edges[1:])
                    assert v.num == pytest.approx(counts.sum()) and v.min == pytest.approx(edges[0])
            else:  # 2-D histograms and curves have no TensorBoard form
                assert not any(name in t for t in tags["scalars"] + tags["histograms"])
        for f in r.findings():
            assert f"findings/{f['code']}/text_summary" in tags["tensors"]


def test_export_reads_back_equal_to_the_store(full_run: Path, tmp_path: Path) -> None:
    assert main(["export-tensorboard", str(full_run), str(tmp_path / "tb")]) == 0
    _check_against_store(_read(tmp_path / "tb"), full_run)


def test_live_sink_writes_the_same_as_the_store(tmp_path: Path) -> None:
    from tests.views.views_support import ViewsTestCheck, ViewsTestGradHistogram

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = TensorBoardSink(tmp_path / "tb")
    inspector = trainspect.attach(model, opt, nn.CrossEntropyLoss(), run_dir=tmp_path / "run",
                                  instruments=["loss", "grad_norm", "update_size", ViewsTestGradHistogram()],
                                  checks=[ViewsTestCheck(at=2)], progress=False, sinks=[sink])
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
    for _ in range(6):
        opt.zero_grad()
        with inspector.step(x, y):
            loss = inspector.loss_fn(model(x), y)
            loss.backward()
        opt.step()
    inspector.log(val_accuracy=0.5)
    inspector.close()
    acc = _read(tmp_path / "tb")
    _check_against_store(acc, tmp_path / "run")
    assert [e.value for e in acc.Scalars("performance/val_accuracy")] == [0.5]
