import numpy as np
import torch
from torch import nn

from trainspect.checks.gradients import GradientScaleCheck


def deep(act, depth, width=32):
    layers = [nn.Linear(16, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def test_deep_sigmoid_stack_has_vanishing_gradients(train, data, codes_of):
    x, y = data
    torch.manual_seed(0)
    model = deep(nn.Sigmoid, 10)
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), x, y, steps=20,
                 checks=["gradient_scale"])
    f = [f for f in insp.findings if f.code == "vanishing-gradients"]
    assert f, codes_of(insp)
    assert f[0].evidence["depth_ratio_median"] < 1e-3


def test_near_miss_shallow_sigmoid_is_silent(train, data, codes_of):
    x, y = data
    torch.manual_seed(0)
    model = deep(nn.Sigmoid, 2)
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), x, y, steps=20,
                 checks=["gradient_scale"])
    assert not codes_of(insp)


def _feed(check, ctx, make_record, norms):
    out = []
    for step, g in enumerate(norms):
        layers = {"layer_grad_norm": [g, g]}
        if step % 10 == 0:
            layers["layer_param_norm"] = [1.0, 1.0]
        out += check.observe(make_record(step, {"grad_norm": g * np.sqrt(2), "loss": 1.0}, layers), ctx)
    return out


def test_gradient_norm_growing_past_32x_is_exploding(ctx_factory, make_record):
    ctx = ctx_factory([(4, 4), (4, 4)])
    norms = [1.0] * 10 + [50.0] * 10  # ×50 > 32
    found = _feed(GradientScaleCheck(), ctx, make_record, norms)
    assert any(f.code == "exploding-gradients" for f in found)


def test_near_miss_growth_of_20x_is_silent(ctx_factory, make_record):
    ctx = ctx_factory([(4, 4), (4, 4)])
    norms = [1.0] * 10 + [20.0] * 30
    assert not _feed(GradientScaleCheck(), ctx, make_record, norms)


def test_thresholds_are_configurable_and_validated(ctx_factory, make_record):
    ctx = ctx_factory([(4, 4), (4, 4)])
    norms = [1.0] * 10 + [20.0] * 10
    assert any(f.code == "exploding-gradients" for f in _feed(GradientScaleCheck(growth=10), ctx, make_record, norms))
    try:
        GradientScaleCheck(grwoth=10)
    except ValueError as error:
        assert "grwoth" in str(error)
    else:
        raise AssertionError("unknown threshold accepted")
