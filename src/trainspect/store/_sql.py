"""SQL side of the run store writer. Standard library only: it also runs in the writer process.

Messages are ``(header, payload)``: a JSON-able dict with an ``op`` and a byte string holding the arrays
(raw little-endian float64), referenced from the header by ``[offset, length]``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

try:  # inside the package
    from trainspect.store.schema import SCHEMA, SCHEMA_VERSION
except ImportError:  # in the writer process, which loads this file without the (torch-importing) package
    from schema import SCHEMA, SCHEMA_VERSION  # type: ignore[no-redef]


class SchemaTooNew(RuntimeError):
    def __init__(self, path: str, version: int):
        super().__init__(
            f"{path} was written by a newer trainspect (store schema {version}, this version reads up to "
            f"{SCHEMA_VERSION}); upgrade trainspect (pip install -U trainspect) to read it"
        )
        self.version = version


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """Open a store database (WAL mode: one writer, any number of concurrent readers).

    Raises:
        SchemaTooNew: if it was written with a newer schema.
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise SchemaTooNew(path, version)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + synchronous=NORMAL: a committed step survives a killed process (it is in the WAL file);
    # only a power loss can drop the last commits. No fsync per step.
    conn.execute("PRAGMA synchronous=NORMAL")
    if create:
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def _real(value: Any) -> float | None:
    """JSON carries NaN/inf as strings; SQLite stores NULL for NaN (it has no NaN) and ±inf as they are."""
    if isinstance(value, str):
        value = float(value)
    if value is None or math.isnan(value):
        return None
    return value


class SqlWriter:
    """Applies writer messages to the database.

    ``apply`` commits a batch of messages in one transaction (the writer process batches whatever arrived
    while it was committing, so it keeps up with any step rate); each message sits in its own savepoint, so
    a message that fails is rolled back alone and reported.
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.series_ids: dict[str, int] = {}

    def dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        """Apply one message in its own transaction."""
        errors = self.apply([(header, payload)])
        if errors:
            raise errors[0]

    def apply(self, messages: list[tuple[dict[str, Any], bytes]]) -> list[Exception]:
        """Apply messages in one transaction; returns the errors of those that failed (rolled back alone).

        Fast path: the rows of all step messages go in one ``executemany`` per table. If anything fails,
        the batch is redone message by message, each in a savepoint, so only the bad message is lost.
        """
        conn = self.conn
        conn.execute("BEGIN")
        try:
            self._apply_batched(messages)
        except Exception:
            conn.execute("ROLLBACK")
            self.series_ids.clear()
        else:
            conn.execute("COMMIT")
            return []
        errors: list[Exception] = []
        conn.execute("BEGIN")
        try:
            for header, payload in messages:
                conn.execute("SAVEPOINT message")
                try:
                    getattr(self, "op_" + header["op"])(header, payload)
                except Exception as error:
                    conn.execute("ROLLBACK TO message")
                    errors.append(error)
                    self.series_ids.clear()  # a failed registration may have left stale ids
                conn.execute("RELEASE message")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return errors

    def _apply_batched(self, messages: list[tuple[dict[str, Any], bytes]]) -> None:
        scalars: list[tuple[Any, ...]] = []
        vectors: list[tuple[Any, ...]] = []
        histograms: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        for h, payload in messages:
            op = h["op"]
            if op not in ("step", "user"):
                getattr(self, "op_" + op)(h, payload)
                continue
            self._register(h.get("new_series", ()))
            sid = self.series_ids
            step = h["step"]
            scalars.extend((sid[k], step, _real(v)) for k, v in h["scalars"].items())
            if op == "user":
                continue
            vectors.extend((sid[k], step, payload[o:o + n]) for k, (o, n) in h["layers"].items())
            histograms.extend(
                (sid[k], step, payload[c[0]:c[0] + c[1]], json.dumps(shape), payload[x[0]:x[0] + x[1]],
                 None if y is None else payload[y[0]:y[0] + y[1]])
                for k, (c, shape, x, y) in h["histograms"].items()
            )
            steps.append((step, h["wall_time"], h["user_seconds"], h["overhead_seconds"], int(h["optimizer_stepped"])))
        conn = self.conn
        if scalars:
            conn.executemany("INSERT OR REPLACE INTO scalars(series_id, step, value) VALUES (?,?,?)", scalars)
        if vectors:
            conn.executemany("INSERT OR REPLACE INTO vectors(series_id, step, data) VALUES (?,?,?)", vectors)
        if histograms:
            conn.executemany(
                "INSERT OR REPLACE INTO histograms(series_id, step, counts, shape, x_edges, y_edges) "
                "VALUES (?,?,?,?,?,?)",
                histograms,
            )
        if steps:
            conn.executemany(
                "INSERT OR REPLACE INTO steps(step, wall_time, user_seconds, overhead_seconds, optimizer_stepped) "
                "VALUES (?,?,?,?,?)",
                steps,
            )

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self.conn.close()

    # -- operations ------------------------------------------------------------------------------------
    def op_open(self, h: dict[str, Any], payload: bytes) -> None:
        self._meta(h["meta"])
        self.conn.executemany(
            "INSERT OR REPLACE INTO layers(idx, name, module, module_class, shape, numel) VALUES (?,?,?,?,?,?)",
            [(i, *row) for i, row in enumerate(h["layers"])],
        )

    def op_meta(self, h: dict[str, Any], payload: bytes) -> None:
        self._meta(h["meta"])

    def op_step(self, h: dict[str, Any], payload: bytes) -> None:
        self._apply_batched([(h, payload)])

    def op_user(self, h: dict[str, Any], payload: bytes) -> None:
        self._apply_batched([(h, payload)])

    def op_error(self, h: dict[str, Any], payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO errors(step, source, message, traceback, wall_time) VALUES (?,?,?,?,?)",
            (h["step"], h["source"], h["message"], h["traceback"], h["wall_time"]),
        )

    def op_finding(self, h: dict[str, Any], payload: bytes) -> None:
        f = h["finding"]
        self.conn.execute(
            "INSERT INTO findings(code, severity, location, first_step, last_step, count, title, explanation, "
            "evidence, remedies, rank) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(code, location) DO UPDATE SET severity=excluded.severity, "
            "last_step=excluded.last_step, count=excluded.count, evidence=excluded.evidence",
            (f["code"], f["severity"], f["location"], f["first_step"], f["last_step"], f["count"], f["title"],
             f["explanation"], f["evidence"], f["remedies"], f["rank"]),
        )

    def op_execute(self, h: dict[str, Any], payload: bytes) -> None:
        def cell(v: Any) -> Any:
            if isinstance(v, dict) and "$blob" in v:
                o, n = v["$blob"]
                return payload[o:o + n]
            return v

        self.conn.executemany(h["sql"], [tuple(cell(v) for v in row) for row in h["rows"]])

    # -- helpers ---------------------------------------------------------------------------------------
    def _meta(self, meta: dict[str, str]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO run(key, value) VALUES (?, ?)", list(meta.items()))

    def _register(self, new_series: Any) -> None:
        if not self.series_ids:
            self.series_ids.update(self.conn.execute("SELECT name, id FROM series"))
        for instrument, name, kind, info in new_series:
            self.conn.execute(
                "INSERT OR IGNORE INTO series(name, kind, instrument, info) VALUES (?,?,?,?)",
                (name, kind, instrument, info),
            )
            self.series_ids[name] = self.conn.execute("SELECT id FROM series WHERE name = ?", (name,)).fetchone()[0]
