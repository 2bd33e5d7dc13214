"""Gradient tests, GSNR, CABS, early stopping and alpha through the real engine, vs naive formulas on
brute-force per-sample gradients (a Python loop of torch.autograd.grad, float64, rtol 1e-5)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import trainspect
from trainspect.store import open_run

from ..providers.per_sample.models import KINDS, brute_force_per_sample_grads, problem

RTOL = 1e-5
INSTRUMENTS = ["norm_test", "inner_test", "ortho_test", "mean_gsnr", "cabs", "early_stopping", "alpha"]


def train(kind: str, reduction: str, tmp_path, optimizer_name: str = "sgd", steps: int = 3, n: int = 6,
          clip: float | None = None, inspectors: list | None = None, copies: list | None = None,
          after_step=None, instruments=INSTRUMENTS):
    """Run the engine for a few steps; return the run and the brute-force reference of every step.

    ``clip``: clip the gradient norm after the step's block (the optimizer then steps along another gradient than
    the per-sample gradients' mean); ``inspectors``: receives the inspector; ``copies``: receives the steps at which
    θ_t was copied; ``after_step(step, optimizer)``: called after each ``optimizer.step()``."""
    model, _, _, loss = problem(kind, n)
    loss.reduction = reduction
    batches = [problem(kind, n, seed=s + 1)[1:3] for s in range(steps)]
    params = list(model.parameters())
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.05)
    elif optimizer_name == "momentum":
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    elif optimizer_name == "heavy-ball":
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    elif optimizer_name == "dampened":
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.8, dampening=0.3)
    elif optimizer_name == "maximize":
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, maximize=True)  # ascent: still a step
    elif optimizer_name == "nesterov":
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.Adam(params, lr=1e-2)
    run_dir = tmp_path / f"{kind}-{reduction}-{optimizer_name}"
    inspector = trainspect.attach(model, optimizer, loss, run_dir=run_dir, instruments=instruments, checks=None,
                                  progress=False)
    if copies is not None:
        snapshot = inspector.provider("params_before_update")
        real = snapshot.compute
        snapshot.compute = lambda ctx: copies.append(ctx.step) or real(ctx)
    refs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, (x, y) in enumerate(batches):
            grads = torch.cat([g.reshape(n, -1) for g in brute_force_per_sample_grads(model, x, y, loss)], 1)
            with torch.no_grad():
                losses = torch.stack([loss(model(x[i:i + 1]), y[i:i + 1]) for i in range(n)])
            before = torch.cat([p.detach().reshape(-1) for p in params])
            optimizer.zero_grad()
            with inspector.step(x, y):
                out = loss(model(x), y)
                out.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            if after_step is not None:
                after_step(step, optimizer)
            update = torch.cat([p.detach().reshape(-1) for p in params]) - before
            refs.append({"g": grads, "losses": losses, "update": update, "loss": out.detach(),
                         "lr": optimizer.param_groups[0]["lr"]})
    inspector.close()
    assert not inspector.errors, inspector.errors[0]["traceback"]
    if inspectors is not None:
        inspectors.append(inspector)
    return open_run(run_dir), refs


def reference_tests(g: torch.Tensor) -> dict[str, float]:
    """Cockpit's autograd reference forms (cockpit.md §1.8–1.13)."""
    n = g.shape[0]
    mean = g.mean(0)
    g2 = mean.square().sum()
    sq = g.square().sum(1)
    pi = g @ mean
    second = g.square().mean(0)
    var_unbiased = g.var(0, unbiased=True)
    return {
        "norm_test": float(torch.sqrt((sq / g2 - 1).sum() / (n * (n - 1)))),
        "inner_test": float(torch.sqrt((pi.square() / g2**2 - 1).sum() / (n * (n - 1)))),
        "ortho_test": float(torch.sqrt((sq / g2 - pi.square() / g2**2).sum() / (n * (n - 1)))),
        "mean_gsnr": float((mean.square() / (second - mean.square() + 1e-5)).mean()),
        "early_stopping": float(1 - n * (mean.square() / (var_unbiased + 1e-5)).mean()),
        "trace_variance": float((second - mean.square()).sum()),
    }


