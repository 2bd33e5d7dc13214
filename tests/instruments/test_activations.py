"""The activations instrument's per-unit verdicts and fractions against a direct computation on the outputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import trainspect
from tests.conftest import train
from trainspect.checks import Check
from trainspect.instruments.activations import DEAD_ACTIVE_FRACTION, SATURATED_ENTRY_FRACTION


class Keep(Check):
    """Keeps what the activations instrument hands to the checks (a deferrable check, as the real one)."""

    deferrable = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, dict, list]] = []

    def observe(self, record, ctx):
        if "activation_units" in ctx.extras:
            self.seen.append((ctx.step, ctx.extras["activation_fractions"], ctx.extras["activation_units"]))
        return []


def test_dead_and_saturated_units_match_the_outputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 3))
    with torch.no_grad():
        model[0].bias[:25].fill_(-6.0)  # most of the first layer's units dead
        model[2].bias[:20].fill_(8.0)  # most of the tanh units saturated
    keep = Keep()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=tmp_path / "r", progress=False,
                                  instruments={"activations": 1}, checks=[keep])
    outputs: dict[str, list[torch.Tensor]] = {"1": [], "3": []}
    for name in outputs:
        model.get_submodule(name).register_forward_hook(
            lambda m, a, o, name=name: outputs[name].append((o if name == "1" else a[0]).detach().clone()))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 6, generator=gen), torch.randint(0, 3, (64,), generator=gen)) for _ in range(4)]
    train(inspector, model, optimizer, loss_fn, data)
    inspector.close()
    assert not inspector.errors and [s for s, _, _ in keep.seen] == [0, 1, 2, 3]
    for step, fractions, units in keep.seen:
        relu, tanh = units
        active = (outputs["1"][step] > 0).double().mean(0).numpy()
        saturated = (outputs["3"][step].abs() > 3.0).double().mean(0).numpy()
        np.testing.assert_array_equal(relu.bad.numpy(), active < DEAD_ACTIVE_FRACTION)
        np.testing.assert_array_equal(tanh.bad.numpy(), saturated >= SATURATED_ENTRY_FRACTION)
        assert (relu.kind, tanh.kind, tanh.threshold) == ("rectifier", "squashing", 3.0)
        assert fractions == {"dead_units:1": float(np.mean(active < DEAD_ACTIVE_FRACTION)),
                             "saturated_units:3": float(np.mean(saturated >= SATURATED_ENTRY_FRACTION))}
        assert fractions["dead_units:1"] >= 0.5 and fractions["saturated_units:3"] >= 0.5
