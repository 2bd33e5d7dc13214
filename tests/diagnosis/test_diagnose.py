import pytest
import torch
from torch import nn

from trainspect.diagnosis import MDTree, diagnose, loss_and_error
from trainspect.diagnosis.recipes import train_sgd


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)

    def recipe(seed):
        torch.manual_seed(seed)
        return train_sgd(nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)), x[:100], y[:100],
                         batch_size=10, epochs=80, lr=0.1, seed=seed)

    return recipe, (x[:100], y[:100]), (x[100:], y[100:])


TREES = {"Q1": MDTree("Q1", [0.5, -10.0, 3.0]), "Q2a": MDTree("Q2a", [0.5, -10.0, -10.0])}


def test_without_sibling_only_paths_that_need_no_pairwise_metric_are_answered():
    recipe, train, val = _setup()
    model = recipe(0)
    result = diagnose(model, train, val, trees=TREES, trace_matvecs=10)
    err = loss_and_error(model, *train).error
    assert result.metrics["train_error"] == pytest.approx(err)
    if err <= 0.5:  # interpolating: Q1 says 'small' from the training error alone
        assert result.decisions["Q1"].label == "small"
    assert result.decisions["Q2a"].label is None and result.decisions["Q2a"].missing == "mode_connectivity_peak"
    assert any("no sibling" in n for n in result.notes)
    assert "cannot answer" in str(result)


def test_with_a_recipe_every_question_is_answered_and_features_are_sibling_averages():
    recipe, train, val = _setup()
    model = recipe(0)
    result = diagnose(model, train, val, recipe=recipe, trees=TREES, trace_matvecs=10, curve_epochs=2)
    sibling = recipe(1)
    expected = 0.5 * (loss_and_error(model, *val).error + loss_and_error(sibling, *val).error)
    assert result.metrics["test_error"] == pytest.approx(expected)
    assert all(d.label is not None for d in result.decisions.values())
    assert {"sibling training", "mode connectivity", "CKA", "Hessian top/trace"} <= set(result.costs)


def test_bad_inputs_are_rejected_with_a_clear_message():
    recipe, train, val = _setup()
    with pytest.raises(ValueError, match="train_data"):
        diagnose(recipe(0), train[0], val, trees=TREES)
    with pytest.raises(TypeError, match="nn.Module"):
        diagnose(lambda x: x, train, val, trees=TREES)
