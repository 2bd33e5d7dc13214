"""Model zoo: train a grid width × batch size × data fraction × seeds, measure every model, label every
configuration by its room for improvement (RFI), and store it all in one SQLite file.

The build is resumable: every trained model (its state dict), every per-model metric group and every
per-pair metric group is committed to the SQLite cache as soon as it exists, and a rerun only computes what is
missing. ``zoo_table`` turns the cache into the per-configuration table that ``fit``/the benchmark use
(averages over seeds, as in the MD-tree paper), with RFI labels from :mod:`trainspect.diagnosis.labels`.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainspect.diagnosis.labels import rfi_labels
from trainspect.diagnosis.metrics import (
    bezier_mode_connectivity,
    hessian_metrics,
    linear_interpolation_connectivity,
    loss_and_error,
    output_cka,
)
from trainspect.diagnosis.recipes import ZooRecipe, get_recipe


@dataclass(frozen=True)
class Grid:
    """The configurations of a zoo: every combination of the axes, each trained with every seed."""

    widths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    data_fractions: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1)

    def configs(self) -> list[tuple[int, int, float]]:
        return list(itertools.product(self.widths, self.batch_sizes, self.data_fractions))

    def __len__(self) -> int:
        return len(self.widths) * len(self.batch_sizes) * len(self.data_fractions)


#: Grids shipped with the zoo builder. ``session`` is what the numbers in docs/diagnosis.md were built on
#: (~25 min on one free core per collection); ``full`` is the documented full build (finer axes, 3 seeds).
GRIDS: dict[str, Grid] = {
    "tiny": Grid((4, 32), (16, 128), (0.5, 1.0), (0, 1)),
    "small": Grid((8, 16, 32), (16, 32, 64, 128, 256), (0.25, 0.5, 1.0), (0, 1)),
    "session": Grid((4, 8, 16, 32, 64), (8, 16, 32, 64, 128, 256), (0.25, 0.5, 0.75, 1.0), (0, 1)),
    "full": Grid((3, 4, 6, 8, 11, 16, 23, 32, 64), (8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256),
                 (0.2, 0.4, 0.6, 0.8, 1.0), (0, 1, 2)),
}

STAGES = ("train", "eval", "hessian", "pairs")
#: A piece is done when its *_seconds column is set: the value itself may be NULL where the metric is undefined
#: (CKA of a diverged model with constant outputs, the log of a non-positive trace).
_PAIR_DONE = ("mc_seconds", "linear_seconds", "cka_seconds")


@dataclass
class ZooSettings:
    """Measurement settings (paper defaults scaled to digits: a shorter Bezier-curve fit)."""

    hessian_samples: int = 200
    trace_matvecs: int = 50
    curve_epochs: int = 30
    curve_batch_size: int = 64
    curve_lr: float = 0.01
    linear_points: int = 5
    cka_batches: int = 6
    cka_batch_size: int = 128


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    recipe TEXT, width INTEGER, batch_size INTEGER, data_fraction REAL, seed INTEGER,
    num_params INTEGER, train_seconds REAL, state BLOB,
    train_loss REAL, train_error REAL, test_loss REAL, test_error REAL, eval_seconds REAL,
    hessian_top REAL, hessian_trace REAL, hessian_trace_se REAL, hessian_matvecs INTEGER, hessian_seconds REAL,
    PRIMARY KEY (recipe, width, batch_size, data_fraction, seed));
CREATE TABLE IF NOT EXISTS pairs (
    recipe TEXT, width INTEGER, batch_size INTEGER, data_fraction REAL, seed_a INTEGER, seed_b INTEGER,
    mc_peak REAL, mc_signed REAL, mc_errors TEXT, mc_steps INTEGER, mc_seconds REAL,
    linear_peak REAL, linear_barrier REAL, linear_errors TEXT, linear_seconds REAL,
    cka REAL, cka_seconds REAL,
    PRIMARY KEY (recipe, width, batch_size, data_fraction, seed_a, seed_b));
"""


