"""Update norms ‖θ_{t+1} − θ_t‖ per parameter: from SGD's own state where that is exact by construction (no copy
of θ_t), from a copy of θ_t otherwise; both against two parameter copies taken in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trainspect
from trainspect.store import open_run


def model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 3)).to(dtype)


def two_groups(lr: float, **kwargs):
    def build(net: nn.Module) -> torch.optim.Optimizer:
        first, rest = list(net[0].parameters()), [p for m in list(net)[1:] for p in m.parameters()]
        return torch.optim.SGD([{"params": first, "lr": 3 * lr, "momentum": 0.5}, {"params": rest}], lr=lr, **kwargs)
    return build


#: optimizers whose step is SGD's θ ← θ − lr·b with the momentum buffer b: norms from their state, θ_t not copied
BY_RULE = {
    "heavy-ball": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
    "dampened-decay": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.8, dampening=0.3,
                                                  weight_decay=1e-2),
    "maximize": lambda net: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, maximize=True),
    "single-tensor": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, foreach=False),
    "two-groups": two_groups(0.05, momentum=0.9),
}


class SignSGD(torch.optim.SGD):
    """A subclass that steps differently (θ ← θ − lr·sign(∇L)): the rule must not be trusted for it."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


#: optimizers where the rule does not hold or cannot be guaranteed: θ_t is copied
BY_COPY = {
    # without momentum the step uses ∇L as it is inside the step (after pre-hooks, closures, clipping)
    "sgd": lambda net: torch.optim.SGD(net.parameters(), lr=0.1),
    "sgd-maximize": lambda net: torch.optim.SGD(net.parameters(), lr=0.1, maximize=True),
    # the fused kernel does not bump the buffers' in-place versions
    "fused": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, fused=True),
    "nesterov": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    "decay-without-momentum": lambda net: torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2),
    "adam": lambda net: torch.optim.Adam(net.parameters(), lr=1e-2),
    "subclass": lambda net: SignSGD(net.parameters(), lr=0.05, momentum=0.9),
}


def _norm(t: torch.Tensor) -> float:
    return math.sqrt(float(t.double().square().sum()))


def run(build, run_dir, *, dtype=torch.float64, post_hook=None, drop_grad_of=None, steps=5):
    """Train ``steps`` steps with update_size every step; returns (expected, recorded) per-layer update norms and
    how often θ_t was copied."""
    net = model(dtype)
    optimizer = build(net)
    if post_hook is not None:
        optimizer.register_step_post_hook(post_hook)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, optimizer, loss_fn, run_dir=run_dir, instruments={"update_size": 1},
                                  checks=None, progress=False)
    copies = []
    snapshot = inspector.provider("params_before_update")
    real = snapshot.compute
    snapshot.compute = lambda ctx: copies.append(ctx.step) or real(ctx)
    gen = torch.Generator().manual_seed(1)
    expected = []
    for step in range(steps):
        x, y = torch.randn(16, 6, generator=gen, dtype=dtype), torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        with inspector.step(x, y):
            loss_fn(net(x), y).backward()
            if drop_grad_of is not None and step % 2 == 1:  # this parameter gets no gradient: SGD skips it
                drop_grad_of(net).grad = None
        before = [p.detach().clone() for p in net.parameters()]
        optimizer.step()
        expected.append([_norm(p.detach() - b) for p, b in zip(net.parameters(), before)])
    inspector.close()
    with open_run(run_dir) as stored:
        recorded = stored.series("layer_update_size").values
    return np.array(expected), recorded, copies


@pytest.mark.parametrize("name", sorted(BY_RULE))
def test_sgd_update_norms_come_from_its_state_and_equal_the_update_taken(name, tmp_path):
    expected, recorded, copies = run(BY_RULE[name], tmp_path / "r", drop_grad_of=lambda net: net[2].weight)
    assert copies == []  # θ_t was never copied
    assert (expected[1::2, 2] == 0).all()  # the parameter without gradient did not move ...
    np.testing.assert_allclose(recorded, expected, rtol=1e-9, atol=1e-300)  # ... and SGD's state says so too


@pytest.mark.parametrize("name", sorted(BY_COPY))
def test_other_optimizers_copy_the_parameters(name, tmp_path):
    expected, recorded, copies = run(BY_COPY[name], tmp_path / "r")
    assert copies == list(range(5))
    np.testing.assert_allclose(recorded, expected, rtol=1e-9)


def test_a_post_hook_that_moves_the_parameters_disables_the_rule(tmp_path):
    def clamp(optimizer, args, kwargs):  # e.g. a weight constraint applied after every step
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.clamp_(-0.05, 0.05)

    expected, recorded, copies = run(BY_RULE["heavy-ball"], tmp_path / "r", post_hook=clamp)
    assert copies == list(range(5))
    np.testing.assert_allclose(recorded, expected, rtol=1e-9)


def test_float32_rule_matches_the_rounded_update(tmp_path):
    """In float32 θ_{t+1} is rounded: the update taken differs from SGD's −lr·b by ulp(θ)/2 per entry."""
    expected, recorded, copies = run(BY_RULE["heavy-ball"], tmp_path / "r", dtype=torch.float32)
    assert copies == []
    np.testing.assert_allclose(recorded, expected, rtol=1e-4)


def test_rule_gives_way_to_the_update_tensor_when_that_is_computed_anyway(tmp_path):
    """With alpha-like consumers of the update tensor due, the norms are those of the tensor (no second rule)."""
    net = model()
    optimizer = BY_RULE["heavy-ball"](net)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, optimizer, loss_fn, store=False, instruments={"update_size": 1},
                                  checks=None, progress=False)
    provider = inspector.provider("update_norms")
    seen = []
    real = provider.before_update
    provider.before_update = lambda ctx: real(ctx) or seen.append(provider._rule is not None)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    for needed in (False, True):
        optimizer.zero_grad()
        with inspector.step(x, y) as step:
            if needed:
                step.ctx.needed_providers = {*step.ctx.needed_providers, "update"}
            loss_fn(net(x), y).backward()
        optimizer.step()
    inspector.close()
    assert seen == [True, False]


@pytest.mark.parametrize("how", ["closure", "zeroed-to-none", "zeroed-in-place"])
@pytest.mark.parametrize("name", ["heavy-ball", "two-groups"])
def test_gradients_made_in_a_closure_or_zeroed_after_the_step(name, how, tmp_path):
    """``optimizer.step(closure)``: the gradients do not exist yet when the step begins (Lightning's way).
    ``zero_grad()`` inside the block right after the step: the update phase runs at the block's exit, after the
    gradients are gone. The rule reads the step's effect off the momentum buffers, so neither matters."""
    net = model()
    optimizer = BY_RULE[name](net)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(net, optimizer, loss_fn, run_dir=tmp_path / "r", instruments={"update_size": 1},
                                  checks=None, progress=False)
    gen = torch.Generator().manual_seed(1)
    expected = []
    for _ in range(4):
        x, y = torch.randn(16, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen)
        before = [p.detach().clone() for p in net.parameters()]

        def closure(x=x, y=y):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            return loss

        with inspector.step(x, y):
            if how == "closure":
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
                optimizer.zero_grad(set_to_none=how == "zeroed-to-none")
        expected.append([_norm(p.detach() - b) for p, b in zip(net.parameters(), before)])
    inspector.close()
    with open_run(tmp_path / "r") as stored:
        np.testing.assert_allclose(stored.series("layer_update_size").values, np.array(expected), rtol=1e-9)
