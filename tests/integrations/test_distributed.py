"""DDP: 2 processes (gloo, CPU) give the values of one process on the concatenated global batch.

One spawn runs three scenarios (see ``ddp_worker.py``); a hang fails the test after a timeout instead of
blocking CI (the process group also has a 60 s collective timeout).
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainspect

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker

WORLD = 2
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    out = tmp_path_factory.mktemp("ddp")
    init_file = out / "init"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=ddp_worker.run, args=(r, WORLD, str(init_file), str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {TIMEOUT_S} s: a collective hangs"
    assert [p.exitcode for p in procs] == [0] * WORLD, f"exit codes {[p.exitcode for p in procs]}"
    return out


def _single_process_run(tmp_path: Path, instruments) -> Path:
    batches = ddp_worker.global_batches(WORLD)
    ddp_worker.train(ddp_worker.make_model(), batches, tmp_path / "single", instruments)
    return tmp_path / "single"


def _assert_same_run(single, ddp, requested) -> set[str]:
    assert ddp.errors() == [] and single.errors() == []

    # the instruments asked for; the default checks add rank-local helpers of their own (activation and
    # input statistics of the local batch) that are not part of this claim
    def compared(run):
        return {n for n, i in run.series_info().items() if i["instrument"] in requested} - {"step_time"}

    names = compared(single)
    assert names == compared(ddp)
    for name, info in sorted(single.series_info().items()):
        if name not in names:
            continue
        if info["kind"] in ("scalar", "layers"):
            s, d = single.series(name), ddp.series(name)
            np.testing.assert_array_equal(s.steps, d.steps, err_msg=name)
            np.testing.assert_allclose(d.values, s.values, rtol=1e-5, atol=1e-12, err_msg=name)
        else:
            s, d = single.histograms(name), ddp.histograms(name)
            np.testing.assert_array_equal(s.steps, d.steps, err_msg=name)
            for k in range(len(s.steps)):
                np.testing.assert_allclose(d.x_edges[k], s.x_edges[k], rtol=1e-5, atol=1e-12, err_msg=name)
                np.testing.assert_allclose(d.counts[k], s.counts[k], rtol=1e-5, atol=1e-9, err_msg=name)
    # the layer names are the model's, whether the DDP wrapper or the module was attached
    assert ddp.layer_names == single.layer_names
    return names


def test_ddp_values_equal_single_process_on_global_batch(ddp_runs, tmp_path):
    single = trainspect.open_run(_single_process_run(tmp_path, {n: 1 for n in ddp_worker.CHEAP}))
    names = _assert_same_run(single, trainspect.open_run(ddp_runs / "ddp"), set(ddp_worker.CHEAP))
    assert {"loss", "grad_norm", "layer_grad_norm", "update_size", "distance", "update_to_weight"} <= names


def test_ddp_per_sample_instruments_equal_single_process(ddp_runs, tmp_path):
    single = trainspect.open_run(_single_process_run(tmp_path, {n: 1 for n in ddp_worker.PER_SAMPLE}))
    names = _assert_same_run(single, trainspect.open_run(ddp_runs / "per_sample"), set(ddp_worker.PER_SAMPLE))
    assert {"norm_test", "inner_test", "ortho_test", "alpha", "mean_gsnr", "grad_hist_1d"} <= names


def test_failing_instrument_on_one_rank_does_not_hang_or_corrupt(ddp_runs):
    run = trainspect.open_run(ddp_runs / "failure")
    steps, sums = run.scalar("sum_of_ranks")
    np.testing.assert_array_equal(steps, np.arange(ddp_worker.STEPS))
    np.testing.assert_array_equal(sums, np.full(ddp_worker.STEPS, float(sum(range(1, WORLD + 1)))))
    steps, _ = run.scalar("fails_on_rank_one")
    np.testing.assert_array_equal(steps, [0])  # gone from the step it failed on, on every rank
    errors = run.errors()
    assert len(errors) == 1 and errors[0]["source"] == "instrument:fails_on_rank_one"
    assert errors[0]["step"] == 1 and "rank 1" in errors[0]["message"]
    assert len(run.scalar("loss")[0]) == ddp_worker.STEPS


def test_rank_local_nan_names_the_rank(ddp_runs):
    run = trainspect.open_run(ddp_runs / "nan")
    findings = [f for f in run.findings() if f["code"] == "nonfinite-loss-on-rank"]
    assert len(findings) == 1
    assert findings[0]["rank"] == 1 and findings[0]["first_step"] == 2
    _, loss = run.scalar("loss")
    assert np.isfinite(loss[:2]).all() and np.isnan(loss[2])


def test_attached_on_rank_zero_only_does_not_hang(ddp_runs):
    run = trainspect.open_run(ddp_runs / "rank0_only")
    steps, loss = run.scalar("loss")
    np.testing.assert_array_equal(steps, np.arange(ddp_worker.STEPS))
    # rank 0's own loss: its slice of the global batch (the model is the same on both ranks at step 0)
    x, y = ddp_worker.global_batches(WORLD)[0]
    with torch.no_grad():
        local = torch.nn.functional.cross_entropy(ddp_worker.make_model()(x[:ddp_worker.LOCAL_BATCH]),
                                                  y[:ddp_worker.LOCAL_BATCH])
    np.testing.assert_allclose(loss[0], float(local), rtol=1e-10)