def _key(d: float) -> float:
    return round(float(d), 6)


class ZooCache:
    """The SQLite file holding a zoo (any number of recipes/collections)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # models ---------------------------------------------------------------------------------------------
    def model_row(self, recipe: str, w: int, bs: int, d: float, seed: int) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        return self.db.execute("SELECT * FROM models WHERE recipe=? AND width=? AND batch_size=? AND data_fraction=? "
                               "AND seed=?", (recipe, w, bs, _key(d), seed)).fetchone()

    def load_model(self, recipe: ZooRecipe, w: int, bs: int, d: float, seed: int) -> torch.nn.Module | None:
        row = self.model_row(recipe.name, w, bs, d, seed)
        if row is None or row["state"] is None:
            return None
        model = recipe.make_model(w)
        model.load_state_dict(torch.load(io.BytesIO(row["state"]), weights_only=True))
        model.eval()
        return model

    def store_model(self, recipe: str, w: int, bs: int, d: float, seed: int, model: torch.nn.Module,
                    seconds: float) -> None:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        num_params = sum(p.numel() for p in model.parameters())
        self.db.execute("INSERT OR REPLACE INTO models (recipe, width, batch_size, data_fraction, seed, num_params, "
                        "train_seconds, state) VALUES (?,?,?,?,?,?,?,?)",
                        (recipe, w, bs, _key(d), seed, num_params, seconds, buf.getvalue()))
        self.db.commit()

    def update_model(self, recipe: str, w: int, bs: int, d: float, seed: int, **values: float) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        self.db.execute(f"UPDATE models SET {cols} WHERE recipe=? AND width=? AND batch_size=? AND data_fraction=? "
                        "AND seed=?", (*values.values(), recipe, w, bs, _key(d), seed))
        self.db.commit()

    # pairs ----------------------------------------------------------------------------------------------
    def pair_row(self, recipe: str, w: int, bs: int, d: float, a: int, b: int) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        return self.db.execute("SELECT * FROM pairs WHERE recipe=? AND width=? AND batch_size=? AND data_fraction=? "
                               "AND seed_a=? AND seed_b=?", (recipe, w, bs, _key(d), a, b)).fetchone()

    def update_pair(self, recipe: str, w: int, bs: int, d: float, a: int, b: int, **values: object) -> None:
        self.db.execute("INSERT OR IGNORE INTO pairs (recipe, width, batch_size, data_fraction, seed_a, seed_b) "
                        "VALUES (?,?,?,?,?,?)", (recipe, w, bs, _key(d), a, b))
        cols = ", ".join(f"{k}=?" for k in values)
        self.db.execute(f"UPDATE pairs SET {cols} WHERE recipe=? AND width=? AND batch_size=? AND data_fraction=? "
                        "AND seed_a=? AND seed_b=?", (*values.values(), recipe, w, bs, _key(d), a, b))
        self.db.commit()


def _tasks(recipe: ZooRecipe, grid: Grid, cache: ZooCache, stages: Iterable[str], reverse: bool = False
           ) -> list[tuple]:
    """The work still missing, as (stage, config, seed(s)) tuples, in an order that trains before measuring
    (``reverse``: configurations from the end of the grid, so a second process can share a build)."""
    stages = set(stages)
    todo: list[tuple] = []
    for w, bs, d in (grid.configs()[::-1] if reverse else grid.configs()):
        for s in grid.seeds:
            row = cache.model_row(recipe.name, w, bs, d, s)
            untrained = row is None or row["state"] is None
            if untrained and "train" not in stages:
                continue  # measure what exists; a later build with the train stage fills the rest
            if "train" in stages and untrained:
                todo.append(("train", w, bs, d, s))
            if "eval" in stages and (row is None or row["eval_seconds"] is None):
                todo.append(("eval", w, bs, d, s))
            if "hessian" in stages and (row is None or row["hessian_seconds"] is None):
                todo.append(("hessian", w, bs, d, s))
        if "pairs" in stages and len(grid.seeds) >= 2:
            a, b = grid.seeds[0], grid.seeds[1]
            if "train" not in stages and any(cache.model_row(recipe.name, w, bs, d, s) is None for s in (a, b)):
                continue
            row = cache.pair_row(recipe.name, w, bs, d, a, b)
            if row is None or any(row[c] is None for c in _PAIR_DONE):
                todo.append(("pairs", w, bs, d, a, b))
    return todo


def build_zoo(recipe: ZooRecipe | str, grid: Grid, cache_path: str | Path, *, stages: Iterable[str] = STAGES,
              settings: ZooSettings | None = None, progress: bool = True,
              on_task: Callable[[tuple, float], None] | None = None, reverse: bool = False) -> Path:
    """Train and measure every missing piece of ``grid`` for ``recipe`` into the SQLite file ``cache_path``.

    Interrupting is safe (every finished piece is committed); rerunning resumes. ``stages`` picks the work:
    ``train`` (state dicts), ``eval`` (train/test loss and error), ``hessian`` (top eigenvalue and trace; skipped
    with a notice if the curvature machinery is missing), ``pairs`` (Bezier and linear connectivity and CKA
    between seeds 0 and 1 of each configuration; the Bezier fit is the expensive part). A piece another process
    finished in the meantime is skipped, so two processes (one with ``reverse=True``) can share a build.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    settings = settings or ZooSettings()
    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown zoo stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if "hessian" in stages:
        from trainspect.diagnosis._curvature import curvature_available

        if not curvature_available():
            print("zoo: the curvature machinery (trainspect.functional.hvp/lanczos/trace) is missing; "
                  "skipping the hessian stage (rerun later to fill it in)")
            stages = tuple(s for s in stages if s != "hessian")
    cache = ZooCache(cache_path)
    data = recipe.data()
    try:
        todo = _tasks(recipe, grid, cache, stages, reverse)
        if not todo:
            return cache.path
        bar = _progress(progress, len(todo), recipe.name)
        for task in todo:
            if not _still_missing(cache, recipe, task):
                bar.advance(task)
                continue
            start = time.perf_counter()
            _run_task(recipe, cache, data, task, settings)
            if on_task:
                on_task(task, time.perf_counter() - start)
            bar.advance(task)
        bar.close()
    finally:
        cache.close()
    return Path(cache_path)


