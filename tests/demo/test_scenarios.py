"""Each demo scenario shows its finding on a real digits run (fast subset by default)."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch

from trainspect.demo.run import run_demo
from trainspect.demo.scenarios import SCENARIOS
from trainspect.store import open_run


def _codes(name: str, epochs: int, tmp_path) -> set[str]:  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            run_dir = run_demo(name, epochs=epochs, run_dir=tmp_path / name, progress=False)
    finally:
        torch.set_num_threads(before)
    return {f["code"] for f in open_run(run_dir).findings()}


@pytest.mark.parametrize("name", ["nan", "double-softmax", "no-zero-grad", "dead-relu"])
def test_fast_scenarios_show_their_finding(name, tmp_path):
    codes = _codes(name, 1, tmp_path)
    assert set(SCENARIOS[name].expected) & codes, codes


def test_healthy_scenario_is_silent(tmp_path):
    assert not _codes("healthy", 2, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario(name, tmp_path):
    codes = _codes(name, 10, tmp_path)
    expected = set(SCENARIOS[name].expected)
    assert (expected & codes) if expected else not codes, codes
