import math

import pytest
import torch
from torch import nn

import trainspect
from trainspect.checks.preflight.gradcheck import finite_difference_check


@pytest.fixture
def sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :3]).argmax(1)
    return x, y


def mlp(*tail):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3), *tail)


FAST = {"overfit_one_steps": 100, "overfit_set_steps": 200,
        "optimizer_factory": lambda params: torch.optim.Adam(params, lr=1e-2)}


class DoubleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, 2 * g.t() @ x  # wrong: the weight gradient is doubled


class BuggyLinear(nn.Linear):
    def forward(self, x):
        return DoubleGrad.apply(x, self.weight) + self.bias


def test_gradient_check_finds_a_wrong_backward(sample):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), BuggyLinear(16, 3))
    r = trainspect.preflight(model, nn.CrossEntropyLoss(), *sample, checks=["gradients"])
    bad = {f.location: f for f in r.findings if f.code == "gradient-mismatch"}
    assert set(bad) == {"2.weight (BuggyLinear)"}
    # ‖2n − n‖ / (‖2n‖ + ‖n‖) = 1/3 for a doubled gradient
    assert abs(bad["2.weight (BuggyLinear)"].evidence["relative_error"] - 1 / 3) < 1e-3


def test_near_miss_relu_batchnorm_dropout_model_passes(sample):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    r = trainspect.preflight(model, nn.CrossEntropyLoss(), *sample, checks=["gradients"])
    assert not r.findings
    assert r.results["gradients"]["max_relative_error"] < 1e-5


def test_kinks_are_skipped():
    # |w·x| has a kink at w·x = 0: put an entry exactly there
    class Abs(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.0, 1.0]))

        def forward(self, x):
            return (self.w * x).abs().sum(1, keepdim=True)

    out = finite_difference_check(Abs(), lambda o, t: (o - t).square().mean(), torch.ones(1, 2), torch.zeros(1, 1),
                                  entries_per_tensor=2)
    assert out["w"]["skipped_kinks"] == 1 and out["w"]["relative_error"] < 1e-6


def test_initial_loss_far_from_ln_c(sample):
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(50)
    r = trainspect.preflight(model, nn.CrossEntropyLoss(), *sample, checks=["initial_loss"])
    assert r.codes() == ["initial-loss-off"]
    assert abs(r.results["initial_loss"]["expected"] - math.log(3)) < 1e-12
    assert trainspect.preflight(mlp(), nn.CrossEntropyLoss(), *sample, checks=["initial_loss"]).codes() == []
    soft = trainspect.preflight(mlp(nn.Softmax(dim=1)), nn.CrossEntropyLoss(), *sample, checks=["initial_loss"])
    assert soft.codes() == ["double-softmax"]


class Mixer(nn.Module):
    """Reshapes (N, 8) to (8, N) and back with .view instead of transposing: samples mix."""

    def __init__(self, bug: bool):
        super().__init__()
        self.fc, self.bug = nn.Linear(8, 3), bug

    def forward(self, x):
        n = x.shape[0]
        h = x.view(8, n) if self.bug else x.t()
        h = h - h.mean(0, keepdim=True)  # per-feature centring across... the sample axis when bugged
        return self.fc(h.reshape(n, 8) if self.bug else h.t())


def test_batch_mixing(sample):
    r = trainspect.preflight(Mixer(True), nn.CrossEntropyLoss(), *sample, checks=["batch_independence"])
    assert r.codes() == ["batch-mixing"]


def test_near_miss_batch_independent(sample):
    r = trainspect.preflight(mlp(), nn.CrossEntropyLoss(), *sample, checks=["batch_independence"])
    assert r.codes() == [] and "batch_independence" in r.passed


def test_no_gradient_before_a_detach(sample):
    class Cut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.a(x).detach())

    r = trainspect.preflight(Cut(), nn.CrossEntropyLoss(), *sample, checks=["no_gradient"])
    assert sorted(f.location for f in r.findings) == ["a.bias (Linear)", "a.weight (Linear)"]


def test_overfit_verdicts(sample):
    good = trainspect.preflight(mlp(), nn.CrossEntropyLoss(), *sample, checks=["overfit"], **FAST)
    assert good.codes() == [] and {"overfit_one", "overfit_set"} <= set(good.passed)
    bad = trainspect.preflight(mlp(nn.Softmax(dim=1)), nn.CrossEntropyLoss(), *sample, checks=["overfit"], **FAST)
    assert "cannot-overfit-one" in bad.codes()
    assert bad.results["overfit_one"]["final_loss"] > 0.05 * bad.results["overfit_one"]["start_loss"]


def test_model_ignoring_its_input_and_smaller_network_control(sample):
    class Ignores(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.zeros_like(x))

    r = trainspect.preflight(Ignores(), nn.CrossEntropyLoss(), *sample, checks=["overfit"], **FAST)
    assert "model-ignores-input" in r.codes()
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(8, 8), nn.Sigmoid())], nn.Linear(8, 3))
    r = trainspect.preflight(deep, nn.CrossEntropyLoss(), *sample, checks=["overfit"],
                             **{**FAST, "optimizer_factory": lambda p: torch.optim.SGD(p, lr=0.01)})
    assert "smaller-network-fits" in r.codes()


def test_bad_arguments_raise_clear_errors(sample):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        trainspect.preflight("model", nn.CrossEntropyLoss(), *sample)
    with pytest.raises(ValueError, match="unknown check"):
        trainspect.preflight(mlp(), nn.CrossEntropyLoss(), *sample, checks=["gradient"])
