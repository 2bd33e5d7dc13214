"""Layer-by-layer comparison of two implementations of the same network on the same batch.

    result = trainspect.compare(port, reference, inputs, targets, loss_fn=nn.CrossEntropyLoss())
    print(result)                 # first layer whose outputs differ; walking back from the loss, first
                                  # layer whose gradients differ; a table of every pair

Use it for a hand-written port against a framework model, eager against ``torch.compile``, float32
against mixed precision, before against after a refactor. Layers are the *leaf* modules that run in the
forward pass, paired by qualified name (``pair_by="name"``), by execution order (``"order"``), or by a
``mapping`` {name in A: name in B}. Outputs are compared with the relative difference
``‖a − b‖ / max(‖a‖, ‖b‖)`` against ``rtol`` (and ``atol`` on the absolute difference, for outputs near
0); gradients are ∂L/∂(layer output), obtained with ``torch.autograd.grad`` so no ``.grad`` is touched.
Both models run in eval mode unless ``train_mode=True`` (then with the same random seed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainspect.checks.base import Finding

__all__ = ["CompareResult", "LayerDiff", "compare"]


@dataclass
class LayerDiff:
    """One pair of layers: names, classes, and the forward and backward differences."""

    name_a: str
    name_b: str
    class_a: str
    class_b: str
    forward_rel: float = float("nan")
    forward_abs: float = float("nan")
    backward_rel: float = float("nan")
    backward_abs: float = float("nan")
    shape_a: tuple[int, ...] = ()
    shape_b: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        same = self.name_a == self.name_b
        if same:
            return f"{self.name_a} ({self.class_a})"
        return f"{self.name_a} ({self.class_a}) ↔ {self.name_b} ({self.class_b})"


@dataclass
class CompareResult:
    """``pairs`` in forward execution order; indices into it (or None):

    * ``first_forward``: the first layer whose output differs;
    * ``first_backward_output``: walking back from the loss, the first layer whose *output gradient* differs;
    * ``first_backward``: the layer whose backward introduced that difference (the next one in forward
      order: the gradient w.r.t. its output agrees, w.r.t. its input it does not); the last layer itself
      if the gradient of the loss w.r.t. the model's output already differs.
    """

    pairs: list[LayerDiff] = field(default_factory=list)
    first_forward: int | None = None
    first_backward: int | None = None
    first_backward_output: int | None = None
    loss_a: float = float("nan")
    loss_b: float = float("nan")
    unpaired_a: list[str] = field(default_factory=list)
    unpaired_b: list[str] = field(default_factory=list)
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def same(self) -> bool:
        return self.first_forward is None and self.first_backward is None

    @property
    def findings(self) -> list[Finding]:
        out = []
        if self.first_forward is not None:
            d = self.pairs[self.first_forward]
            out.append(Finding(
                code="forward-mismatch", severity="error",
                title=f"Outputs first differ at {d.label}: relative difference {d.forward_rel:.3g}",
                explanation=("Every earlier layer agrees within tolerance, so the difference is introduced by this "
                             "layer (its parameters, its computation, or the way its input is arranged)."),
                evidence={"relative": d.forward_rel, "absolute": d.forward_abs, "rtol": self.rtol, "atol": self.atol,
                          "shape_a": d.shape_a, "shape_b": d.shape_b},
                remedies=("Compare the two layers' weights (transposed? different eps/momentum/bias?) and their "
                          "hyper-parameters (padding, stride, activation approximation, normalisation axis).",),
                location=d.label,
            ))
        if self.first_backward is not None:
            d = self.pairs[self.first_backward]
            out.append(Finding(
                code="backward-mismatch", severity="error",
                title=f"Walking back from the loss, gradients first differ in the backward of {d.label}",
                explanation=("The gradient with respect to this layer's output agrees between the implementations, "
                             "the gradient with respect to its input does not: its backward computation differs."),
                evidence={"input_gradient_relative": self.pairs[self.first_backward_output].backward_rel
                          if self.first_backward_output is not None else None,
                          "output_gradient_relative": d.backward_rel, "rtol": self.rtol},
                remedies=("Check custom backward functions, detached tensors and in-place operations in the layer "
                          "after this one.",),
                location=d.label,
            ))
        return out

    def __str__(self) -> str:
        lines = [f"loss A {self.loss_a:.6g}, loss B {self.loss_b:.6g}; "
                 f"tolerance rtol {self.rtol:g}, atol {self.atol:g}"]
        lines.append(f"{'layer':50s} {'forward rel':>12s} {'backward rel':>13s}")
        for i, d in enumerate(self.pairs):
            mark = " <- first forward difference" if i == self.first_forward else ""
            mark += " <- backward introduces the difference" if i == self.first_backward else ""
            lines.append(f"{d.label[:50]:50s} {d.forward_rel:12.3g} {d.backward_rel:13.3g}{mark}")
        if self.unpaired_a or self.unpaired_b:
            lines.append(f"unpaired: A {self.unpaired_a}, B {self.unpaired_b}")
        lines.append("same within tolerance" if self.same else "\n".join(f.title for f in self.findings))
        return "\n".join(lines)


Records = list[tuple[str, nn.Module, torch.Tensor]]


def _record(model: nn.Module, inputs: Any, seed: int, train_mode: bool) -> tuple[Records, Any]:
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            t = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) and out
                                                          and isinstance(out[0], torch.Tensor) else None)
            if t is not None and t.is_floating_point():
                records.append((name, mod, t))

        return hook

    for name, mod in model.named_modules():
        if not any(True for _ in mod.children()):
            handles.append(mod.register_forward_hook(hook_for(name)))
    try:
        model.train(train_mode)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            if isinstance(inputs, (list, tuple)):
                out = model(*inputs)
            elif isinstance(inputs, dict):
                out = model(**inputs)
            else:
                out = model(inputs)
    finally:
        for h in handles:
            h.remove()
    return records, out


def _diff(a: torch.Tensor | None, b: torch.Tensor | None) -> tuple[float, float]:
    if a is None or b is None:
        return (0.0, 0.0) if a is None and b is None else (float("inf"), float("inf"))
    if a.shape != b.shape:
        if a.numel() != b.numel():
            return float("inf"), float("inf")
        b = b.reshape(a.shape)
    a64, b64 = a.detach().double(), b.detach().double().to(a.device)
    diff = float((a64 - b64).norm())
    scale = max(float(a64.norm()), float(b64.norm()))
    return (diff / scale if scale > 0 else 0.0), float((a64 - b64).abs().max()) if a64.numel() else 0.0


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Any,
    targets: Any = None,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    pair_by: str = "name",
    mapping: Mapping[str, str] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    train_mode: bool = False,
    seed: int = 0,
) -> CompareResult:
    """Run both models on the same batch and find where they first differ, forward and backward.

    Args:
        model_a, model_b: the two implementations (deep-copied; the originals are not touched).
        inputs, targets: one batch; ``inputs_b`` may differ in layout only if the models' first layers take it.
        loss_fn: ``loss_fn(output, targets)``; default: cross-entropy for integer targets, MSE otherwise,
            and the sum of the outputs when ``targets`` is None.
        pair_by: ``"name"`` (qualified module names) or ``"order"`` (leaf modules in execution order).
        mapping: explicit pairs ``{name in A: name in B}`` (overrides ``pair_by`` for those names).
        rtol, atol: a pair differs when relative difference > rtol and max absolute difference > atol.
        train_mode: run in training mode (dropout, batch statistics) with the same seed for both.

    Returns:
        :class:`CompareResult` (``print`` it; ``.findings`` gives ``forward-mismatch``/``backward-mismatch``).
    """
    if pair_by not in ("name", "order"):
        raise ValueError(f"compare: pair_by must be 'name' or 'order', got {pair_by!r}")
    a, b = copy.deepcopy(model_a), copy.deepcopy(model_b)
    rec_a, out_a = _record(a, inputs, seed, train_mode)
    rec_b, out_b = _record(b, inputs, seed, train_mode)
    if loss_fn is None:
        if targets is None:
            def loss_fn(out: Any, _: Any) -> torch.Tensor:
                return out.sum()
        elif isinstance(targets, torch.Tensor) and not targets.is_floating_point():
            loss_fn = nn.CrossEntropyLoss()
        else:
            loss_fn = nn.MSELoss()
    loss_a, loss_b = loss_fn(out_a, targets), loss_fn(out_b, targets)

    # pair layers (first call of each module; later calls of a reused module are paired by order among them)
    def keyed(records: list[tuple[str, nn.Module, torch.Tensor]]) -> dict[str, tuple[nn.Module, torch.Tensor]]:
        seen: dict[str, int] = {}
        out = {}
        for name, mod, t in records:
            k = seen[name] = seen.get(name, 0) + 1
            out[name if k == 1 else f"{name}#{k}"] = (mod, t)
        return out

    ka, kb = keyed(rec_a), keyed(rec_b)
    names_a, names_b = list(ka), list(kb)
    pairs: list[tuple[str, str]] = []
    mapping = dict(mapping or {})
    if pair_by == "order" and not mapping:
        pairs = list(zip(names_a, names_b))
        unpaired_a, unpaired_b = names_a[len(pairs):], names_b[len(pairs):]
    else:
        for n in names_a:
            m = mapping.get(n, n)
            if m in kb:
                pairs.append((n, m))
        used_b = {m for _, m in pairs}
        unpaired_a = [n for n in names_a if n not in {p for p, _ in pairs}]
        unpaired_b = [n for n in names_b if n not in used_b]
        if not pairs:
            raise ValueError(
                "compare: no layer names match between the two models; use pair_by='order' or give mapping="
                f"{{name in A: name in B}}. A: {names_a[:8]}..., B: {names_b[:8]}..."
            )
    # gradients of the loss w.r.t. every paired output
    ta = [ka[n][1] for n, _ in pairs]
    tb = [kb[m][1] for _, m in pairs]
    ga = _grads(loss_a, ta)
    gb = _grads(loss_b, tb)
    result = CompareResult(loss_a=float(loss_a.detach()), loss_b=float(loss_b.detach()), unpaired_a=unpaired_a,
                           unpaired_b=unpaired_b,
                           rtol=rtol, atol=atol)
    for k, (n, m) in enumerate(pairs):
        fr, fa = _diff(ta[k], tb[k])
        br, ba = _diff(ga[k], gb[k])
        result.pairs.append(LayerDiff(n, m, type(ka[n][0]).__name__, type(kb[m][0]).__name__, fr, fa, br, ba,
                                      tuple(ta[k].shape), tuple(tb[k].shape)))

    def differs(rel: float, ab: float) -> bool:
        return rel > rtol and ab > atol

    result.first_forward = next((k for k, d in enumerate(result.pairs) if differs(d.forward_rel, d.forward_abs)), None)
    # walking back from the loss: the last layer (in forward order) whose output-gradient differs; the layer
    # after it is the one whose backward introduced the difference (its output-gradient still agrees)
    last_bad = next((k for k in range(len(result.pairs) - 1, -1, -1)
                     if differs(result.pairs[k].backward_rel, result.pairs[k].backward_abs)), None)
    result.first_backward_output = last_bad
    if last_bad is not None:
        result.first_backward = last_bad + 1 if last_bad + 1 < len(result.pairs) else last_bad
    return result


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    need = [i for i, t in enumerate(tensors) if t.requires_grad]
    out: list[torch.Tensor | None] = [None] * len(tensors)
    if not need or not loss.requires_grad:
        return out
    grads = torch.autograd.grad(loss, [tensors[i] for i in need], allow_unused=True, retain_graph=True)
    for i, g in zip(need, grads):
        out[i] = g
    return out