def reference_alpha(start: dict, end: dict) -> float:
    """Cockpit's α by an independent weighted least-squares fit (numpy lstsq on √weight-scaled rows)."""
    d = start["update"]
    t = float(d.norm())
    p0 = (start["g"] @ d / t).numpy()
    p1 = (end["g"] @ d / t).numpy()
    f = np.array([start["losses"].mean(), end["losses"].mean(), p0.mean(), p1.mean()])
    var = np.array([start["losses"].var(unbiased=True), end["losses"].var(unbiased=True), p0.var(ddof=1),
                    p1.var(ddof=1)])
    var[var == 0] = 1e-10
    phi = np.array([[1, 0, 0], [1, t, t * t], [0, 1, 0], [0, 1, 2 * t]], dtype=np.float64)
    w = 1 / np.sqrt(var)
    mu = np.linalg.lstsq(phi * w[:, None], f * w, rcond=None)[0]
    if mu[2] < 0:
        return -1.0
    return 2 * t / (-mu[1] / mu[2]) - 1


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_statistics_match_brute_force(kind, reduction, tmp_path):
    run, refs = train(kind, reduction, tmp_path)
    for name in ("norm_test", "inner_test", "ortho_test", "mean_gsnr", "early_stopping"):
        steps, values = run.scalar(name)
        expected = [reference_tests(r["g"])[name] for r in refs]
        np.testing.assert_allclose(values, expected, rtol=RTOL, err_msg=name)
    # CABS with plain SGD: lr · tr(Σ̂) / mean loss
    _, cabs = run.scalar("cabs_batch_size")
    expected = [r["lr"] * reference_tests(r["g"])["trace_variance"] / float(r["losses"].mean()) for r in refs]
    np.testing.assert_allclose(cabs, expected, rtol=RTOL)
    # alpha of step t is recorded at step t+1
    steps, alphas = run.scalar("alpha")
    assert list(steps) == list(range(1, len(refs)))
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(len(refs) - 1)],
                               rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("optimizer_name", ["momentum", "adam"])
@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_alpha_and_cabs_use_the_update_actually_taken(kind, optimizer_name, tmp_path):
    run, refs = train(kind, "mean", tmp_path, optimizer_name=optimizer_name, steps=4)
    _, alphas = run.scalar("alpha")
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(len(refs) - 1)],
                               rtol=RTOL, atol=1e-9)
    # CABS generalization: effective learning rate −ḡᵀd/‖ḡ‖² of the update taken
    _, lr_eff = run.scalar("cabs_effective_lr")
    expected = []
    for r in refs:
        mean = r["g"].mean(0)
        expected.append(float(-(mean @ r["update"]) / mean.square().sum()))
    np.testing.assert_allclose(lr_eff, [e for e in expected if e > 0], rtol=1e-4)


@pytest.mark.parametrize("optimizer_name", ["sgd", "heavy-ball", "dampened"])
@pytest.mark.parametrize("kind", ["mlp", "attention", "cnn"])
def test_alpha_sgd_shortcut_matches_the_reference(kind, optimizer_name, tmp_path):
    """Plain SGD (with or without momentum): the current update's projections come from the previous one's and
    the gradient tests' g_iᵀḡ (no second projection); alpha still equals the brute-force reference."""
    inspectors: list = []
    steps = 5
    run, refs = train(kind, "mean", tmp_path, optimizer_name=optimizer_name, steps=steps, inspectors=inspectors)
    _, alphas = run.scalar("alpha")
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(len(refs) - 1)],
                               rtol=RTOL, atol=1e-9)
    alpha = next(i for i in inspectors[0].instruments if i.name == "alpha")
    # with momentum every start of a pair from the second step on takes the shortcut (it needs b_{t−1}); without
    # momentum the update taken is projected
    assert alpha.fast_steps == (0 if optimizer_name == "sgd" else steps - 1)


@pytest.mark.parametrize("with_grad_norm", [False, True])
@pytest.mark.parametrize("optimizer_name", ["sgd", "heavy-ball", "dampened"])
def test_alpha_sgd_shortcut_steps_aside_when_gradients_are_clipped(optimizer_name, with_grad_norm, tmp_path):
    """Clipping after the block: the optimizer's gradient is not the per-sample mean, so the shortcut must not be
    used (the projection is computed), and alpha still equals the reference along the update actually taken. With
    grad_norm due, the gradient norms were measured before the clipping (as under Lightning), so the check must
    look at what the step did, not at them."""
    inspectors: list = []
    extra = ["grad_norm"] if with_grad_norm else []
    run, refs = train("mlp", "mean", tmp_path, optimizer_name=optimizer_name, steps=4, clip=1e-3,
                      inspectors=inspectors, instruments=INSTRUMENTS + extra)
    _, alphas = run.scalar("alpha")
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(len(refs) - 1)],
                               rtol=RTOL, atol=1e-9)
    assert next(i for i in inspectors[0].instruments if i.name == "alpha").fast_steps == 0


