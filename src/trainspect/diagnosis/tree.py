"""MD tree: fixed-shape diagnostic trees on loss-landscape metrics; only the split thresholds are fitted.

Zhou, Chen, Cao, Schürholt, Yang, "MD tree: a model-diagnostic tree grounded on loss landscape", ICML 2024.
The shapes follow Yang et al.'s loss-landscape taxonomy: first training error (under-fitted or interpolating),
then global structure (mode connectivity: well or poorly connected), then local structure (Hessian trace:
sharp or flat; or CKA similarity). Every split reads "feature ≤ θ". Thresholds are fitted by one greedy
coordinate sweep in index order, each θᵢ by bounded scalar minimisation (bounded Brent,
``scipy.optimize.minimize_scalar(method='bounded')``) of −training accuracy with the others held fixed.

Features (column names of a zoo table): ``train_error`` (%), ``mode_connectivity_peak`` (−peak training error
% along a Bezier curve between two seeds), ``hessian_t`` (log Hessian trace), ``CKA``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Leaf:
    label: str


@dataclass(frozen=True)
class Split:
    """``feature ≤ θ[index]`` → ``le``, else ``gt``."""

    feature: str
    index: int
    le: Split | Leaf
    gt: Split | Leaf


def _q1_trace() -> Split:
    return Split("train_error", 0, Leaf("small"),
                 Split("mode_connectivity_peak", 1,
                       Split("hessian_t", 2, Leaf("large"), Leaf("small")),
                       Leaf("large")))


def _q1_cka() -> Split:
    return Split("train_error", 0, Leaf("small"),
                 Split("mode_connectivity_peak", 1,
                       Split("CKA", 2, Leaf("small"), Leaf("large")),
                       Leaf("large")))


def _q2a() -> Split:
    return Split("train_error", 0,
                 Split("mode_connectivity_peak", 1, Leaf("width"), Leaf("batch")),
                 Split("mode_connectivity_peak", 2, Leaf("width"), Leaf("batch")))


def _q2b() -> Split:
    return Split("train_error", 0,
                 Split("mode_connectivity_peak", 1,
                       Split("hessian_t", 4, Leaf("data"), Leaf("batch")),
                       Split("hessian_t", 2, Leaf("data"), Leaf("batch"))),
                 Split("mode_connectivity_peak", 3,
                       Leaf("batch"),
                       Split("hessian_t", 5, Leaf("data"), Leaf("batch"))))


@dataclass(frozen=True)
class Shape:
    """A tree shape with the paper's initial thresholds and bounds (``None`` bound = the fitting data's range)."""

    name: str
    task: str
    root: Split
    initial: tuple[float, ...]
    bounds: tuple[tuple[float, float] | None, ...]


#: The MD-tree shapes of ``method/md_tree.py`` (initial values and bounds of the paper). The paper bounds the
#: log trace to [4, 9] (ResNet-18 on CIFAR-10); the scale differs between architectures, so here that bound is
#: the range of the fitting table (``None``), with the paper's initial value replaced by the midpoint when it
#: falls outside.
SHAPES: dict[str, Shape] = {
    "Q1": Shape("MDtree_temp", "Q1", _q1_trace(), (0.5, -10.0, 7.0), ((0.0, 1.0), (-30.0, 0.0), None)),
    "Q1-cka": Shape("MDtree_temp_cka", "Q1", _q1_cka(), (0.5, -10.0, 0.5), ((0.0, 1.0), (-30.0, 0.0), (0.2, 0.8))),
    "Q2a": Shape("MDtree_width", "Q2a", _q2a(), (0.5, -10.0, -10.0), ((0.0, 1.0), (-30.0, 0.0), (-30.0, 0.0))),
    "Q2b": Shape("MDtree_data", "Q2b", _q2b(), (0.5, -10.0, 7.0, -10.0, 7.0, 7.0),
                 ((0.0, 1.0), (-30.0, 0.0), None, (-30.0, 0.0), None, None)),
}

QUESTIONS = {
    "Q1": "Is the optimizer's temperature (learning rate / batch size) too small or too large?",
    "Q2a": "Is the failure source the model size or the optimizer hyper-parameters?",
    "Q2b": "Is the failure source the amount of data or the optimizer hyper-parameters?",
}

VERDICTS = {
    ("Q1", "small"): ("temperature too small (batch too large / learning rate too small)",
                      "halve the batch size or raise the learning rate"),
    ("Q1", "large"): ("temperature too large (batch too small / learning rate too large)",
                      "double the batch size or lower the learning rate"),
    ("Q2a", "width"): ("the model is too small", "widen the model: capacity helps more than tuning the optimizer"),
    ("Q2a", "batch"): ("the optimizer hyper-parameters", "tune the batch size / learning rate (see Q1) before "
                       "widening the model"),
    ("Q2b", "data"): ("too little data", "more data will help more than tuning"),
    ("Q2b", "batch"): ("the optimizer hyper-parameters", "tune the batch size / learning rate (see Q1) before "
                       "collecting more data"),
}

_WORDS = {
    "train_error": ("training error {v:.2f}% ≤ {t:.2f}%: the model (nearly) interpolates its training data",
                    "training error {v:.2f}% > {t:.2f}%: the model under-fits its training data"),
    "mode_connectivity_peak": ("mode connectivity {v:.2f} ≤ {t:.2f}: poorly connected (a trained curve between two "
                               "seeds still crosses {nv:.1f}% training error)",
                               "mode connectivity {v:.2f} > {t:.2f}: well connected (the curve between two seeds "
                               "stays below {nt:.1f}% training error)"),
    "hessian_t": ("log Hessian trace {v:.2f} ≤ {t:.2f}: a flat minimum", "log Hessian trace {v:.2f} > {t:.2f}: a sharp "
                  "minimum"),
    "CKA": ("CKA {v:.3f} ≤ {t:.3f}: two seeds predict dissimilarly", "CKA {v:.3f} > {t:.3f}: two seeds predict alike"),
}


def _words(feature: str, value: float, threshold: float, le: bool) -> str:
    text = _WORDS.get(feature, ("{f} {v:.3g} ≤ {t:.3g}", "{f} {v:.3g} > {t:.3g}"))[0 if le else 1]
    return text.format(f=feature, v=value, t=threshold, nv=-value, nt=-threshold)


def shape_features(root: Split | Leaf) -> list[str]:
    """Distinct features a shape reads, in first-use order."""
    out: list[str] = []

    def walk(node: Split | Leaf) -> None:
        if isinstance(node, Split):
            if node.feature not in out:
                out.append(node.feature)
            walk(node.le)
            walk(node.gt)

    walk(root)
    return out


# ---------------------------------------------------------------------------------------------- the tree


@dataclass
class Decision:
    """The answer of one tree for one model: the label, the path in words, and what was missing."""

    task: str
    label: str | None
    path: list[str]
    missing: str | None = None  # the feature the path needed but was not measured

    @property
    def verdict(self) -> str | None:
        return VERDICTS[(self.task, self.label)][0] if self.label else None

    @property
    def remedy(self) -> str | None:
        return VERDICTS[(self.task, self.label)][1] if self.label else None


@dataclass
class MDTree:
    """A fixed-shape MD tree with its thresholds (``shape`` is a key of :data:`SHAPES`)."""

    shape: str
    thresholds: list[float]
    bounds: list[tuple[float, float]] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown MD-tree shape {self.shape!r}; known: {', '.join(SHAPES)}")
        n = len(SHAPES[self.shape].initial)
        if len(self.thresholds) != n:
            raise ValueError(f"MD tree {self.shape!r} has {n} thresholds, got {len(self.thresholds)}")
        self.thresholds = [float(t) for t in self.thresholds]

    @property
    def task(self) -> str:
        return SHAPES[self.shape].task

    @property
    def features(self) -> list[str]:
        return shape_features(SHAPES[self.shape].root)

    def decide(self, metrics: Mapping[str, float]) -> Decision:
        """Walk the tree for one model's metrics (a mapping feature → value). A missing/NaN feature that the
        path needs stops the walk (``label=None``, ``missing`` names it)."""
        node: Split | Leaf = SHAPES[self.shape].root
        path: list[str] = []
        while isinstance(node, Split):
            value = metrics.get(node.feature, math.nan)
            if value is None or not np.isfinite(value):
                return Decision(self.task, None, path, missing=node.feature)
            t = self.thresholds[node.index]
            le = value <= t
            path.append(_words(node.feature, float(value), t, le))
            node = node.le if le else node.gt
        return Decision(self.task, node.label, path)

    def predict(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
        """Labels for every row of a table (columns as arrays); rows with a needed NaN feature get ``None``."""
        return _predict(SHAPES[self.shape].root, np.asarray(self.thresholds), table)

    def accuracy(self, table: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
        pred = self.predict(table)
        return float(np.mean(pred == np.asarray(labels, dtype=object)))

    def to_dict(self) -> dict:
        return {"shape": self.shape, "thresholds": self.thresholds, "bounds": self.bounds, "info": self.info}

    @classmethod
    def from_dict(cls, d: Mapping) -> MDTree:
        return cls(d["shape"], list(d["thresholds"]), d.get("bounds"), dict(d.get("info", {})))


def _predict(root: Split | Leaf, theta: np.ndarray, table: Mapping[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(table.values())))
    out = np.full(n, None, dtype=object)

    def walk(node: Split | Leaf, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        if isinstance(node, Leaf):
            out[rows] = node.label
            return
        v = np.asarray(table[node.feature], dtype=float)[rows]
        ok = np.isfinite(v)
        walk(node.le, rows[ok & (v <= theta[node.index])])
        walk(node.gt, rows[ok & (v > theta[node.index])])

    walk(root, np.arange(n))
    return out


# ---------------------------------------------------------------------------------------------- fitting


def resolve_bounds(shape: str, table: Mapping[str, np.ndarray],
                   bounds: list[tuple[float, float] | None] | None = None) -> list[tuple[float, float]]:
    """Per-threshold bounds: the given ones, else the paper's; ``None`` = [min, max] of the feature in ``table``."""
    spec = SHAPES[shape]
    chosen = list(bounds) if bounds is not None else list(spec.bounds)
    if len(chosen) != len(spec.initial):
        raise ValueError(f"{shape}: need {len(spec.initial)} bounds, got {len(chosen)}")
    features = _index_features(spec.root)
    out = []
    for i, b in enumerate(chosen):
        if b is None:
            v = np.asarray(table[features[i]], dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                raise ValueError(f"{shape}: feature {features[i]!r} has no finite values to bound θ{i}")
            b = (float(v.min()), float(v.max()))
        out.append((float(b[0]), float(b[1])))
    return out


def _index_features(root: Split | Leaf) -> dict[int, str]:
    out: dict[int, str] = {}

    def walk(node: Split | Leaf) -> None:
        if isinstance(node, Split):
            out[node.index] = node.feature
            walk(node.le)
            walk(node.gt)

    walk(root)
    return out


def fit_md_tree(table: Mapping[str, np.ndarray], labels: np.ndarray, shape: str = "Q1",
                bounds: list[tuple[float, float] | None] | None = None,
                initial: list[float] | None = None, sweeps: int = 1) -> MDTree:
    """Fit the thresholds of an MD tree of ``shape`` on rows of ``table`` with class ``labels``.

    Rows whose label is ``None`` ('optimal') or that miss a feature of the shape are dropped. One coordinate
    sweep in index order (``sweeps`` > 1 repeats it; the paper does one); θᵢ ← bounded-Brent minimiser of
    −accuracy over its bounds (the current value is kept when Brent, on this step-function objective, lands on a
    worse point). The result is a local optimum that depends on the initial values and bounds. Cost: milliseconds
    on a few hundred rows.
    """
    try:
        from scipy.optimize import minimize_scalar
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("fitting an MD tree needs scipy: pip install 'trainspect[diagnosis]'") from error
    spec = SHAPES[shape]
    labels = np.asarray(labels, dtype=object)
    keep = np.array([lab is not None for lab in labels])
    for f in shape_features(spec.root):
        if f not in table:
            raise ValueError(f"fit_md_tree({shape}): the table has no column {f!r} (columns: {sorted(table)})")
        keep &= np.isfinite(np.asarray(table[f], dtype=float))
    if keep.sum() == 0:
        raise ValueError(f"fit_md_tree({shape}): no rows with a label and every feature of the shape")
    sub = {k: np.asarray(v)[keep] for k, v in table.items()}
    y = labels[keep]
    b = resolve_bounds(shape, sub, bounds)
    theta = np.array(initial if initial is not None else spec.initial, dtype=float)
    for i, (lo, hi) in enumerate(b):
        if not lo <= theta[i] <= hi:
            theta[i] = 0.5 * (lo + hi)

    def accuracy(th: np.ndarray) -> float:
        return float(np.mean(_predict(spec.root, th, sub) == y))

    for i, (lo, hi) in [(i, bi) for _ in range(max(1, sweeps)) for i, bi in enumerate(b)]:
        def objective(v: float, i: int = i) -> float:
            th = theta.copy()
            th[i] = v
            return -accuracy(th)

        if hi > lo:
            res = minimize_scalar(objective, bounds=(lo, hi), method="bounded")
            if -res.fun >= accuracy(theta):
                theta[i] = float(res.x)
    return MDTree(shape, theta.tolist(), b, {"train_accuracy": accuracy(theta), "train_rows": int(keep.sum())})


# ---------------------------------------------------------------------------------------------- storage

DEFAULT_TREES_PATH = Path(__file__).with_name("default_trees.json")


def load_trees(path: str | Path | None = None) -> dict[str, MDTree]:
    """The trees of a JSON file (``{"Q1": {...}, "Q2a": {...}, ...}``); default: the ones shipped with trainspect."""
    p = Path(path) if path is not None else DEFAULT_TREES_PATH
    if not p.exists():
        raise FileNotFoundError(f"no MD-tree file at {p} (write one with `trainspect zoo fit`)")
    raw = json.loads(p.read_text())
    return {k: MDTree.from_dict(v) for k, v in raw.get("trees", raw).items()}


def save_trees(trees: Mapping[str, MDTree], path: str | Path, meta: Mapping | None = None) -> None:
    Path(path).write_text(json.dumps({"meta": dict(meta or {}), "trees": {k: t.to_dict() for k, t in trees.items()}},
                                     indent=2) + "\n")


#: Which label column each shape is fitted on.
LABEL_COLUMNS = {"Q1": "bs_failure", "Q1-cka": "bs_failure", "Q2a": "width_vs_batch", "Q2b": "data_vs_batch"}


def fit_trees(table: Mapping[str, np.ndarray], shapes: tuple[str, ...] = ("Q1", "Q1-cka", "Q2a", "Q2b"),
              q2b_min_width: float | None = None) -> dict[str, MDTree]:
    """Fit every MD-tree shape on a zoo table (see :func:`trainspect.diagnosis.zoo.zoo_table`): features and the
    label columns ``bs_failure``/``width_vs_batch``/``data_vs_batch``. ``q2b_min_width`` restricts Q2b to the
    wider models, as the paper (``--model-min-width 32``)."""
    trees = {}
    for shape in shapes:
        labels = np.asarray(table[LABEL_COLUMNS[shape]], dtype=object)
        sub = table
        if shape == "Q2b" and q2b_min_width is not None:
            keep = np.asarray(table["width"], dtype=float) >= q2b_min_width
            sub = {k: np.asarray(v)[keep] for k, v in table.items()}
            labels = labels[keep]
        trees[shape] = fit_md_tree(sub, labels, shape)
    return trees
