import torch
from torch import nn


def model(tail=None):
    torch.manual_seed(0)
    layers = [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)]
    return nn.Sequential(*layers, *([tail] if tail is not None else []))


def run(train, data, m, loss_fn, y=None):
    x, yy = data
    return train(m, torch.optim.SGD(m.parameters(), lr=0.01), loss_fn, x, yy if y is None else y, steps=4,
                 checks=["loss_input"])


def test_softmax_before_cross_entropy(train, data):
    insp = run(train, data, model(nn.Softmax(dim=1)), nn.CrossEntropyLoss())
    assert [f.code for f in insp.findings] == ["double-softmax"]


def test_near_miss_log_softmax_before_cross_entropy_is_fine(train, data):
    assert not list(run(train, data, model(nn.LogSoftmax(dim=1)), nn.CrossEntropyLoss()).findings)
    assert not list(run(train, data, model(), nn.CrossEntropyLoss()).findings)


def test_nll_on_raw_scores(train, data):
    insp = run(train, data, model(), nn.NLLLoss())
    assert [f.code for f in insp.findings] == ["nll-without-log-softmax"]
    assert not list(run(train, data, model(nn.LogSoftmax(dim=1)), nn.NLLLoss()).findings)


def test_sigmoid_before_bce_with_logits(train, data):
    _x, y = data
    yb = (y[:, None] == 0).float()

    def m(tail):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1), *([tail] if tail else []))

    insp = run(train, data, m(nn.Sigmoid()), nn.BCEWithLogitsLoss(), yb)
    assert [f.code for f in insp.findings] == ["double-sigmoid"]
    assert not list(run(train, data, m(None), nn.BCEWithLogitsLoss(), yb).findings)
