import math

import torch
from torch import nn

from trainspect.checks.validation import ValidationAtChanceCheck


def run(val_accs, train_end, ctx_factory, make_record):
    found = []
    ctx = ctx_factory([(2, 2)], loss_fn=nn.CrossEntropyLoss(), model_output=torch.zeros(4, 10))
    ctx.inspector.add_finding = lambda f, s: found.append(f)
    check = ValidationAtChanceCheck()
    losses = list(torch.linspace(math.log(10), train_end, 100))
    for k, acc in enumerate(val_accs):
        for step in range(50 * k, 50 * k + 50):
            check.observe(make_record(step, {"loss": float(losses[min(step, 99)])}), ctx)
        check.observe_user_values(make_record(50 * k + 49, {"val_accuracy": acc}))
    return found


def test_memorising_with_validation_at_chance(ctx_factory, make_record):
    found = run([0.11, 0.09, 0.12], 1.2, ctx_factory, make_record)
    assert found and found[0].code == "labels-not-learnable"
    assert found[0].evidence["chance"] == 0.1


def test_near_miss_validation_above_chance(ctx_factory, make_record):
    assert not run([0.3, 0.5, 0.7], 1.2, ctx_factory, make_record)


def test_near_miss_train_loss_not_falling(ctx_factory, make_record):
    assert not run([0.1, 0.1, 0.1], math.log(10), ctx_factory, make_record)
