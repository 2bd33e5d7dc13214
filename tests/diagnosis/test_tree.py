import math

import numpy as np
import pytest

from trainspect.diagnosis.tree import MDTree, fit_md_tree, load_trees, save_trees


def _synthetic(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_error": rng.uniform(0, 2, n),
        "mode_connectivity_peak": rng.uniform(-40, 0, n),
        "hessian_t": rng.uniform(2, 8, n),
        "CKA": rng.uniform(0, 1, n),
    }


def _reference_q1(row, th):
    """The Q1 tree written out by hand (the paper's MDtree_temp)."""
    if row["train_error"] <= th[0]:
        return "small"
    if row["mode_connectivity_peak"] <= th[1]:
        return "large" if row["hessian_t"] <= th[2] else "small"
    return "large"


def test_predict_matches_the_hand_written_tree():
    table = _synthetic(200)
    th = [0.7, -12.0, 5.0]
    tree = MDTree("Q1", th)
    expected = [_reference_q1({k: v[i] for k, v in table.items()}, th) for i in range(200)]
    assert tree.predict(table).tolist() == expected


def test_fitting_recovers_known_thresholds():
    table = _synthetic()
    truth = MDTree("Q1", [0.6, -18.0, 5.5])
    labels = truth.predict(table)
    fitted = fit_md_tree(table, labels, "Q1", bounds=[(0, 1), (-30, 0), (2, 8)])
    assert fitted.accuracy(table, labels) >= 0.99
    # bounded Brent on a step objective stops on a plateau near the truth: within 2.5 % of each feature's range
    for got, want, span in zip(fitted.thresholds, [0.6, -18.0, 5.5], [2.0, 40.0, 6.0]):
        assert got == pytest.approx(want, abs=0.025 * span)


def test_one_sweep_is_a_local_optimum_and_more_sweeps_recover_q2a_thresholds():
    table = _synthetic(seed=1)
    truth = MDTree("Q2a", [0.3, -8.0, -22.0])
    labels = truth.predict(table)
    initial = MDTree("Q2a", [0.5, -10.0, -10.0]).accuracy(table, labels)
    one = fit_md_tree(table, labels, "Q2a")  # the paper's single greedy sweep: never worse than its start
    # θ0 is fitted first while θ1 = θ2 (flat objective), and the sweep ends in a local optimum
    assert initial < one.accuracy(table, labels) < 0.99
    # from initial values that separate the two branches, repeated sweeps find the truth
    fitted = fit_md_tree(table, labels, "Q2a", initial=[0.5, -5.0, -25.0], sweeps=3)
    assert fitted.accuracy(table, labels) >= 0.99
    for got, want, span in zip(fitted.thresholds, [0.3, -8.0, -22.0], [2.0, 40.0, 40.0]):
        assert got == pytest.approx(want, abs=0.025 * span)


def test_fit_drops_optimal_rows_and_rejects_missing_columns():
    table = _synthetic(100)
    labels = MDTree("Q1", [0.5, -10, 5]).predict(table)
    labels[:10] = None
    assert fit_md_tree(table, labels, "Q1").info["train_rows"] == 90
    with pytest.raises(ValueError, match="no column 'CKA'"):
        fit_md_tree({k: v for k, v in table.items() if k != "CKA"}, labels, "Q1-cka")


def test_decide_explains_the_path_and_stops_at_a_missing_metric():
    tree = MDTree("Q1", [0.5, -10.0, 5.0])
    d = tree.decide({"train_error": 3.0, "mode_connectivity_peak": -25.0, "hessian_t": 6.1})
    assert d.label == "small" and len(d.path) == 3
    assert "under-fits" in d.path[0] and "poorly connected" in d.path[1] and "sharp" in d.path[2]
    assert d.remedy == "halve the batch size or raise the learning rate"
    d = tree.decide({"train_error": 0.1})  # interpolating: answered without connectivity
    assert d.label == "small" and d.missing is None
    d = tree.decide({"train_error": 3.0, "mode_connectivity_peak": math.nan})
    assert d.label is None and d.missing == "mode_connectivity_peak"


def test_save_and_load_round_trip(tmp_path):
    trees = {"Q1": MDTree("Q1", [0.5, -10.0, 5.0]), "Q2a": MDTree("Q2a", [0.5, -10.0, -20.0])}
    save_trees(trees, tmp_path / "t.json", {"zoo": "test"})
    loaded = load_trees(tmp_path / "t.json")
    assert loaded["Q2a"].thresholds == [0.5, -10.0, -20.0] and loaded["Q1"].shape == "Q1"
    with pytest.raises(ValueError, match="thresholds"):
        MDTree("Q1", [1.0])


def test_the_shipped_trees_load():
    trees = load_trees()
    assert {"Q1", "Q2a", "Q2b"} <= set(trees)
