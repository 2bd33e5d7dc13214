"""The bug suite: a fast subset by default, the whole suite with ``pytest -m slow``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bug_suite import evaluate
from benchmarks.bugs.cases import CASES

FAST = ("mlp-softmax-output", "mlp-head-not-in-optimizer", "healthy-mlp-adam")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(name: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    r = evaluate(case, tmp_path)
    assert r["verified"], f"{name}: the plain run does not show the fault: {r['how']}"
    if case.fault:
        assert r["detected"], f"{name}: expected one of {case.expected}, got {r['codes']}"
    else:
        assert not r["alarms"], f"{name}: false alarm {[f.code for f in r['alarms']]}"


@pytest.mark.parametrize("name", FAST)
def test_bug_suite_subset(name: str, tmp_path: Path) -> None:
    _check(name, tmp_path)


def test_suite_size_and_variety() -> None:
    faulty = [c for c in CASES if c.fault]
    healthy = [c for c in CASES if not c.fault]
    assert len(faulty) >= 20 and len({c.fault for c in faulty}) >= 12 and len(healthy) >= 8
    assert {"mlp", "cnn"} <= {c.family for c in CASES} and {"gru", "transformer"} & {c.family for c in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bug_suite_full(name: str, tmp_path: Path) -> None:
    _check(name, tmp_path)