@pytest.mark.parametrize("optimizer_name", ["sgd", "heavy-ball", "momentum", "maximize", "nesterov", "adam"])
def test_alpha_follows_sgd_without_copying_the_parameters(optimizer_name, tmp_path):
    """With torch.optim.SGD with momentum (not Nesterov) alpha knows the update from the optimizer: θ_t is never
    copied, and alpha still equals the reference along the update taken; SGD without momentum, Nesterov and Adam
    use the copy."""
    copies: list = []
    # CABS is left out: it needs the update as a tensor
    run, refs = train("mlp", "mean", tmp_path, optimizer_name=optimizer_name, steps=4, copies=copies,
                      instruments=["norm_test", "inner_test", "ortho_test", "alpha", "update_size"])
    _, alphas = run.scalar("alpha")
    assert len(alphas) == len(refs) - 1
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(len(refs) - 1)],
                               rtol=RTOL, atol=1e-9)
    assert copies == ([] if optimizer_name not in ("sgd", "nesterov", "adam") else list(range(4)))


def test_alpha_drops_a_pair_whose_momentum_buffer_was_changed_between_steps(tmp_path):
    """A momentum buffer changed in place after step 1 (e.g. a restart that rescales the state): the projection
    along d_1 = −lr·b_1 is no longer possible, so alpha of step 1 is not reported, rather than a wrong number;
    the other pairs still equal the reference."""
    def shrink(step, optimizer):
        if step == 1:
            for state in optimizer.state.values():
                state["momentum_buffer"].mul_(0.5)

    run, refs = train("mlp", "mean", tmp_path, optimizer_name="heavy-ball", steps=4, after_step=shrink)
    steps, alphas = run.scalar("alpha")
    assert list(steps) == [1, 3]  # the pair (1, 2) is missing
    # the update of step 1 as SGD took it (before the buffer changed), and the later ones as taken
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in (0, 2)], rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("optimizer_name", ["sgd", "heavy-ball"])
def test_alpha_with_gradients_zeroed_inside_the_block(optimizer_name, set_to_none, tmp_path):
    """optimizer.step() and zero_grad() inside the block: alpha's update phase runs after the gradients are gone;
    what it needs of them (the rule, plain SGD's copy of ∇L, the norms for the shortcut) was taken before."""
    model, _, _, loss = problem("mlp", 6)
    params = list(model.parameters())
    momentum = 0.9 if optimizer_name == "heavy-ball" else 0.0
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=momentum)
    inspector = trainspect.attach(model, optimizer, loss, run_dir=tmp_path / "r", checks=None, progress=False,
                                  instruments=["norm_test", "inner_test", "ortho_test", "alpha"])
    refs = []
    for s in range(4):
        x, y = problem("mlp", 6, seed=s + 1)[1:3]
        grads = torch.cat([g.reshape(6, -1) for g in brute_force_per_sample_grads(model, x, y, loss)], 1)
        with torch.no_grad():
            losses = torch.stack([loss(model(x[i:i + 1]), y[i:i + 1]) for i in range(6)])
        before = torch.cat([p.detach().reshape(-1) for p in params])
        with inspector.step(x, y):
            loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=set_to_none)
        refs.append({"g": grads, "losses": losses,
                     "update": torch.cat([p.detach().reshape(-1) for p in params]) - before})
    inspector.close()
    assert not inspector.errors, inspector.errors[0]["traceback"]
    _, alphas = open_run(tmp_path / "r").scalar("alpha")
    np.testing.assert_allclose(alphas, [reference_alpha(refs[t], refs[t + 1]) for t in range(3)], rtol=RTOL,
                               atol=1e-9)


def test_effective_learning_rate_of_plain_sgd_is_its_learning_rate():
    from trainspect.functional.batch_tests import effective_learning_rate

    g = torch.randn(50, dtype=torch.float64)
    assert float(effective_learning_rate(g @ (-0.3 * g), g @ g)) == pytest.approx(0.3, rel=1e-12)


def test_schedule_interval_alpha_pairs(tmp_path):
    """With an interval, alpha runs at the scheduled step and the one after (two-step quantity)."""
    model, _, _, loss = problem("mlp", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector = trainspect.attach(model, opt, loss, run_dir=tmp_path / "sched", instruments="economy", schedule=3,
                                  checks=None, progress=False)
    for s in range(8):
        x, y = problem("mlp", 4, seed=s + 1)[1:3]
        opt.zero_grad()
        with inspector.step(x, y):
            loss(model(x), y).backward()
        opt.step()
    inspector.close()
    assert not inspector.errors
    run = open_run(tmp_path / "sched")
    assert list(run.scalar("alpha")[0]) == [1, 4, 7]
    assert list(run.scalar("norm_test")[0]) == [0, 3, 6]
