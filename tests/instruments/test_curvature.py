"""Curvature instruments through trainspect.attach, against dense float64 references at each step's θ_t."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trainspect
from tests.functional.curvature_cases import dense_hessian
from trainspect.engine.record import Sink
from trainspect.functional.hvp import flatten
from trainspect.functional.stability import adam_stability_threshold, sgd_stability_threshold
from trainspect.providers.hvp import HessianExtremeEigenvalues


class Capture(Sink):
    def __init__(self):
        self.records = []

    def write_step(self, record):
        self.records.append(record)


def _run(model, loss_fn, optimizer, batches, instruments, before_step=None):
    sink = Capture()
    inspector = trainspect.attach(model, optimizer, loss_fn, store=False, progress=False, sinks=[sink],
                                  instruments={name: 1 for name in instruments}, checks=None)
    refs = []
    for x, y in batches:
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss = loss_fn(model(x), y)
            loss.backward()
        if before_step is not None:
            refs.append(before_step(x, y))
        optimizer.step()
    inspector.close()
    assert inspector.errors == [], inspector.errors
    return sink.records, refs


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
               for _ in range(3)]
    return model, nn.CrossEntropyLoss(), batches


def test_extreme_eigenvalues_and_trace_match_the_dense_hessian_each_step(monkeypatch):
    monkeypatch.setattr(HessianExtremeEigenvalues, "rtol", 1e-6)
    model, loss_fn, batches = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def reference(x, y):
        H = dense_hessian(model, loss_fn, x, y, vectorize=True)
        return torch.linalg.eigvalsh(H), torch.diagonal(H)

    records, refs = _run(model, loss_fn, opt, batches,
                         ["hessian_max_eigenvalue", "hessian_min_eigenvalue", "hessian_trace", "sharpness"], reference)
    sizes = [p.numel() for p in model.parameters()]
    for rec, (evals, diag) in zip(records, refs):
        lam_max, lam_min = float(evals[-1]), float(evals[0])
        assert rec.scalars["hessian_max_eigenvalue"] == pytest.approx(lam_max, rel=1e-4)
        assert rec.scalars["hessian_min_eigenvalue"] == pytest.approx(lam_min, rel=1e-4, abs=1e-4 * lam_max)
        assert 0 < rec.scalars["hessian_max_eigenvalue_products"] <= sum(sizes)
        # 59 parameters ≤ 3·30: the trace is exact (whole diagonal), standard error 0
        assert rec.scalars["hessian_trace"] == pytest.approx(float(diag.sum()), rel=1e-10)
        assert rec.scalars["hessian_trace_standard_error"] == 0.0
        blocks = torch.stack([b.sum() for b in torch.split(diag, sizes)]).numpy()
        assert rec.layers["layer_hessian_trace"] == pytest.approx(blocks, rel=1e-8, abs=1e-12)
        # SGD, one learning rate: sharpness_lr = η λ_max against 2
        assert rec.scalars["sharpness_lr"] == pytest.approx(0.5 * lam_max, rel=1e-4)
        assert rec.scalars["stability_threshold"] == 2.0
        assert rec.scalars["stability_ratio"] == pytest.approx(0.25 * lam_max, rel=1e-4)
        neg = max(0.0, -lam_min) / lam_max
        assert rec.scalars["hessian_negative_curvature_ratio"] == pytest.approx(neg, rel=1e-3, abs=1e-6)


def test_stochastic_trace_on_a_larger_model_within_three_standard_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()  # 180 params > 90
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(32, 6, generator=gen, dtype=torch.float64), torch.randint(0, 4, (32,), generator=gen))
               for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records, refs = _run(model, loss_fn, opt, batches, ["hessian_trace"],
                         lambda x, y: torch.diagonal(dense_hessian(model, loss_fn, x, y, vectorize=True)))
    sizes = [p.numel() for p in model.parameters()]
    for rec, diag in zip(records, refs):
        se = rec.scalars["hessian_trace_standard_error"]
        assert se > 0
        assert abs(rec.scalars["hessian_trace"] - float(diag.sum())) <= 3 * se
        # the smallest tensor (4 output biases) fits the exact budget and is exact
        assert rec.layers["layer_hessian_trace"][3] == pytest.approx(float(diag[-sizes[3]:].sum()), rel=1e-8)
        assert rec.scalars["hessian_trace_products"] == 30 + 4 + 16  # both biases fit the budget of 30


def _adam_precond_sharpness(model, loss_fn, opt, x, y):
    """η λ_max(P⁻¹H) with P = (1−β₁^t)(√v̂ + ε), computed densely from Adam's update formulas."""
    H = dense_hessian(model, loss_fn, x, y, vectorize=True)
    g = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    beta1, beta2 = opt.param_groups[0]["betas"]
    eps, lr = opt.param_groups[0]["eps"], opt.param_groups[0]["lr"]
    vs, steps = [], []
    for p, gp in zip(model.parameters(), g):
        st = opt.state.get(p, {})
        v_prev = st.get("exp_avg_sq", torch.zeros_like(p))
        t = int(st["step"]) + 1 if "step" in st else 1
        vs.append(beta2 * v_prev + (1 - beta2) * gp.detach() ** 2)
        steps.append(t)
    t = steps[0]
    v_hat = flatten(vs) / (1 - beta2**t)
    P = (1 - beta1**t) * (v_hat.sqrt() + eps)
    M = lr / P
    A = M.sqrt()[:, None] * H * M.sqrt()[None, :]
    return float(torch.linalg.eigvalsh(A)[-1])


