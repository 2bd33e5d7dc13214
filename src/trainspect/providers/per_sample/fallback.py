"""The general path: per-sample gradients of any parameters with ``torch.func`` (vmap of grad).

For parameters without a fast path (``nn.MultiheadAttention``'s projections, which it applies
functionally, GRU/LSTM weights, custom modules' own parameters, tied weights), the user's model and loss
are re-evaluated on each sample alone, as a pure function of those parameters
(:func:`trainspect.functional.model_loss.make_loss_function`):

    g_i = ∇_θ ℓ_i(θ),   ℓ_i(θ) = loss_fn(model(θ; x_i[None]), y_i[None])

which is the gradient of sample i's own loss for both ``reduction="mean"`` and ``"sum"`` (a batch of one).
Samples are processed ``chunk`` at a time (``vmap(grad(ℓ))``) so that the [chunk, D] block of per-sample
gradients stays under a memory cap. If ``vmap`` cannot trace the model (some fused kernels, e.g.
``nn.GRU``, have no batching rule for a per-sample hidden state), it warns once and loops over samples.

Documented differences to the real step: random layers (dropout) draw fresh masks
(``randomness="different"``), and the model must treat samples independently (no BatchNorm in training
mode; the provider warns about that).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap
from torch.utils._pytree import tree_map

from trainspect.functional.model_loss import make_loss_function
from trainspect.providers.per_sample.layer import DEFAULT_MEMORY_CAP, ExplicitLayer


def _batch_size(tree: Any) -> int | None:
    sizes: list[int] = []
    tree_map(lambda t: sizes.append(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() > 0 else None, tree)
    return sizes[0] if sizes else None


def _slice(tree: Any, start: int, stop: int) -> Any:
    return tree_map(lambda t: t[start:stop] if isinstance(t, torch.Tensor) and t.dim() > 0 else t, tree)


def _unsqueeze(tree: Any) -> Any:
    return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, tree)


class FunctionalPerSampleGradients:
    """Per-sample gradients of some parameters of ``model`` by re-evaluating ``loss_fn`` sample by sample.

    Args:
        model, loss_fn: the user's model and loss.
        names: dotted names of the parameters (as in ``model.named_parameters()``).
        memory_cap: bytes for one [chunk, D] block of per-sample gradients (activations come on top).
    """

    _loop_warned = False

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor], names: list[str],
                 memory_cap: int = DEFAULT_MEMORY_CAP):
        self.model = model
        self.names = names
        self.memory_cap = memory_cap
        loss = make_loss_function(model, loss_fn, names)

        def per_sample_loss(values: tuple[torch.Tensor, ...], x: Any, y: Any) -> torch.Tensor:
            return loss(values, _unsqueeze(x), _unsqueeze(y))

        self.per_sample_loss = per_sample_loss
        self.per_sample_grad = grad(per_sample_loss)
        self.use_vmap = True

    def chunks(self, values: tuple[torch.Tensor, ...], inputs: Any, targets: Any) -> Iterator[list[torch.Tensor]]:
        """Yield lists (one tensor per parameter) of [n_c, *shape] per-sample gradients at ``values``."""
        n = _batch_size(inputs)
        if n is None:
            raise ValueError("the torch.func fallback needs the batch's inputs: pass them to inspector.step(x, y)")
        numel = sum(v.numel() * v.element_size() for v in values)
        chunk = max(1, min(n, self.memory_cap // max(4 * numel, 1)))
        y_dims = None if targets is None else 0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x, y = _slice(inputs, start, stop), _slice(targets, start, stop)
            if self.use_vmap:
                try:
                    out = vmap(self.per_sample_grad, in_dims=(None, 0, y_dims), randomness="different")(values, x, y)
                    yield [o.detach() for o in out]
                    continue
                except Exception as error:  # no batching rule (e.g. GRU): loop over samples instead
                    self.use_vmap = False
                    if not FunctionalPerSampleGradients._loop_warned:
                        FunctionalPerSampleGradients._loop_warned = True
                        warnings.warn(
                            f"trainspect: torch.func.vmap cannot batch this model ({type(error).__name__}: "
                            f"{str(error)[:200]}); per-sample gradients of {len(self.names)} parameter(s) without "
                            "a fast path are computed one sample at a time (slower, same values)",
                            RuntimeWarning, stacklevel=2,
                        )
            rows = []
            for i in range(stop - start):
                xi = _slice(x, i, i + 1)
                yi = None if y is None else _slice(y, i, i + 1)
                rows.append(self.per_sample_grad(values, tree_map(_squeeze0, xi), tree_map(_squeeze0, yi)))
            yield [torch.stack([r[p] for r in rows]).detach() for p in range(len(values))]


def _squeeze0(t: Any) -> Any:
    return t.squeeze(0) if isinstance(t, torch.Tensor) and t.dim() > 0 else t


def fallback_layer(
    engine: FunctionalPerSampleGradients,
    indices: list[int],
    values: tuple[torch.Tensor, ...],
    inputs: Any,
    targets: Any,
    batch_size: int,
) -> ExplicitLayer:
    """An :class:`ExplicitLayer` over the fallback parameters: kept if they fit the memory cap, else recomputed."""
    shapes = [v.shape for v in values]
    total = batch_size * sum(v.numel() * v.element_size() for v in values)
    if total <= engine.memory_cap:
        blocks = list(engine.chunks(values, inputs, targets))
        grads = [torch.cat([b[p] for b in blocks]) for p in range(len(values))]
        return ExplicitLayer(indices, shapes, batch_size, grads=grads)
    return ExplicitLayer(indices, shapes, batch_size, chunk_fn=lambda: engine.chunks(values, inputs, targets))
