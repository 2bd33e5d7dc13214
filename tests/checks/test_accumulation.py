import torch
from torch import nn


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_missing_zero_grad_is_found_on_the_second_step(train, data):
    x, y = data
    model, opt = setup()
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=4, zero_grad="never",
                 checks=["gradient_accumulation"])
    f = [f for f in insp.findings if f.code == "gradient-accumulation"]
    assert f and f[0].first_step == 2
    # the gradient at the start of the step is exactly the previous step's gradient (nothing cleared it)
    assert abs(f[0].evidence["ratio"] - 1.0) < 0.5


def test_near_miss_zero_grad_inside_the_block(train, data):
    x, y = data
    model, opt = setup()
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=6, zero_grad="inside",
                 checks=["gradient_accumulation"])
    assert not list(insp.findings)


def test_near_miss_intentional_accumulation(train, data):
    x, y = data
    model, opt = setup()
    insp = train(model, opt, nn.CrossEntropyLoss(), x, y, steps=8, accumulate=2, checks=["gradient_accumulation"])
    assert not list(insp.findings)
