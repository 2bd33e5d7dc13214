import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from trainspect.diagnosis.metrics import (
    bezier_mode_connectivity,
    hessian_metrics,
    linear_interpolation_connectivity,
    loss_and_error,
    output_cka,
)
from trainspect.diagnosis.recipes import train_sgd


def _data(n=120, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    w = torch.randn(5, 3, generator=g, dtype=dtype)
    y = (x @ w + 0.3 * torch.randn(n, 3, generator=g, dtype=dtype)).argmax(1)
    return x, y


def _mlp(seed, dtype=torch.float32, width=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3)).to(dtype)


def _trained(seed, x, y, epochs=60):
    return train_sgd(_mlp(seed), x, y, batch_size=16, epochs=epochs, lr=0.1, seed=seed)


def test_loss_and_error_match_a_direct_computation():
    x, y = _data()
    model = _mlp(0)
    model.train()
    result = loss_and_error(model, x, y, batch_size=7)  # several batches
    with torch.no_grad():
        out = model(x)
    assert result.loss == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-5)
    assert result.error == pytest.approx(100.0 * (out.argmax(1) != y).float().mean().item())
    assert model.training  # mode restored


def test_hessian_metrics_match_the_dense_hessian_of_a_tiny_float64_model():
    x, y = _data(n=80, dtype=torch.float64)
    model = _mlp(1, torch.float64, width=4)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def loss(*ps):
        return nn.functional.cross_entropy(functional_call(model, dict(zip(names, ps)), (x,)), y)

    blocks = hessian(loss, argnums=tuple(range(len(params))))(*params)
    sizes = [p.numel() for p in params]
    dense = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                       for i in range(len(params))], 0)
    eigs = torch.linalg.eigvalsh(dense)
    # num_samples ≥ n: the batch is the whole data set, so both sides see the same loss
    h = hessian_metrics(model, x, y, num_samples=200, trace_matvecs=400, rtol=1e-8, max_iter=len(eigs))
    assert h.num_samples == 80
    assert h.top_eigenvalue == pytest.approx(eigs.max().item(), rel=1e-6)
    true_trace = torch.trace(dense).item()
    assert abs(h.trace - true_trace) <= 4 * h.trace_standard_error + 1e-9
    assert h.trace_standard_error < 0.2 * abs(true_trace)
    assert h.num_matvecs >= 400


def test_a_model_is_connected_to_itself_without_barrier():
    x, y = _data()
    model = _trained(0, x, y)
    own_error = loss_and_error(model, x, y).error
    lin = linear_interpolation_connectivity(model, copy.deepcopy(model), x, y)
    assert lin.barrier == pytest.approx(0.0, abs=1e-9)
    assert lin.errors == pytest.approx([own_error] * 5)
    assert lin.peak == pytest.approx(-own_error)
    # no curve training: the Bezier curve between identical endpoints is the model itself
    still = bezier_mode_connectivity(model, copy.deepcopy(model), x, y, epochs=0)
    assert still.errors == pytest.approx([own_error] * 5)
    # a short fit from a minimum stays on it (no weight decay pulling it away)
    fitted = bezier_mode_connectivity(model, copy.deepcopy(model), x, y, epochs=3, lr=0.001, weight_decay=0.0)
    assert fitted.barrier <= 2.0
    assert fitted.num_steps == 3 * (len(x) // 64)


def test_a_trained_bezier_curve_finds_a_lower_path_than_the_straight_line():
    x, y = _data(n=200)
    a, b = _trained(0, x, y), _trained(1, x, y)
    lin = linear_interpolation_connectivity(a, b, x, y)
    curve = bezier_mode_connectivity(a, b, x, y, epochs=40, batch_size=32, lr=0.05, weight_decay=0.0)
    assert lin.errors[0] == pytest.approx(curve.errors[0]) and lin.errors[-1] == pytest.approx(curve.errors[-1])
    assert lin.peak < -5.0  # two seeds of a small net: a barrier on the line
    assert curve.peak > lin.peak


def test_output_cka_of_a_model_with_itself_is_one_and_lower_for_an_untrained_model():
    x, y = _data()
    model = _trained(0, x, y)
    assert output_cka(model, copy.deepcopy(model), x).value == pytest.approx(1.0, abs=1e-9)
    assert output_cka(model, _mlp(5), x).value < 0.9
    with pytest.raises(ValueError, match="same architecture"):
        output_cka(model, _mlp(0, width=7), x)


def test_connectivity_recomputes_batchnorm_statistics_at_each_point():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    train_sgd(model, x, y, batch_size=16, epochs=20, lr=0.1, seed=0)
    with torch.no_grad():  # corrupt the running statistics: the endpoint evaluation must not use them
        model[1].running_mean.fill_(50.0)
    lin = linear_interpolation_connectivity(model, copy.deepcopy(model), x, y)
    model[1].reset_running_stats()
    model[1].momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    assert lin.errors[0] == pytest.approx(loss_and_error(model, x, y).error)
