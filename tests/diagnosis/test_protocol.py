import numpy as np
import pytest

from trainspect.diagnosis.labels import rfi_labels
from trainspect.diagnosis.protocol import run_case, sample_train_set
from trainspect.diagnosis.tree import MDTree


def _table(seed, noise=0.0):
    """A synthetic collection whose Q1 labels follow an MD tree on the landscape metrics."""
    rng = np.random.default_rng(seed)
    w, b, d = np.meshgrid([4, 8, 16, 32], [8, 16, 32, 64, 128], [0.25, 0.5, 1.0], indexing="ij")
    n = w.size
    t = {"width": w.ravel().astype(float), "batch_size": b.ravel().astype(float), "data_fraction": d.ravel()}
    t.update({
        "train_error": rng.uniform(0, 3, n), "mode_connectivity_peak": rng.uniform(-40, 0, n),
        "hessian_t": rng.uniform(2, 8, n), "CKA": rng.uniform(0, 1, n),
        "train_loss": rng.uniform(0, 1, n), "test_loss": rng.uniform(0, 1, n), "test_error": rng.uniform(0, 20, n),
        "log_data_amount": np.log(t["data_fraction"]), "log_para_amount": np.log(t["width"]),
    })
    labels = MDTree("Q1", [0.5, -12.0, 5.0]).predict(t)
    flip = rng.uniform(size=n) < noise
    labels[flip] = np.where(labels[flip] == "small", "large", "small")
    t["bs_failure"] = labels
    return t


def test_sampling_modes():
    t = _table(0)
    s = sample_train_set(t, "random", 2, seed=42)
    assert len(set(zip(s["width"], s["data_fraction"]))) == 2 and len(s["width"]) == 2 * 5
    assert set(sample_train_set(t, "width_limit", 8, 0)["width"]) == {4.0, 8.0}
    assert set(sample_train_set(t, "data_limit", 0.5, 0)["data_fraction"]) == {0.25, 0.5}
    assert len(set(sample_train_set(t, "random_data", 1, 3)["data_fraction"])) == 1
    with pytest.raises(ValueError):
        sample_train_set(t, "bogus", 1, 0)


def test_md_tree_transfers_when_labels_follow_the_landscape_and_validation_metrics_are_noise():
    r = run_case("synthetic", "Q1", _table(0), _table(1, noise=0.05), "random", 4)
    md, val = r.mean_std("MD tree")[0], r.mean_std("Validation + DT")[0]
    assert md > 85.0 and md > val + 15.0
    assert len(r.accuracies["MD tree"]) == 5 and r.test_rows == 60


def test_rfi_labels_are_consistent_with_the_protocol_columns():
    t = _table(2)
    acc = np.random.default_rng(0).uniform(50, 90, len(t["width"]))
    lab = rfi_labels(t["width"], t["batch_size"], t["data_fraction"], acc)
    assert set(lab["bs_failure"].tolist()) <= {"small", "large", None}
