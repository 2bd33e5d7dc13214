import torch
from torch import nn


def run(train, data, scale, feature_scale=None):
    x, y = data
    x = x * scale
    if feature_scale is not None:
        x = x.clone()
        x[:, 3] *= feature_scale
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    return train(m, torch.optim.SGD(m.parameters(), lr=1e-4), nn.CrossEntropyLoss(), x, y, steps=4,
                 checks=["input_scale"])


def test_one_feature_in_other_units(train, data):
    insp = run(train, data, 1.0, feature_scale=1000.0)
    f = [f for f in insp.findings if f.code == "input-feature-scales"]
    assert f and 3 in f[0].evidence["largest_features"]
    # RMS ratio against a direct computation: feature 3 over the median feature
    x = data[0].clone()
    x[:, 3] *= 1000
    rms = x.square().mean(0).sqrt()
    assert f[0].evidence["rms_ratio"] > 0.3 * float(rms[3] / rms.median())


def test_near_miss_feature_scaled_by_5(train, data):
    assert not list(run(train, data, 1.0, feature_scale=5.0).findings)


def test_raw_pixel_scale(train, data):
    insp = run(train, data, 100.0)
    assert [f.code for f in insp.findings] == ["inputs-not-normalized"]
    assert not list(run(train, data, 10.0).findings)