def test_adam_preconditioned_sharpness_matches_dense_formula():
    model, loss_fn, batches = _mlp(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    records, refs = _run(model, loss_fn, opt, batches, ["sharpness"],
                         lambda x, y: _adam_precond_sharpness(model, loss_fn, opt, x, y))
    for rec, ref in zip(records, refs):
        assert rec.scalars["sharpness_lr"] == pytest.approx(ref, rel=2e-3)
        assert rec.scalars["stability_threshold"] == pytest.approx(38.0)


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.5, True)])
def test_sgd_stability_threshold_is_where_torch_sgd_starts_to_diverge_on_a_quadratic(momentum, nesterov):
    # Independent check of the thresholds: run torch.optim.SGD on L = λ/2 x² just below and above the limit.
    c = sgd_stability_threshold(momentum, nesterov)
    lr = 0.1
    # two coordinates, ηλ = 0.9c and 1.1c: spectral radius of the iteration ≤ 0.95 and ≥ 1.2
    curvature = torch.tensor([0.9 * c / lr, 1.1 * c / lr], dtype=torch.float64)
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)
    for _ in range(150):
        opt.zero_grad()
        (0.5 * curvature * x.square()).sum().backward()
        opt.step()
    below, above = x.detach().abs().tolist()
    assert below < 1e-2
    assert not above < 1e3  # nan/inf count as diverged


def test_adam_threshold_value():
    assert adam_stability_threshold(0.9) == pytest.approx(38.0)


def test_loss_slices_pass_through_theta_t_and_theta_t_plus_1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 3)).double()
    loss_fn = nn.CrossEntropyLoss()
    _, _, batches = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    records, _ = _run(model, loss_fn, opt, batches, ["loss_slice"])
    assert len(records) == 3
    for rec in records:
        curve = rec.histograms["loss_slice_update"]
        x_alpha, y = curve.x_edges, curve.counts
        assert len(x_alpha) == 25 and x_alpha[0] == -1.0 and x_alpha[-1] == 2.0
        assert rec.histograms["loss_slice_random"].counts.shape == (21,)
        assert rec.scalars["loss_slice_update_argmin"] == x_alpha[y.argmin()]
        assert y.min() <= y[x_alpha == 0.0][0]


def test_loss_slice_values_match_direct_evaluation():
    from trainspect.functional.loss_slice import filter_normalized_direction, loss_along_direction

    model, loss_fn, batches = _mlp()
    x, y = batches[0]
    names = [n for n, _ in model.named_parameters()]
    base = [p.detach().clone() for p in model.parameters()]
    d = filter_normalized_direction(base, seed=3)
    for p, dp in zip(base, d):
        if p.dim() > 1:  # each filter (row) has the parameter's row norm
            torch.testing.assert_close(dp.norm(dim=1), p.norm(dim=1))
        else:
            assert not dp.any()
    alphas = torch.tensor([-0.5, 0.0, 0.7], dtype=torch.float64)
    got = loss_along_direction(model, loss_fn, x, y, names, base, d, alphas)
    for a, value in zip(alphas.tolist(), got):
        copy = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        with torch.no_grad():
            for p, b, dp in zip(copy.parameters(), base, d):
                p.copy_(b + a * dp)
        with torch.no_grad():
            assert float(value) == pytest.approx(float(loss_fn(copy(x), y)), rel=1e-12)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), base))  # model untouched


def test_missing_batch_is_recorded_not_raised():
    model, loss_fn, batches = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, opt, loss_fn, store=False, progress=False,
                                  instruments={"hessian_max_eigenvalue": 1}, checks=None)
    x, y = batches[0]
    with pytest.warns(RuntimeWarning, match="inspector.step"):
        with inspector.step():
            loss_fn(model(x), y).backward()
        opt.step()
    inspector.close()
    assert "inspector.step(x, y)" in inspector.errors[0]["message"]


