import torch
from torch import nn


def mlp(act, bias=None, std=None):
    model = nn.Sequential(nn.Linear(16, 64), act(), nn.Linear(64, 32), act(), nn.Linear(32, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                if bias is not None and m is not model[-1]:
                    m.bias.fill_(bias)
                if std is not None:
                    nn.init.normal_(m.weight, std=std)
    return model


def run(train, data, model, opt=None, steps=31):
    x, y = data
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, nn.CrossEntropyLoss(), x, y, steps=steps, checks=["activation_health"])


def _units_dead(model, x):
    acts = []
    hooks = [m.register_forward_hook(lambda m, a, o: acts.append(o)) for m in model if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [float(((a > 0).float().mean(0) < 0.01).float().mean()) for a in acts]


def test_negative_bias_kills_relu_units(train, data):
    torch.manual_seed(0)
    model = mlp(nn.ReLU, bias=-4.0)
    insp = run(train, data, model)
    f = [f for f in insp.findings if f.code == "dead-relu"]
    assert f
    # the reported share agrees with a direct measurement on the data
    direct = _units_dead(model, data[0])
    assert f[0].location in ("1 (ReLU)", "3 (ReLU)")
    layer = 0 if f[0].location.startswith("1") else 1
    assert abs(f[0].evidence["dead_share"] - direct[layer]) < 0.15


def test_near_miss_default_init_relu_is_silent(train, data):
    torch.manual_seed(0)
    insp = run(train, data, mlp(nn.ReLU))
    assert not list(insp.findings)


def test_large_init_saturates_tanh(train, data):
    torch.manual_seed(0)
    model = mlp(nn.Tanh, std=3.0)
    insp = run(train, data, model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert any(f.code == "saturated-activations" for f in insp.findings)


def test_near_miss_default_tanh_is_silent(train, data):
    torch.manual_seed(0)
    model = mlp(nn.Tanh)
    insp = run(train, data, model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert not list(insp.findings)
