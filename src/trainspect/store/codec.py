"""Array <-> bytes encoding of the store: raw little-endian float64, no pickle."""

from __future__ import annotations

import json
import math

import numpy as np


def encode(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def decode(blob: bytes, shape: tuple[int, ...] | list[int] | None = None) -> np.ndarray:
    array = np.frombuffer(blob, dtype="<f8")
    return array.reshape(shape) if shape is not None else array


def scalar_to_sql(value: float) -> float | None:
    """SQLite has no NaN; NULL stands for it (±inf are stored as they are)."""
    return None if math.isnan(value) else value


def to_json(value: object) -> str:
    """JSON with NaN/inf written as strings so any reader can parse it."""

    def fix(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return fix(v.item())
        if isinstance(v, np.ndarray):
            return fix(v.tolist())
        return v

    return json.dumps(fix(value))
