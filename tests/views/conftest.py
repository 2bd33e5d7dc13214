"""Shared runs for the views tests (made once per session: each is a few tiny training steps)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # views_support

from views_support import tiny_run


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("views-runs")


@pytest.fixture(scope="session")
def cheap_run(runs_root: Path) -> Path:
    """The cheap instruments only (no histograms, no curvature)."""
    return tiny_run(runs_root / "cheap", steps=12)


@pytest.fixture(scope="session")
def full_run(runs_root: Path) -> Path:
    """Cheap instruments + test instruments of every kind (histogram, 2-D histogram, curve, curvature) + samples."""
    return tiny_run(runs_root / "full", steps=16, full=True, samples=True)
