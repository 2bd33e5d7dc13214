"""Errors of the run store."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The run store cannot be used (wrong folder, not writable, already holds a run)."""


class StoreVersionError(StoreError):
    """The store was written by a newer trainspect with a schema this version cannot read."""
