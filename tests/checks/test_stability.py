import torch
from torch import nn

from trainspect.checks.stability import StabilityCheck


def feed(series, ctx):
    from trainspect.engine.record import StepRecord

    check = StabilityCheck()
    out = []
    for step in range(6):
        r = StepRecord(step, 0.0, 0.0, 0.0, True)
        r.scalars.update(series)
        out += check.observe(r, ctx)
    return {f.code for f in out}


def sgd(lr, momentum=0.0):
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr, momentum=momentum)


def test_sharpness_past_two_over_lr(ctx_factory):
    assert feed({"hessian_max_eigenvalue": 25.0}, ctx_factory([(2, 2)], optimizer=sgd(0.1))) == \
        {"lr-past-stability-edge"}  # 0.1 · 25 = 2.5 > 2


def test_near_miss_momentum_moves_the_edge(ctx_factory):
    # with momentum 0.9 the edge is 2(1 + 0.9) = 3.8 > 2.5
    assert not feed({"hessian_max_eigenvalue": 25.0}, ctx_factory([(2, 2)], optimizer=sgd(0.1, 0.9)))
    assert not feed({"hessian_max_eigenvalue": 15.0}, ctx_factory([(2, 2)], optimizer=sgd(0.1)))


def test_alpha_overshooting(ctx_factory):
    assert feed({"alpha": 1.4}, ctx_factory([(2, 2)])) == {"lr-past-stability-edge"}
    assert not feed({"alpha": 0.3}, ctx_factory([(2, 2)]))


def test_norm_test_calls_for_a_larger_batch(ctx_factory):
    assert feed({"norm_test": 3.0}, ctx_factory([(2, 2)])) == {"batch-too-small"}
    assert not feed({"norm_test": 0.5}, ctx_factory([(2, 2)]))


def test_silent_without_the_series(ctx_factory):
    assert not feed({"loss": 1.0}, ctx_factory([(2, 2)], optimizer=sgd(0.1)))