def _tic_reference(model, loss_fn, x, y):
    """Cockpit's TIC formulas on the dense Hessian diagonal and a Python loop of per-sample gradients."""
    H = dense_hessian(model, loss_fn, x, y, vectorize=True)
    params = list(model.parameters())
    m = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(x.shape[0]):
        g = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params)
        m += flatten(g).square()
    m /= x.shape[0]
    d = torch.diagonal(H)
    return float((m / (d + 1e-7)).sum()), float(m.sum() / (d.sum() + 1e-7))


def test_tic_matches_its_formula_on_the_dense_hessian():
    model, loss_fn, batches = _mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    records, refs = _run(model, loss_fn, opt, batches, ["tic_diag", "tic_trace"],
                         lambda x, y: _tic_reference(model, loss_fn, x, y))
    for rec, (diag_ref, trace_ref) in zip(records, refs):
        assert rec.scalars["tic_diag"] == pytest.approx(diag_ref, rel=1e-8)
        assert rec.scalars["tic_trace"] == pytest.approx(trace_ref, rel=1e-8)


@pytest.mark.parametrize("case", ["mlp_tanh_ce", "mlp_relu_mse", "cnn_ce"])
def test_ggn_diagonal_is_the_dense_ggn_diagonal(case):
    from tests.functional.curvature_cases import dense_ggn, make_case
    from trainspect.functional.diagonal import ggn_diagonal

    model, loss_fn, x, y = make_case(case)
    names = [n for n, _ in model.named_parameters()]
    got = flatten(ggn_diagonal(model, loss_fn, x, y, names))
    torch.testing.assert_close(got, torch.diagonal(dense_ggn(model, loss_fn, x, y)))


def test_configurations_add_curvature_with_its_own_schedule():
    from trainspect.configurations import resolve_instruments
    from trainspect.instruments.curvature import CURVATURE_SCHEDULE

    business = {i.name: i for i in resolve_instruments("business")}
    full = {i.name: i for i in resolve_instruments("full")}
    assert {"hessian_trace", "tic_diag"} <= set(business)
    assert {"hessian_max_eigenvalue", "hessian_min_eigenvalue", "sharpness", "loss_slice"} <= set(full)
    assert business["hessian_trace"].schedule is CURVATURE_SCHEDULE
    assert [s for s in range(30) if full["hessian_max_eigenvalue"].is_due(s)] == [
        0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25]


def test_tic_uses_the_exact_ggn_diagonal_for_large_models(monkeypatch):
    from tests.functional.curvature_cases import dense_ggn
    from trainspect.providers.hvp import HessianDiagonal

    monkeypatch.setattr(HessianDiagonal, "exact_max_dim", 0)  # pretend the model is large
    model, loss_fn, batches = _mlp(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)

    def reference(x, y):
        params = list(model.parameters())
        m = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
        for i in range(x.shape[0]):
            m += flatten(torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params)).square()
        m /= x.shape[0]
        d = torch.diagonal(dense_ggn(model, loss_fn, x, y))
        return float((m / (d + 1e-7)).sum())

    records, refs = _run(model, loss_fn, opt, batches[:2], ["tic_diag"], reference)
    for rec, ref in zip(records, refs):
        assert rec.scalars["tic_diag"] == pytest.approx(ref, rel=1e-8)


def test_ggn_diagonal_failure_is_explained(monkeypatch):
    from trainspect.providers.hvp import HessianDiagonal

    monkeypatch.setattr(HessianDiagonal, "exact_max_dim", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()  # mixes samples
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, opt, loss_fn, store=False, progress=False,
                                  instruments={"tic_diag": 1}, checks=None)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.warns(RuntimeWarning, match="tic_diag"):
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
        opt.step()
    inspector.close()
    assert "exact_max_dim" in inspector.errors[0]["message"]


