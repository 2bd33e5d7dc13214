import copy

import pytest
import torch
from torch import nn

import trainspect


class Scale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by 2 in backward (an injected backward bug)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class BadBackward(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(Scale.apply(x))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(10, 8, generator=g), torch.randint(0, 3, (10,), generator=g)


def test_identical_copies_agree(batch):
    a = net()
    r = trainspect.compare(a, copy.deepcopy(a), *batch)
    assert r.same and not r.findings
    assert len(r.pairs) == 7


@pytest.mark.parametrize("layer", ["2", "4"])
def test_forward_difference_is_found_in_the_chosen_layer(batch, layer):
    a = net()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.get_submodule(layer).weight[0, 0] += 1e-2
    r = trainspect.compare(a, b, *batch)
    assert r.pairs[r.first_forward].name_a == layer
    # every layer before it agrees, and the reported difference matches a direct computation
    assert all(d.forward_rel <= 1e-6 for d in r.pairs[:r.first_forward])
    xa = a[: int(layer) + 1](batch[0])
    xb = b[: int(layer) + 1](batch[0])
    assert abs(r.pairs[r.first_forward].forward_rel - float((xa - xb).norm() / max(xa.norm(), xb.norm()))) < 1e-6
    assert next(f.code for f in r.findings) == "forward-mismatch"


def test_backward_difference_is_found_in_the_chosen_layer(batch):
    a = net()
    b = copy.deepcopy(a)
    b[4] = BadBackward(b[4])  # same forward, wrong backward inside layer 4
    r = trainspect.compare(a, b, *batch, pair_by="order")
    assert r.first_forward is None
    assert r.first_backward == 4  # the layer whose backward introduces the difference
    assert r.pairs[r.first_backward_output].name_a == "3"  # gradient w.r.t. layer 3's output differs (×2)
    assert abs(r.pairs[3].backward_rel - 0.5) < 1e-6  # ‖2g − g‖ / ‖2g‖
    assert "backward-mismatch" in [f.code for f in r.findings]


def test_mapping_pairs_renamed_layers(batch):
    a = net()
    b = nn.Sequential()
    for name, mod in copy.deepcopy(a).named_children():
        b.add_module(f"layer{name}", mod)
    with pytest.raises(ValueError, match="no layer names match"):
        trainspect.compare(a, b, *batch)
    r = trainspect.compare(a, b, *batch, mapping={str(i): f"layer{i}" for i in range(7)})
    assert r.same and len(r.pairs) == 7
