"""Room-for-improvement (RFI) labels of a grid of configurations (the MD-tree paper's ground truth).

For a configuration (width w, batch size b, data fraction d) with mean test accuracy A(w, b, d), the RFI of a
one-directional change is the best accuracy reachable moving along one axis in one direction (the point itself
included) minus A(w, b, d), so it is ≥ 0:

- ``rfi_inc_temp``: smaller batch (higher SGD temperature ∝ lr/b): max_{b' ≤ b} A(w, b', d) − A
- ``rfi_dec_temp``: larger batch: max_{b' ≥ b} A(w, b', d) − A
- ``rfi_width``: wider model: max_{w' ≥ w} A(w', b, d) − A
- ``rfi_data``: more data: max_{d' ≥ d} A(w, b, d') − A

Labels (``None`` = 'optimal', a tie, dropped from the tasks):

- Q1 ``bs_failure``: 'small' (temperature too small, i.e. the batch is too large) if rfi_inc_temp > rfi_dec_temp,
  'large' (temperature too large, batch too small) if <.
- Q2a ``width_vs_batch``: 'width' if rfi_width > max(rfi_inc_temp, rfi_dec_temp), 'batch' if <.
- Q2b ``data_vs_batch``: 'data' if rfi_data > max(rfi_inc_temp, rfi_dec_temp), 'batch' if <.
"""

from __future__ import annotations

import numpy as np

TASKS = {
    "Q1": ("bs_failure", ("small", "large")),
    "Q2a": ("width_vs_batch", ("width", "batch")),
    "Q2b": ("data_vs_batch", ("data", "batch")),
}


def _directional_best(acc: np.ndarray, keys: np.ndarray, axis_values: np.ndarray, increasing: bool) -> np.ndarray:
    """For each row i: max of acc over rows j with keys[j] == keys[i] and axis_values[j] ≥ (or ≤) axis_values[i]."""
    best = np.empty_like(acc)
    groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(map(tuple, keys)):
        groups.setdefault(k, []).append(i)
    for idx in groups.values():
        idx_arr = np.array(idx)
        vals = axis_values[idx_arr]
        for i in idx:
            mask = vals >= axis_values[i] if increasing else vals <= axis_values[i]
            best[i] = acc[idx_arr[mask]].max()
    return best


def rfi_values(width: np.ndarray, batch_size: np.ndarray, data_fraction: np.ndarray,
               test_accuracy: np.ndarray) -> dict[str, np.ndarray]:
    """The four RFI columns (same units as ``test_accuracy``) for rows of a (possibly incomplete) grid."""
    width, batch_size = np.asarray(width, float), np.asarray(batch_size, float)
    data_fraction, acc = np.asarray(data_fraction, float), np.asarray(test_accuracy, float)
    if not (len(width) == len(batch_size) == len(data_fraction) == len(acc)):
        raise ValueError("rfi_values: the columns have different lengths")
    if np.isnan(acc).any():
        raise ValueError("rfi_values: test_accuracy has NaN entries")
    wd = np.stack([width, data_fraction], 1)
    bd = np.stack([batch_size, data_fraction], 1)
    wb = np.stack([width, batch_size], 1)
    return {
        "rfi_inc_temp": _directional_best(acc, wd, batch_size, increasing=False) - acc,
        "rfi_dec_temp": _directional_best(acc, wd, batch_size, increasing=True) - acc,
        "rfi_width": _directional_best(acc, bd, width, increasing=True) - acc,
        "rfi_data": _directional_best(acc, wb, data_fraction, increasing=True) - acc,
    }


def _binary(a: np.ndarray, b: np.ndarray, if_a: str, if_b: str) -> np.ndarray:
    out = np.full(len(a), None, dtype=object)
    out[a > b] = if_a
    out[a < b] = if_b
    return out


def rfi_labels(width: np.ndarray, batch_size: np.ndarray, data_fraction: np.ndarray,
               test_accuracy: np.ndarray) -> dict[str, np.ndarray]:
    """RFI columns plus the three label columns ``bs_failure``, ``width_vs_batch``, ``data_vs_batch``
    (object arrays of class names, ``None`` for 'optimal' ties)."""
    r = rfi_values(width, batch_size, data_fraction, test_accuracy)
    temp = np.maximum(r["rfi_inc_temp"], r["rfi_dec_temp"])
    r["bs_failure"] = _binary(r["rfi_inc_temp"], r["rfi_dec_temp"], "small", "large")
    r["width_vs_batch"] = _binary(r["rfi_width"], temp, "width", "batch")
    r["data_vs_batch"] = _binary(r["rfi_data"], temp, "data", "batch")
    return r
