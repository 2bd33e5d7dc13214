"""Tiny float64 models with dense Hessian references (``torch.func.hessian``), shared by the curvature tests."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainspect.functional.hvp import flatten, unflatten
from trainspect.functional.model_loss import call_model


class TinyAttention(nn.Module):
    """One self-attention block + mean-pool + linear head: a transformer in miniature."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)
        h = self.norm(x + h)
        return self.head(h.mean(1))


def make_case(name: str, seed: int = 0):
    """(model, loss_fn, inputs, targets) in float64."""
    torch.manual_seed(seed)
    if name == "mlp_tanh_ce":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        loss = nn.CrossEntropyLoss()
    elif name == "mlp_relu_mse":
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
        x, y = torch.randn(7, 4), torch.randn(7, 2)
        loss = nn.MSELoss()
    elif name == "cnn_ce":
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
        x, y = torch.randn(6, 1, 5, 5), torch.randint(0, 3, (6,))
        loss = nn.CrossEntropyLoss()
    elif name == "attention_ce":
        model = TinyAttention()
        x, y = torch.randn(5, 3, 4), torch.randint(0, 3, (5,))
        loss = nn.CrossEntropyLoss(reduction="sum")
    else:  # pragma: no cover
        raise KeyError(name)
    model = model.double()
    return model, loss, x.double(), (y.double() if y.is_floating_point() else y)


CASES = ("mlp_tanh_ce", "mlp_relu_mse", "cnn_ce", "attention_ce")


def dense_hessian(model, loss_fn, x, y, vectorize: bool = False) -> torch.Tensor:
    """∇²L over all trainable parameters (flattened, named_parameters order), dense, by torch.func."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]

    def f(flat):
        state = dict(zip(names, unflatten(flat, shapes)))
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels are not twice differentiable
            return loss_fn(call_model(model, state, x), y)

    # Row by row with plain autograd (no vmap) by default: torch.func.hessian needs forward-mode AD, which CPU
    # attention lacks, and jacrev(jacrev) disagrees with finite differences on LayerNorm weights in torch
    # 2.13; `vectorize=True` (vmap over rows) is much faster for models without LayerNorm/attention.
    return torch.autograd.functional.hessian(f, flatten(params), vectorize=vectorize)


def dense_ggn(model, loss_fn, x, y) -> torch.Tensor:
    """Jᵀ H_f J from the dense Jacobian of the output and the dense Hessian of the loss in the output."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]

    def out(flat):
        with sdpa_kernel(SDPBackend.MATH):
            return call_model(model, dict(zip(names, unflatten(flat, shapes))), x)

    flat = flatten(params)
    f = out(flat)
    J = torch.func.jacrev(out)(flat).reshape(f.numel(), -1)
    Hf = torch.func.hessian(lambda o: loss_fn(o.reshape(f.shape), y))(f.reshape(-1))
    return J.T @ Hf @ J


@functools.cache
def case_hessian(name: str) -> torch.Tensor:
    """The dense Hessian of ``make_case(name)``, computed once per test session (it is the slow part)."""
    return dense_hessian(*make_case(name))
