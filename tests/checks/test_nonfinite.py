import torch
from torch import nn


class Log(nn.Module):
    def __init__(self, eps: float = 0.0):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return torch.log(x + self.eps)


def test_nan_loss_is_located_at_the_first_module_with_nonfinite_output(train, data):
    x, y = data
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), Log(), nn.Linear(32, 4))
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), x, y, steps=3)
    found = [f for f in insp.findings if f.code.startswith("nonfinite")]
    assert found, [f.code for f in insp.findings]
    assert found[0].code == "nonfinite-loss"
    assert found[0].location == "2 (Log)"  # not the ReLU before it, not the Linear after it
    assert found[0].first_step == 0
    assert found[0].evidence["origin_stage"] == "forward"


def test_backward_only_nan_is_located_in_backward(train, data):
    class Norm(nn.Module):  # sqrt(Σx²) is finite at 0, its gradient is not
        def forward(self, x):
            return x.square().sum(1, keepdim=True).sqrt()

    x, y = data
    model = nn.Sequential(nn.Linear(16, 8), nn.Identity(), Norm(), nn.Linear(1, 4))
    with torch.no_grad():
        model[0].weight.zero_()  # the Linear outputs exactly 0 -> d sqrt at 0 = inf -> inf * 0 = NaN
        model[0].bias.zero_()
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), x, y, steps=2)
    found = [f for f in insp.findings if f.code == "nonfinite-gradients"]
    assert found and found[0].evidence["origin_stage"] == "backward"
    assert found[0].location == "2 (Norm)"


def test_near_miss_log_with_epsilon_is_silent(train, data):
    x, y = data
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), Log(1e-3), nn.Linear(32, 4))
    insp = train(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), x, y, steps=5)
    assert not [f for f in insp.findings if f.code.startswith("nonfinite")]
