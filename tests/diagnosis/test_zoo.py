"""A small zoo end to end: build (resumable), table with RFI labels, fit, diagnose with the fitted trees."""

import sqlite3

import numpy as np
import pytest

from trainspect.cli import main as cli_main
from trainspect.diagnosis.labels import rfi_labels
from trainspect.diagnosis.recipes import RECIPES, ZooRecipe
from trainspect.diagnosis.tree import fit_trees, load_trees, save_trees
from trainspect.diagnosis.zoo import Grid, ZooSettings, build_zoo, zoo_table

GRID = Grid(widths=(4, 16), batch_sizes=(32, 256), data_fractions=(0.5, 1.0), seeds=(0, 1))
FAST = ZooSettings(trace_matvecs=10, curve_epochs=3, curve_batch_size=128, cka_batches=2)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    base = RECIPES["digits-mlp"]
    recipe = ZooRecipe("test-mlp", "test", base.make_model, base.load_data, lr=0.05, epochs=4)
    path = tmp_path_factory.mktemp("zoo") / "zoo.sqlite"
    done: list[tuple] = []
    build_zoo(recipe, GRID, path, settings=FAST, progress=False, on_task=lambda t, s: done.append(t))
    return recipe, path, done


def test_build_trains_and_measures_every_configuration_and_resumes(zoo):
    recipe, path, done = zoo
    n_models = len(GRID) * len(GRID.seeds)
    assert sum(t[0] == "train" for t in done) == n_models
    assert sum(t[0] == "pairs" for t in done) == len(GRID)
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM models WHERE hessian_trace IS NOT NULL AND test_error IS NOT NULL"
                      ).fetchone()[0] == n_models
    db.execute("UPDATE pairs SET cka = NULL, cka_seconds = NULL WHERE width = 4")  # interrupted before CKA
    db.commit()
    db.close()
    again: list[tuple] = []
    build_zoo(recipe, GRID, path, settings=FAST, progress=False, on_task=lambda t, s: again.append(t))
    assert [t[0] for t in again] == ["pairs"] * 4  # only the missing pieces


def test_table_averages_seeds_and_labels_by_rfi(zoo):
    recipe, path, _ = zoo
    table = zoo_table(path, recipe.name, GRID)
    assert len(table["width"]) == len(GRID)
    db = sqlite3.connect(path)
    errs = [r[0] for r in db.execute("SELECT test_error FROM models WHERE width=4 AND batch_size=32 AND "
                                     "data_fraction=0.5")]
    i = int(np.flatnonzero((table["width"] == 4) & (table["batch_size"] == 32) & (table["data_fraction"] == 0.5))[0])
    assert table["test_accuracy"][i] == pytest.approx(100 - np.mean(errs))
    expected = rfi_labels(table["width"], table["batch_size"], table["data_fraction"], table["test_accuracy"])
    assert table["bs_failure"].tolist() == expected["bs_failure"].tolist()
    assert np.isfinite(table["mode_connectivity_peak"]).all() and np.isfinite(table["hessian_t"]).all()
    assert ((table["CKA"] > 0) & (table["CKA"] <= 1)).all()


def test_fit_and_diagnose_with_the_fitted_trees(zoo, tmp_path, capsys):
    from trainspect.diagnosis import diagnose

    recipe, path, _ = zoo
    table = zoo_table(path, recipe.name, GRID)
    trees = fit_trees(table, shapes=("Q1", "Q2a"))
    save_trees(trees, tmp_path / "trees.json")
    model = recipe.train(4, 256, 0.5, 0)
    data = recipe.data()
    result = diagnose(model, data.subset(0.5), (data.x_test, data.y_test),
                      recipe=recipe.sibling_recipe(4, 256, 0.5), trees=load_trees(tmp_path / "trees.json"),
                      trace_matvecs=10, curve_epochs=2)
    assert set(result.decisions) == {"Q1", "Q2a"}
    assert all(d.label is not None and d.remedy for d in result.decisions.values())
    text = str(result)
    assert "remedy:" in text and "mode connectivity" in text
    # the CLI table command reads the same zoo
    assert cli_main(["zoo", "table", "--cache", str(path), "--recipe", recipe.name]) == 0
    assert "bs_failure" in capsys.readouterr().out
