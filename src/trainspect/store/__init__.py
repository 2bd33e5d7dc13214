"""The run store: SQLite in the run folder (schema in ``schema.py``), a writer and a reader."""

from trainspect.store.errors import StoreError, StoreVersionError
from trainspect.store.reader import HistogramSeries, RunReader, Series, list_runs, open_run
from trainspect.store.schema import DB_FILENAME, SCHEMA_VERSION
from trainspect.store.writer import StoreWriter

__all__ = [
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "HistogramSeries",
    "RunReader",
    "Series",
    "StoreError",
    "StoreVersionError",
    "StoreWriter",
    "list_runs",
    "open_run",
]