def _still_missing(cache: ZooCache, recipe: ZooRecipe, task: tuple) -> bool:
    stage, w, bs, d = task[:4]
    if stage == "pairs":
        row = cache.pair_row(recipe.name, w, bs, d, task[4], task[5])
        return row is None or any(row[c] is None for c in _PAIR_DONE)
    row = cache.model_row(recipe.name, w, bs, d, task[4])
    column = {"train": "state", "eval": "eval_seconds", "hessian": "hessian_seconds"}[stage]
    return row is None or row[column] is None


def _run_task(recipe: ZooRecipe, cache: ZooCache, data, task: tuple, settings: ZooSettings) -> None:
    stage, w, bs, d = task[:4]
    x, y = data.subset(d)
    if stage == "train":
        s = task[4]
        start = time.perf_counter()
        model = recipe.train(w, bs, d, s)
        cache.store_model(recipe.name, w, bs, d, s, model, time.perf_counter() - start)
        return
    if stage in ("eval", "hessian"):
        s = task[4]
        model = _require(cache, recipe, w, bs, d, s)
        if stage == "eval":
            tr = loss_and_error(model, x, y)
            te = loss_and_error(model, data.x_test, data.y_test)
            cache.update_model(recipe.name, w, bs, d, s, train_loss=tr.loss, train_error=tr.error,
                               test_loss=te.loss, test_error=te.error, eval_seconds=tr.seconds + te.seconds)
        else:
            start = time.perf_counter()
            try:
                h = hessian_metrics(model, x, y, num_samples=settings.hessian_samples, seed=s,
                                    trace_matvecs=settings.trace_matvecs)
            except (ValueError, RuntimeError) as error:  # e.g. a diverged model with non-finite weights
                print(f"zoo: Hessian of {recipe.name} {task[1:]} undefined ({error}); stored as NULL")
                cache.update_model(recipe.name, w, bs, d, s, hessian_seconds=time.perf_counter() - start)
                return
            cache.update_model(recipe.name, w, bs, d, s, hessian_top=h.top_eigenvalue, hessian_trace=h.trace,
                               hessian_trace_se=h.trace_standard_error, hessian_matvecs=h.num_matvecs,
                               hessian_seconds=h.seconds)
        return
    a, b = task[4], task[5]
    ma, mb = _require(cache, recipe, w, bs, d, a), _require(cache, recipe, w, bs, d, b)
    row = cache.pair_row(recipe.name, w, bs, d, a, b)
    if row is None or row["linear_seconds"] is None:
        lin = linear_interpolation_connectivity(ma, mb, x, y, num_points=settings.linear_points)
        cache.update_pair(recipe.name, w, bs, d, a, b, linear_peak=lin.peak, linear_barrier=lin.barrier,
                          linear_errors=json.dumps(lin.errors), linear_seconds=lin.seconds)
    if row is None or row["cka_seconds"] is None:
        start = time.perf_counter()
        try:
            c = output_cka(ma, mb, x, num_batches=settings.cka_batches, batch_size=settings.cka_batch_size, seed=a)
            value = c.value
        except ValueError:  # constant outputs (a diverged model): CKA is undefined, stored as NULL
            value = None
        cache.update_pair(recipe.name, w, bs, d, a, b, cka=value, cka_seconds=time.perf_counter() - start)
    if row is None or row["mc_seconds"] is None:
        mc = bezier_mode_connectivity(ma, mb, x, y, epochs=settings.curve_epochs, batch_size=settings.curve_batch_size,
                                      lr=settings.curve_lr, seed=a)
        cache.update_pair(recipe.name, w, bs, d, a, b, mc_peak=mc.peak, mc_signed=mc.signed,
                          mc_errors=json.dumps(mc.errors), mc_steps=mc.num_steps, mc_seconds=mc.seconds)


