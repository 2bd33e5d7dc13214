"""The run store's SQLite schema (one database file per run folder).

Documented in ``docs/store.md``. Arrays are stored as raw little-endian float64 bytes with their shape as
JSON (no pickle anywhere). The schema version lives in ``PRAGMA user_version``; a reader or writer refuses a
store newer than itself.
"""

from __future__ import annotations

DB_FILENAME = "trainspect.db"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (            -- run metadata, one row per key, values are JSON
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (         -- catalog of every series the run has written
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,               -- scalar | layers | histogram | histogram2d | curve
    instrument TEXT NOT NULL,
    info       TEXT NOT NULL                -- JSON of trainspect.engine.values.SeriesInfo
);
CREATE TABLE IF NOT EXISTS layers (         -- tracked parameter tensors: index into per-layer vectors
    idx          INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,             -- parameter name, e.g. "encoder.0.weight"
    module       TEXT NOT NULL,             -- owning module, e.g. "encoder.0"
    module_class TEXT NOT NULL,             -- e.g. "Linear"
    shape        TEXT NOT NULL,             -- JSON list
    numel        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (          -- one row per recorded optimizer step
    step              INTEGER PRIMARY KEY,
    wall_time         REAL NOT NULL,        -- seconds since the epoch, at the end of the step
    user_seconds      REAL,                 -- forward + backward + optimizer time
    overhead_seconds  REAL,                 -- trainspect's own time this step
    optimizer_stepped INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS scalars (
    series_id INTEGER NOT NULL REFERENCES series(id),
    step      INTEGER NOT NULL,
    value     REAL,                         -- NULL encodes NaN (SQLite has no NaN)
    PRIMARY KEY (step, series_id)           -- step first: one step's rows land on one page (cheap commits)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (        -- per-layer values: float64 vector over the layers table
    series_id INTEGER NOT NULL REFERENCES series(id),
    step      INTEGER NOT NULL,
    data      BLOB NOT NULL,
    PRIMARY KEY (step, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS histograms (     -- 1-D (y_edges NULL), 2-D histograms; curves (counts=y, x_edges=x)
    series_id INTEGER NOT NULL REFERENCES series(id),
    step      INTEGER NOT NULL,
    counts    BLOB NOT NULL,                -- float64, shape in `shape`
    shape     TEXT NOT NULL,
    x_edges   BLOB NOT NULL,
    y_edges   BLOB,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (         -- instruments, providers and checks that failed (then disabled)
    id        INTEGER PRIMARY KEY,
    step      INTEGER,
    source    TEXT NOT NULL,                -- e.g. "instrument:alpha"
    message   TEXT NOT NULL,
    traceback TEXT NOT NULL,
    wall_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS findings (       -- verdicts of the checks, one row per (code, location)
    id          INTEGER PRIMARY KEY,
    code        TEXT NOT NULL,              -- stable code, e.g. "vanishing-gradients"
    severity    TEXT NOT NULL,              -- info | warning | error
    location    TEXT NOT NULL,              -- e.g. "encoder.layers.3.fc1 (Linear)", "" for the whole model
    first_step  INTEGER,
    last_step   INTEGER,
    count       INTEGER NOT NULL,           -- steps on which it was observed
    title       TEXT NOT NULL,
    explanation TEXT NOT NULL,
    evidence    TEXT NOT NULL,              -- JSON: the numbers and the threshold
    remedies    TEXT NOT NULL,              -- JSON list of strings
    rank        INTEGER,                    -- process rank where it is rank-local, else NULL
    UNIQUE (code, location)
);
CREATE TABLE IF NOT EXISTS samples (        -- logged examples (inputs, predictions, targets): views/samples.py
    step          INTEGER NOT NULL,
    idx           INTEGER NOT NULL,             -- position in the logged batch
    loss          REAL,                         -- per-example loss (NULL: unknown)
    target        TEXT,                         -- JSON (class index, or a value)
    prediction    TEXT,                         -- JSON (argmax of the class scores, or the output)
    probabilities BLOB,                         -- float64 softmax of the class scores (NULL: not a classifier)
    input         BLOB,                         -- float32 little-endian, shape in input_shape
    input_shape   TEXT,                         -- JSON list: (C, H, W) for images, (L,) for tokens/vectors
    input_kind    TEXT,                         -- image | tokens | vector | text | none
    input_text    TEXT,                         -- decoded tokens or text inputs
    PRIMARY KEY (step, idx)
) WITHOUT ROWID;
"""
