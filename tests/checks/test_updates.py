import numpy as np
import torch
from torch import nn

from trainspect.checks.updates import UpdateCheck


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_head_missing_from_optimizer(train, data):
    x, y = data
    model = mlp()
    opt = torch.optim.Adam(model[0].parameters(), lr=1e-3)
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=2, checks=["updates"])
    found = {f.location for f in insp.findings if f.code == "parameter-not-in-optimizer"}
    assert found == {"2.weight (Linear)", "2.bias (Linear)"}


def test_near_miss_deliberately_frozen_layer_is_silent(train, data):
    x, y = data
    model = mlp()
    model[0].requires_grad_(False)
    opt = torch.optim.Adam(model[2].parameters(), lr=1e-3)
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=31, checks=["updates"])
    assert not list(insp.findings)


class Detached(nn.Module):
    def __init__(self, detach: bool):
        super().__init__()
        self.fc1, self.fc2, self.detach = nn.Linear(16, 32), nn.Linear(32, 4), detach

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h.detach() if self.detach else h)


def test_detached_layer_gets_no_gradient(train, data):
    x, y = data
    model = Detached(True)
    insp = train(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), x, y, steps=21,
                 checks=["updates"])
    found = {f.location for f in insp.findings if f.code == "no-gradient"}
    assert found == {"fc1.weight (Linear)", "fc1.bias (Linear)"}


def test_near_miss_connected_layer(train, data):
    x, y = data
    model = Detached(False)
    insp = train(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), x, y, steps=21,
                 checks=["updates"])
    assert not list(insp.findings)


def test_tiny_learning_rate_gives_update_too_small(train, data):
    x, y = data
    model = mlp()
    insp = train(model, torch.optim.SGD(model.parameters(), lr=1e-6), nn.CrossEntropyLoss(), x, y, steps=31,
                 checks=["updates"])
    f = [f for f in insp.findings if f.code == "update-too-small"]
    assert f and f[0].evidence["update_to_weight_median"] < 1e-4


def test_near_miss_normal_learning_rate(train, data):
    x, y = data
    model = mlp()
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), x, y, steps=31,
                 checks=["updates"])
    assert not list(insp.findings)


def _ratio_feed(values, ctx_factory, make_record):
    ctx = ctx_factory([(8, 8), (8,)])
    check = UpdateCheck()
    out = []
    for k, v in enumerate(values):
        out += check.observe(make_record(10 * k, {"loss": 1.0},
                                         {"layer_update_to_weight": [v, 1.0], "layer_grad_norm": [1.0, 1.0]}), ctx)
    return out


def test_update_ratio_above_band(ctx_factory, make_record):
    found = _ratio_feed([0.3, 0.2, 0.25], ctx_factory, make_record)
    assert [f.location for f in found if f.code == "update-too-large"] == ["l0.weight (Linear)"]


def test_near_miss_update_ratio_inside_band(ctx_factory, make_record):
    # the 1-D bias with ratio 1.0 is not a weight matrix and is left out of the band
    assert not _ratio_feed([0.05, 0.08, 0.09], ctx_factory, make_record)
    assert np.isfinite(0.09)


def test_group_with_zero_learning_rate_gives_parameter_not_updated(train, data):
    x, y = data
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}], lr=0.05)
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=31, checks=["updates"])
    found = {f.location for f in insp.findings if f.code == "parameter-not-updated"}
    assert found == {"0.weight (Linear)", "0.bias (Linear)"}


def test_update_ratio_with_non_finite_measurements(ctx_factory, make_record):
    """A NaN measurement is left out of the median: two of three large ratios still give update-too-large."""
    found = _ratio_feed([0.3, float("nan"), 0.25], ctx_factory, make_record)
    assert [f.location for f in found if f.code == "update-too-large"] == ["l0.weight (Linear)"]
    assert not [f for f in _ratio_feed([float("nan")] * 3, ctx_factory, make_record) if f.code == "update-too-large"]
