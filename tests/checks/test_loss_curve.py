import numpy as np

from trainspect.checks.loss_curve import LossCurveCheck


def feed(losses, ctx_factory, make_record):
    ctx = ctx_factory([(2, 2)])
    check = LossCurveCheck()
    out = []
    for step, v in enumerate(losses):
        out += check.observe(make_record(step, {"loss": float(v)}), ctx)
    return {f.code for f in out}


rng = np.random.default_rng(0)


def healthy(n=200):
    return 2.3 * np.exp(-np.arange(n) / 40) + 0.05 + 0.05 * rng.random(n)


def test_rising_loss_diverges(ctx_factory, make_record):
    losses = np.concatenate([np.full(5, 2.3), np.linspace(2.3, 10, 20)])
    assert "loss-divergence" in feed(losses, ctx_factory, make_record)


def test_rebound_after_progress_diverges(ctx_factory, make_record):
    losses = np.concatenate([healthy(100), np.full(20, 1.6)])  # from ~0.1 back up to 1.6
    assert "loss-divergence" in feed(losses, ctx_factory, make_record)


def test_near_miss_noisy_healthy_curve(ctx_factory, make_record):
    assert not feed(healthy(), ctx_factory, make_record)


def test_flat_loss_is_a_plateau(ctx_factory, make_record):
    losses = 2.3 + 0.02 * rng.standard_normal(120)
    assert feed(losses, ctx_factory, make_record) == {"loss-plateau"}


def test_near_miss_slow_but_real_progress(ctx_factory, make_record):
    losses = 2.3 * (1 - np.arange(120) / 1000) - 0.05 * np.arange(120) / 120  # ~15 % down after 120 steps
    assert not feed(losses, ctx_factory, make_record)


def test_bouncing_loss_oscillates(ctx_factory, make_record):
    losses = np.concatenate([np.full(10, 2.3), np.tile([0.5, 2.0], 30)])
    assert "loss-oscillation" in feed(losses, ctx_factory, make_record)


def test_near_miss_small_bounces(ctx_factory, make_record):
    losses = np.concatenate([np.full(10, 2.3), np.tile([0.4, 0.9], 30)])  # swings < 0.5 × L0
    assert "loss-oscillation" not in feed(losses, ctx_factory, make_record)