def _run_with_curvature_batch(model, loss_fn, optimizer, batches, instruments, curvature_batch, reference):
    """Like ``_run`` with ``curvature_batch``: ``reference(x, y)`` sees the step's batch, before the step."""
    sink = Capture()
    inspector = trainspect.attach(model, optimizer, loss_fn, store=False, progress=False, sinks=[sink],
                                  instruments={name: 1 for name in instruments}, checks=None,
                                  curvature_batch=curvature_batch)
    refs = []
    for x, y in batches:
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
        refs.append(reference(x, y))
        optimizer.step()
    inspector.close()
    assert inspector.errors == [], inspector.errors
    return sink.records, refs


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_fixed_curvature_batch_is_measured_instead_of_each_steps_batch(monkeypatch, reduction):
    monkeypatch.setattr(HessianExtremeEigenvalues, "rtol", 1e-6)
    model, _, batches = _mlp(3)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    opt = torch.optim.SGD(model.parameters(), lr=0.05 if reduction == "sum" else 0.5)
    gen = torch.Generator().manual_seed(11)
    # a different size than the steps' batches (16): the sum-loss rescaling must use the fixed batch's 10
    fx, fy = torch.randn(10, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)

    def reference(x, y):
        H_fixed = dense_hessian(model, loss_fn, fx, fy, vectorize=True)
        H_step = dense_hessian(model, loss_fn, x, y, vectorize=True)
        mean_fixed = nn.CrossEntropyLoss()  # TIC's curvature is that of the mean loss
        tic = _tic_reference_mixed(model, mean_fixed, x, y, fx, fy)
        return torch.linalg.eigvalsh(H_fixed), torch.diagonal(H_fixed).sum(), torch.linalg.eigvalsh(H_step), tic

    records, refs = _run_with_curvature_batch(
        model, loss_fn, opt, batches,
        ["hessian_max_eigenvalue", "hessian_min_eigenvalue", "hessian_trace", "tic_diag", "tic_trace"],
        (fx, fy), reference)
    assert len(records) == len(batches)
    for rec, (evals, trace, step_evals, (tic_diag_ref, tic_trace_ref)) in zip(records, refs):
        lam_max = float(evals[-1])
        assert rec.scalars["hessian_max_eigenvalue"] == pytest.approx(lam_max, rel=1e-4)
        assert rec.scalars["hessian_min_eigenvalue"] == pytest.approx(float(evals[0]), rel=1e-4, abs=1e-4 * lam_max)
        # the step's own batch has another spectrum: the test can tell which batch was measured
        assert abs(float(step_evals[-1]) - lam_max) > 1e-3 * lam_max
        assert rec.scalars["hessian_trace"] == pytest.approx(float(trace), rel=1e-10)
        assert rec.scalars["tic_diag"] == pytest.approx(tic_diag_ref, rel=1e-8)
        assert rec.scalars["tic_trace"] == pytest.approx(tic_trace_ref, rel=1e-8)


def _tic_reference_mixed(model, loss_fn, x, y, fx, fy):
    """TIC's formulas with the per-sample second moment of the step's batch (x, y) and the dense Hessian
    diagonal of the mean loss on the curvature batch (fx, fy)."""
    params = list(model.parameters())
    m = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(x.shape[0]):
        g = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params)
        m += flatten(g).square()
    m /= x.shape[0]
    d = torch.diagonal(dense_hessian(model, loss_fn, fx, fy, vectorize=True))
    return float((m / (d + 1e-7)).sum()), float(m.sum() / (d.sum() + 1e-7))


def test_curvature_batch_first_keeps_a_copy_of_the_first_steps_batch(monkeypatch):
    monkeypatch.setattr(HessianExtremeEigenvalues, "rtol", 1e-6)
    model, loss_fn, batches = _mlp(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x0, y0 = batches[0][0].clone(), batches[0][1].clone()
    # the loop reuses one input buffer (as a data loader with pinned buffers may): the copy must not follow it
    buffer_x, buffer_y = batches[0][0], batches[0][1]
    reused = [(buffer_x, buffer_y)]
    for x, y in batches[1:]:
        reused.append((x, y))

    def reference(x, y):
        return float(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, x0, y0, vectorize=True))[-1])

    sink = Capture()
    inspector = trainspect.attach(model, opt, loss_fn, store=False, progress=False, sinks=[sink],
                                  instruments={"hessian_max_eigenvalue": 1}, checks=None, curvature_batch="first")
    refs = []
    for step, (x, y) in enumerate(reused):
        opt.zero_grad()
        with inspector.step(x, y):
            loss_fn(model(x), y).backward()
        refs.append(reference(x, y))
        opt.step()
        if step == 0:
            buffer_x.add_(1.0)  # the user's buffer changes after the first step
    inspector.close()
    assert inspector.errors == [], inspector.errors
    for rec, lam in zip(sink.records, refs):
        assert rec.scalars["hessian_max_eigenvalue"] == pytest.approx(lam, rel=1e-4)


@pytest.mark.parametrize("bad", ["last", (torch.zeros(2, 5),), 3])
def test_a_malformed_curvature_batch_is_a_clear_error(bad):
    model, loss_fn, _ = _mlp()
    with pytest.raises(ValueError, match="curvature_batch must be None"):
        trainspect.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, store=False,
                          progress=False, curvature_batch=bad)
