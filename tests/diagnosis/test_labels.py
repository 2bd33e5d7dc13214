import numpy as np
import pytest

from trainspect.diagnosis.labels import rfi_labels, rfi_values


def _grid():
    """2 widths × 3 batch sizes × 2 data fractions with hand-chosen accuracies."""
    acc = {
        # (width, batch, data): accuracy
        (4, 8, 0.5): 60, (4, 16, 0.5): 70, (4, 32, 0.5): 65,
        (4, 8, 1.0): 62, (4, 16, 1.0): 75, (4, 32, 1.0): 80,
        (8, 8, 0.5): 90, (8, 16, 0.5): 85, (8, 32, 0.5): 70,
        (8, 8, 1.0): 91, (8, 16, 1.0): 91, (8, 32, 1.0): 91,
    }
    keys = list(acc)
    cols = [np.array([k[i] for k in keys], dtype=float) for i in range(3)]
    return keys, cols, np.array([acc[k] for k in keys], dtype=float)


def test_rfi_values_on_a_hand_made_grid():
    keys, (w, b, d), acc = _grid()
    r = rfi_values(w, b, d, acc)
    at = {k: i for i, k in enumerate(keys)}
    i = at[(4, 16, 0.5)]  # 70: smaller batch 60 → 0; larger batch 65 → 0; wider 85 → 15; more data 75 → 5
    assert (r["rfi_inc_temp"][i], r["rfi_dec_temp"][i], r["rfi_width"][i], r["rfi_data"][i]) == (0, 0, 15, 5)
    i = at[(4, 16, 1.0)]  # 75: smaller 62 → 0; larger 80 → 5; wider 91 → 16; no more data → 0
    assert (r["rfi_inc_temp"][i], r["rfi_dec_temp"][i], r["rfi_width"][i], r["rfi_data"][i]) == (0, 5, 16, 0)
    i = at[(8, 32, 0.5)]  # 70: smaller batches 85, 90 → 20; larger none → 0; no wider → 0; more data 91 → 21
    assert (r["rfi_inc_temp"][i], r["rfi_dec_temp"][i], r["rfi_width"][i], r["rfi_data"][i]) == (20, 0, 0, 21)
    assert all((v >= 0).all() for v in r.values())


def test_labels_and_optimal_ties():
    keys, (w, b, d), acc = _grid()
    lab = rfi_labels(w, b, d, acc)
    at = {k: i for i, k in enumerate(keys)}
    assert lab["bs_failure"][at[(8, 32, 0.5)]] == "small"  # smaller batch helps: temperature too small
    assert lab["bs_failure"][at[(4, 8, 1.0)]] == "large"  # larger batch helps: temperature too large
    assert lab["bs_failure"][at[(4, 16, 0.5)]] is None  # batch optimum: 'optimal', dropped
    assert lab["bs_failure"][at[(8, 8, 1.0)]] is None  # flat: tie at 0
    assert lab["width_vs_batch"][at[(4, 16, 1.0)]] == "width"  # 16 > 5
    assert lab["width_vs_batch"][at[(8, 32, 0.5)]] == "batch"  # 0 < 20
    assert lab["data_vs_batch"][at[(8, 32, 0.5)]] == "data"  # 21 > 20
    assert lab["data_vs_batch"][at[(8, 8, 1.0)]] is None


def test_rfi_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths"):
        rfi_values(np.ones(3), np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        rfi_values(np.ones(2), np.ones(2), np.ones(2), np.array([1.0, np.nan]))
