"""Reading a run, while it trains or after: series as NumPy arrays (pandas optional)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainspect.store.codec import decode
from trainspect.store.errors import StoreError, StoreVersionError
from trainspect.store.schema import DB_FILENAME, SCHEMA_VERSION


def _from_json(text: str) -> Any:
    value = json.loads(text)

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v in ("nan", "inf", "-inf"):
            return float(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(value)


@dataclass
class Series:
    """One series: ``steps`` (int64, ascending) and ``values`` (float64; per-layer: steps × layers)."""

    name: str
    kind: str
    steps: np.ndarray
    values: np.ndarray
    info: dict[str, Any]
    layer_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class HistogramSeries:
    """Histograms of one series: ``counts[k]`` at ``steps[k]`` with edges ``x_edges[k]`` (and ``y_edges[k]``).

    For a ``curve`` series, ``counts[k]`` holds y and ``x_edges[k]`` holds x.
    """

    name: str
    steps: np.ndarray
    counts: list[np.ndarray]
    x_edges: list[np.ndarray]
    y_edges: list[np.ndarray | None]
    info: dict[str, Any]


class RunReader:
    """Read-only access to one run folder. Safe while another process writes it (SQLite WAL)."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        path = Path(run_dir)
        db = path / DB_FILENAME if path.is_dir() else path
        if not db.exists():
            raise StoreError(f"no trainspect run at {path} (expected {DB_FILENAME} in that folder)")
        self.run_dir = db.parent
        self.path = db
        self.conn = sqlite3.connect(str(db), timeout=30.0, check_same_thread=False)
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise StoreVersionError(
                f"{db} was written by a newer trainspect (store schema {version} > {SCHEMA_VERSION}); "
                "upgrade trainspect to read it"
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """Run metadata: model summary, parameter count, optimizer and hyper-parameters, versions, times."""
        return {k: _from_json(v) for k, v in self.conn.execute("SELECT key, value FROM run")}

    @property
    def layer_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM layers ORDER BY idx")]

    def layers(self) -> list[dict[str, Any]]:
        """The tracked parameter tensors: name, module, module_class, shape, numel."""
        rows = self.conn.execute("SELECT name, module, module_class, shape, numel FROM layers ORDER BY idx")
        return [
            {"name": n, "module": m, "module_class": c, "shape": json.loads(s), "numel": k}
            for n, m, c, s, k in rows
        ]

    def series_info(self) -> dict[str, dict[str, Any]]:
        """``{series name: info}`` for every series in the run (kind, instrument, description, healthy, ...)."""
        out = {}
        for name, kind, instrument, info in self.conn.execute(
            "SELECT name, kind, instrument, info FROM series ORDER BY id"
        ):
            d = _from_json(info)
            d.update(kind=kind, instrument=instrument)
            out[name] = d
        return out

    def series_names(self, kind: str | None = None) -> list[str]:
        return [n for n, i in self.series_info().items() if kind is None or i["kind"] == kind]

    def _series_row(self, name: str) -> tuple[int, str, dict[str, Any]]:
        row = self.conn.execute("SELECT id, kind, info FROM series WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"run {self.run_dir} has no series {name!r}; it has {self.series_names()}")
        return int(row[0]), row[1], _from_json(row[2])

    # -- series ------------------------------------------------------------------------------------
    def series(self, name: str, *, since: int | None = None) -> Series:
        """Scalar or per-layer series ``name`` (optionally only steps ``>= since``)."""
        sid, kind, info = self._series_row(name)
        lo = -1 if since is None else since
        if kind == "scalar":
            rows = self.conn.execute(
                "SELECT step, value FROM scalars WHERE series_id = ? AND step >= ? ORDER BY step", (sid, lo)
            ).fetchall()
            steps = np.array([r[0] for r in rows], dtype=np.int64)
            values = np.array([math.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
            return Series(name, kind, steps, values, info)
        if kind == "layers":
            rows = self.conn.execute(
                "SELECT step, data FROM vectors WHERE series_id = ? AND step >= ? ORDER BY step", (sid, lo)
            ).fetchall()
            names = self.layer_names
            steps = np.array([r[0] for r in rows], dtype=np.int64)
            values = np.stack([decode(r[1]) for r in rows]) if rows else np.zeros((0, len(names)))
            return Series(name, kind, steps, values, info, layer_names=names)
        raise KeyError(f"series {name!r} is a {kind}; use histograms({name!r})")

    def scalar(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a scalar series."""
        s = self.series(name)
        return s.steps, s.values

    def histograms(self, name: str) -> HistogramSeries:
        sid, kind, info = self._series_row(name)
        if kind not in ("histogram", "histogram2d", "curve"):
            raise KeyError(f"series {name!r} is a {kind}, not a histogram")
        rows = self.conn.execute(
            "SELECT step, counts, shape, x_edges, y_edges FROM histograms WHERE series_id = ? ORDER BY step", (sid,)
        ).fetchall()
        return HistogramSeries(
            name,
            np.array([r[0] for r in rows], dtype=np.int64),
            [decode(r[1], json.loads(r[2])) for r in rows],
            [decode(r[3]) for r in rows],
            [None if r[4] is None else decode(r[4]) for r in rows],
            info,
        )

    def steps(self) -> dict[str, np.ndarray]:
        """The steps table: step, wall_time, user_seconds, overhead_seconds, optimizer_stepped."""
        rows = self.conn.execute(
            "SELECT step, wall_time, user_seconds, overhead_seconds, optimizer_stepped FROM steps ORDER BY step"
        ).fetchall()
        cols = ("step", "wall_time", "user_seconds", "overhead_seconds", "optimizer_stepped")
        arr = np.array(rows, dtype=np.float64).reshape(-1, len(cols))
        out = {c: arr[:, i] for i, c in enumerate(cols)}
        out["step"] = out["step"].astype(np.int64)
        return out

    @property
    def last_step(self) -> int | None:
        row = self.conn.execute("SELECT MAX(step) FROM steps").fetchone()
        return None if row[0] is None else int(row[0])

    def errors(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT step, source, message, traceback, wall_time FROM errors ORDER BY id")
        return [dict(zip(("step", "source", "message", "traceback", "wall_time"), r)) for r in rows]

    def findings(self) -> list[dict[str, Any]]:
        """Every finding: code, severity, location, first/last step, count, title, explanation, evidence, remedies."""
        rows = self.conn.execute(
            "SELECT code, severity, location, first_step, last_step, count, title, explanation, evidence, remedies, "
            "rank FROM findings ORDER BY first_step, id"
        ).fetchall()
        keys = ("code", "severity", "location", "first_step", "last_step", "count", "title", "explanation",
                "evidence", "remedies", "rank")
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            d["evidence"] = _from_json(d["evidence"])
            d["remedies"] = _from_json(d["remedies"])
            out.append(d)
        return out

    def to_pandas(self, names: list[str] | None = None) -> Any:
        """Scalar series as a pandas DataFrame indexed by step (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - optional
            raise ImportError("RunReader.to_pandas needs pandas: pip install pandas") from error
        names = names or self.series_names("scalar")
        return pd.DataFrame({n: pd.Series(*reversed(self.scalar(n))) for n in names})


def open_run(run_dir: str | os.PathLike[str]) -> RunReader:
    """Open a run folder for reading."""
    return RunReader(run_dir)


def list_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run folders under ``root`` (any depth up to 3), newest first."""
    root = Path(root)
    if (root / DB_FILENAME).exists():
        return [root]
    found = [p.parent for p in root.glob("*/" + DB_FILENAME)]
    found += [p.parent for p in root.glob("*/*/" + DB_FILENAME)]
    return sorted(set(found), key=lambda p: (p / DB_FILENAME).stat().st_mtime, reverse=True)