def _require(cache: ZooCache, recipe: ZooRecipe, w: int, bs: int, d: float, s: int) -> torch.nn.Module:
    model = cache.load_model(recipe, w, bs, d, s)
    if model is None:
        raise RuntimeError(f"zoo: model (width={w}, batch_size={bs}, data={d}, seed={s}) of {recipe.name} is not "
                           "trained yet; include the 'train' stage")
    return model


class _progress:
    """A rich progress bar (or nothing)."""

    def __init__(self, enabled: bool, total: int, name: str) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[last]}"))
            self.bar.start()
            self.task = self.bar.add_task(f"zoo {name}", total=total, last="")

    def advance(self, task: tuple) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=" ".join(map(str, task)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------- the table
#: Columns of the per-configuration table (seed averages; hessian_e/hessian_t are logs of seed means).
TABLE_COLUMNS = ("width", "batch_size", "data_fraction", "num_params", "num_train", "train_error", "train_loss",
                 "test_error", "test_loss", "test_accuracy", "hessian_e", "hessian_t", "mode_connectivity_peak",
                 "mode_connectivity", "linear_peak", "linear_barrier", "CKA", "log_para_amount", "log_data_amount")


def zoo_table(cache_path: str | Path, recipe: str, grid: Grid | None = None) -> dict[str, np.ndarray]:
    """The per-configuration table of one collection: features averaged over seeds (pair metrics over the
    stored pairs), RFI values and the Q1/Q2a/Q2b labels (``None`` where 'optimal'). Columns are NumPy arrays.

    Only configurations with every seed trained and evaluated are included; missing Hessian/pair metrics are NaN.
    """
    db = sqlite3.connect(str(cache_path))
    db.row_factory = sqlite3.Row
    models = db.execute("SELECT recipe, width, batch_size, data_fraction, seed, num_params, train_loss, train_error, "
                        "test_loss, test_error, hessian_top, hessian_trace FROM models WHERE recipe=? AND "
                        "test_error IS NOT NULL", (recipe,)).fetchall()
    pairs = db.execute("SELECT * FROM pairs WHERE recipe=?", (recipe,)).fetchall()
    db.close()
    if not models:
        raise ValueError(f"no evaluated models of recipe {recipe!r} in {cache_path}")
    by_cfg: dict[tuple, list] = {}
    for r in models:
        if grid is not None and r["seed"] not in grid.seeds:
            continue
        by_cfg.setdefault((r["width"], r["batch_size"], r["data_fraction"]), []).append(r)
    pairs_by: dict[tuple, list] = {}
    for p in pairs:
        pairs_by.setdefault((p["width"], p["batch_size"], p["data_fraction"]), []).append(p)
    if grid is not None:
        wanted = {(w, bs, _key(d)) for w, bs, d in grid.configs()}
        by_cfg = {k: v for k, v in by_cfg.items() if k in wanted and len(v) == len(grid.seeds)}
    n_full = len(get_recipe(recipe).data().x_train) if recipe in _known_recipes() else None
    rows = []
    for (w, bs, d), rs in sorted(by_cfg.items()):
        def mean(col: str, rs=rs) -> float:
            vals = [r[col] for r in rs if r[col] is not None]
            return float(np.mean(vals)) if vals else math.nan

        ps = pairs_by.get((w, bs, d), [])

        def pmean(col: str, ps=ps) -> float:
            vals = [p[col] for p in ps if p[col] is not None]
            return float(np.mean(vals)) if vals else math.nan

        top, trace = mean("hessian_top"), mean("hessian_trace")
        num_train = round(d * n_full) if n_full else math.nan
        rows.append({
            "width": w, "batch_size": bs, "data_fraction": d, "num_params": rs[0]["num_params"],
            "num_train": num_train,
            "train_error": mean("train_error"), "train_loss": mean("train_loss"),
            "test_error": mean("test_error"), "test_loss": mean("test_loss"),
            "test_accuracy": 100.0 - mean("test_error"),
            "hessian_e": math.log(top) if top > 0 else math.nan,
            "hessian_t": math.log(trace) if trace > 0 else math.nan,
            "mode_connectivity_peak": pmean("mc_peak"), "mode_connectivity": pmean("mc_signed"),
            "linear_peak": pmean("linear_peak"), "linear_barrier": pmean("linear_barrier"), "CKA": pmean("cka"),
            "log_para_amount": math.log(rs[0]["num_params"]), "log_data_amount": math.log(d),
        })
    table = {c: np.array([r[c] for r in rows]) for c in TABLE_COLUMNS}
    table.update(rfi_labels(table["width"], table["batch_size"], table["data_fraction"], table["test_accuracy"]))
    return table


def _known_recipes() -> set[str]:
    from trainspect.diagnosis.recipes import RECIPES

    return set(RECIPES)


def concat_tables(*tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of several zoo tables (e.g. a clean and a noisy collection, each labelled on its own grid)."""
    cols = set.intersection(*(set(t) for t in tables))
    return {c: np.concatenate([np.asarray(t[c]) for t in tables]) for c in cols}


def table_to_csv(table: dict[str, np.ndarray], path: str | Path) -> None:
    """Write a zoo table as CSV (one row per configuration)."""
    cols = list(table)
    n = len(next(iter(table.values())))
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for i in range(n):
            f.write(",".join("" if table[c][i] is None else str(table[c][i]) for c in cols) + "\n")
