"""The run store's writer: one SQLite database per run folder, one transaction per step."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from trainspect.engine.record import Sink, StepRecord
from trainspect.engine.values import SeriesInfo
from trainspect.store.codec import encode, scalar_to_sql, to_json
from trainspect.store.errors import StoreError, StoreVersionError
from trainspect.store.schema import DB_FILENAME, SCHEMA, SCHEMA_VERSION


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open a store database (WAL mode: one writer, any number of concurrent readers).

    Raises:
        StoreVersionError: if it was written with a newer schema.
    """
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreVersionError(
            f"{path} was written by a newer trainspect (store schema {version}, this version reads up to "
            f"{SCHEMA_VERSION}); upgrade trainspect (pip install -U trainspect) to read it"
        )
    if create:
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + synchronous=NORMAL: a committed step survives a killed process (it is in the WAL file);
        # only a power loss can drop the last commits. No fsync per step.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def prepare_run_dir(run_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Create ``run_dir`` (if needed) and check it can hold a new run.

    Raises:
        StoreError: if the folder is not writable, is a file, or already holds a run (and not ``overwrite``).
        StoreVersionError: if it holds a store of a newer schema.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise StoreError(f"run folder {path} is a file, not a folder; pass another run_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create run folder {path}: {error}; pass a writable run_dir") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"run folder {path} is not writable; pass a writable run_dir")
    db = path / DB_FILENAME
    if db.exists():
        conn = sqlite3.connect(str(db))
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{db} holds a run written by a newer trainspect (store schema {version} > {SCHEMA_VERSION}); "
                "upgrade trainspect or choose another run_dir"
            )
        if not overwrite:
            raise StoreError(
                f"run folder {path} already holds a run; pass overwrite=True to replace it, or another run_dir"
            )
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    return path


class StoreWriter(Sink):
    """Writes a run into ``run_dir/trainspect.db``. Only one writer per run (rank 0 in distributed runs)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, overwrite: bool = False):
        self.run_dir = prepare_run_dir(run_dir, overwrite=overwrite)
        self.path = self.run_dir / DB_FILENAME
        self.conn = connect(self.path, create=True)
        self._series_ids: dict[str, int] = {}

    # -- metadata ----------------------------------------------------------------------------------
    def open(self, meta: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        with self._transaction():
            self._write_meta(meta)
            self.conn.executemany(
                "INSERT OR REPLACE INTO layers(idx, name, module, module_class, shape, numel) VALUES (?,?,?,?,?,?)",
                [
                    (i, l["name"], l["module"], l["module_class"], json.dumps(list(l["shape"])), int(l["numel"]))
                    for i, l in enumerate(layers)
                ],
            )

    def write_meta(self, meta: dict[str, Any]) -> None:
        with self._transaction():
            self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO run(key, value) VALUES (?, ?)", [(k, to_json(v)) for k, v in meta.items()]
        )

    def _series_id(self, name: str) -> int:
        try:
            return self._series_ids[name]
        except KeyError:
            raise StoreError(f"series {name!r} was written before being registered") from None

    def register_series(self, instrument: str, info: SeriesInfo) -> None:
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO series(name, kind, instrument, info) VALUES (?,?,?,?)",
            (info.name, info.kind, instrument, to_json(dataclasses.asdict(info))),
        )
        del cur
        row = self.conn.execute("SELECT id FROM series WHERE name = ?", (info.name,)).fetchone()
        self._series_ids[info.name] = int(row[0])

    # -- per step ----------------------------------------------------------------------------------
    def write_step(self, record: StepRecord) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for instrument, info in record.new_series:
                self.register_series(instrument, info)
            sid = self._series_ids
            step = record.step
            if record.scalars:
                conn.executemany(
                    "INSERT OR REPLACE INTO scalars(series_id, step, value) VALUES (?,?,?)",
                    [(sid[k], step, scalar_to_sql(v)) for k, v in record.scalars.items()],
                )
            if record.layers:
                conn.executemany(
                    "INSERT OR REPLACE INTO vectors(series_id, step, data) VALUES (?,?,?)",
                    [(sid[k], step, encode(v)) for k, v in record.layers.items()],
                )
            if record.histograms:
                conn.executemany(
                    "INSERT OR REPLACE INTO histograms(series_id, step, counts, shape, x_edges, y_edges) "
                    "VALUES (?,?,?,?,?,?)",
                    [
                        (
                            sid[k],
                            step,
                            encode(h.counts),
                            json.dumps(list(h.counts.shape)),
                            encode(h.x_edges),
                            None if h.y_edges is None else encode(h.y_edges),
                        )
                        for k, h in record.histograms.items()
                    ],
                )
            conn.execute(
                "INSERT OR REPLACE INTO steps(step, wall_time, user_seconds, overhead_seconds, optimizer_stepped) "
                "VALUES (?,?,?,?,?)",
                (step, record.wall_time, record.user_seconds, record.overhead_seconds, int(record.optimizer_stepped)),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def write_user_values(self, record: StepRecord) -> None:
        with self._transaction():
            for instrument, info in record.new_series:
                self.register_series(instrument, info)
            self.conn.executemany(
                "INSERT OR REPLACE INTO scalars(series_id, step, value) VALUES (?,?,?)",
                [(self._series_ids[k], record.step, scalar_to_sql(v)) for k, v in record.scalars.items()],
            )

    def write_error(self, step: int | None, source: str, message: str, traceback: str) -> None:
        with self._transaction():
            self.conn.execute(
                "INSERT INTO errors(step, source, message, traceback, wall_time) VALUES (?,?,?,?,?)",
                (step, source, message, traceback, time.time()),
            )

    def write_finding(self, finding: Any, *, new: bool) -> None:
        with self._transaction():
            self.conn.execute(
                "INSERT INTO findings(code, severity, location, first_step, last_step, count, title, explanation, "
                "evidence, remedies, rank) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(code, location) DO UPDATE SET severity=excluded.severity, "
                "last_step=excluded.last_step, count=excluded.count, evidence=excluded.evidence",
                (
                    finding.code,
                    finding.severity,
                    finding.location,
                    finding.first_step,
                    finding.last_step,
                    finding.count,
                    finding.title,
                    finding.explanation,
                    to_json(finding.evidence),
                    to_json(list(finding.remedies)),
                    finding.rank,
                ),
            )

    def execute(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Write extra rows (e.g. logged samples) in one transaction."""
        with self._transaction():
            self.conn.executemany(sql, rows)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self.conn.close()
                self.conn = None  # type: ignore[assignment]

    # -- helpers -----------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN")

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> StoreWriter._Tx:
        return StoreWriter._Tx(self.conn)
