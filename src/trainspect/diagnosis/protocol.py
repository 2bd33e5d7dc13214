"""The MD-tree paper's evaluation protocol: fit on (a sample of) one collection, test on all of another.

Methods (Zhou et al., ICML 2024, ``method/md_tree.py`` and ``method/baseline_dt.py``):

- ``MD tree``: the fixed-shape tree of the task (Q1: training error → connectivity → Hessian trace);
- ``MD tree (CKA)``: Q1 with CKA instead of the trace;
- ``Hyperparameter + DT``: sklearn ``DecisionTreeClassifier(gini, max_depth=4)`` on log data amount / log
  parameter count (Q1: both; Q2a: data only; Q2b: parameters only; never the batch size, the diagnosed knob);
- ``Validation + DT``: on train/test error and loss;
- ``Hyper + Validation + DT``: the union;
- ``Loss landscape + DT``: an unconstrained tree on training error, connectivity, CKA and trace.

Sampling of the training set (``method_utils.sample_train_set``): ``random`` k (data, width) pairs with all their
batch sizes; ``random_data`` k data levels; ``random_width`` k widths; ``data_limit`` every configuration with
data fraction ≤ k; ``width_limit`` every configuration with width ≤ k. Seeds {42, 90, 38, 18, 72}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from trainspect.diagnosis.tree import LABEL_COLUMNS, fit_md_tree

SEEDS = (42, 90, 38, 18, 72)
VALIDATION = ["train_error", "train_loss", "test_loss", "test_error"]
LANDSCAPE = ["train_error", "mode_connectivity_peak", "CKA", "hessian_t"]
HYPER = {"Q1": ["log_data_amount", "log_para_amount"], "Q2a": ["log_data_amount"], "Q2b": ["log_para_amount"]}

METHODS = ("Hyperparameter + DT", "Validation + DT", "Hyper + Validation + DT", "Loss landscape + DT", "MD tree",
           "MD tree (CKA)")


def rows(table: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[mask] for k, v in table.items()}


def usable(table: Mapping[str, np.ndarray], task: str, min_width: float | None = None) -> dict[str, np.ndarray]:
    """Rows with a label (not 'optimal') and every feature any method reads finite."""
    labels = np.asarray(table[LABEL_COLUMNS[task]], dtype=object)
    keep = np.array([v is not None for v in labels])
    for col in set(VALIDATION + LANDSCAPE + HYPER[task]):
        keep &= np.isfinite(np.asarray(table[col], dtype=float))
    if min_width is not None:
        keep &= np.asarray(table["width"], dtype=float) >= min_width
    return rows(table, keep)


def sample_train_set(table: Mapping[str, np.ndarray], mode: str, k: float, seed: int) -> dict[str, np.ndarray]:
    """A training sample of ``table`` by ``mode`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    w, d = np.asarray(table["width"], float), np.asarray(table["data_fraction"], float)
    if mode == "random":
        pairs = sorted(set(zip(w.tolist(), d.tolist())))
        chosen = {pairs[i] for i in rng.choice(len(pairs), size=min(int(k), len(pairs)), replace=False)}
        mask = np.array([(a, b) in chosen for a, b in zip(w.tolist(), d.tolist())])
    elif mode in ("random_data", "random_width"):
        axis = d if mode == "random_data" else w
        levels = np.unique(axis)
        chosen = rng.choice(levels, size=min(int(k), len(levels)), replace=False)
        mask = np.isin(axis, chosen)
    elif mode == "data_limit":
        mask = d <= k + 1e-9
    elif mode == "width_limit":
        mask = w <= k
    else:
        raise ValueError(f"unknown sampling mode {mode!r}")
    return rows(table, mask)


def _dt_accuracy(train: Mapping, test: Mapping, features: list[str], task: str, seed: int) -> float:
    from sklearn.tree import DecisionTreeClassifier

    label = LABEL_COLUMNS[task]
    x_tr = np.stack([np.asarray(train[f], float) for f in features], 1)
    x_te = np.stack([np.asarray(test[f], float) for f in features], 1)
    clf = DecisionTreeClassifier(criterion="gini", max_depth=4, random_state=seed)
    clf.fit(x_tr, np.asarray(train[label]).astype(str))
    return float(np.mean(clf.predict(x_te) == np.asarray(test[label]).astype(str)))


def evaluate(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], task: str, seed: int,
             methods: tuple[str, ...] = METHODS) -> dict[str, float]:
    """Test accuracy (%) of each method fitted on ``train`` and applied to ``test``."""
    out: dict[str, float] = {}
    label = LABEL_COLUMNS[task]
    for m in methods:
        if m == "Hyperparameter + DT":
            out[m] = _dt_accuracy(train, test, HYPER[task], task, seed)
        elif m == "Validation + DT":
            out[m] = _dt_accuracy(train, test, VALIDATION, task, seed)
        elif m == "Hyper + Validation + DT":
            out[m] = _dt_accuracy(train, test, HYPER[task] + VALIDATION, task, seed)
        elif m == "Loss landscape + DT":
            out[m] = _dt_accuracy(train, test, LANDSCAPE, task, seed)
        elif m == "MD tree":
            out[m] = fit_md_tree(train, train[label], task).accuracy(test, test[label])
        elif m == "MD tree (CKA)":
            if task != "Q1":
                continue
            out[m] = fit_md_tree(train, train[label], "Q1-cka").accuracy(test, test[label])
        else:
            raise ValueError(f"unknown method {m!r}")
    return {k: 100.0 * v for k, v in out.items()}


@dataclass
class CaseResult:
    name: str
    task: str
    train_rows: list[int]
    test_rows: int
    accuracies: dict[str, list[float]]  # method -> one accuracy per seed

    def mean_std(self, method: str) -> tuple[float, float]:
        a = np.asarray(self.accuracies.get(method, []), float)
        return (float(a.mean()), float(a.std())) if a.size else (float("nan"), float("nan"))


def run_case(name: str, task: str, train_table: Mapping, test_table: Mapping, mode: str, k: float,
             seeds: tuple[int, ...] = SEEDS, min_width: float | None = None) -> CaseResult:
    """One row of the paper's table: sample → fit every method → test on all usable rows of ``test_table``."""
    train_all = usable(train_table, task, min_width)
    test = usable(test_table, task, min_width)
    if len(test[LABEL_COLUMNS[task]]) == 0:
        raise ValueError(f"{name}: no usable test rows (labels/features missing)")
    accs: dict[str, list[float]] = {}
    sizes = []
    for seed in seeds:
        train = sample_train_set(train_all, mode, k, seed)
        sizes.append(len(train[LABEL_COLUMNS[task]]))
        if sizes[-1] == 0:
            raise ValueError(f"{name}: the training sample is empty (mode {mode}, k {k})")
        for m, v in evaluate(train, test, task, seed).items():
            accs.setdefault(m, []).append(v)
    return CaseResult(name, task, sizes, len(test[LABEL_COLUMNS[task]]), accs)
