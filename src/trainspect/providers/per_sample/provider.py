"""The per-sample gradient providers: capture on due steps, per-layer handlers, all-reduced statistics.

* ``per_sample_layers``: plans once which parameters have a fast path (Linear, Conv1d/2d, Embedding,
  LayerNorm/GroupNorm/BatchNorm affine) and which go to the ``torch.func`` fallback; on due steps it
  installs the capture hooks (``arm``/``disarm``) and builds one handler per layer (see :mod:`.layer`).
* ``per_sample_grads``: the sufficient statistics of the step (:class:`.PerSampleGradStats`), as sums
  all-reduced across processes; only the quantities some due instrument asks for (its
  ``per_sample_quantities``) are computed.
* ``per_sample_losses``: the per-sample losses ℓ_i (for Alpha's loss variance).
* :func:`project_per_sample`: projections g_iᵀd onto directions known only later (the update), from the
  same captured tensors, without per-sample gradients where a fast path exists.

Scaling: a hook sees δ = ∂L/∂output. With ``reduction="mean"`` (L = (1/N) Σ ℓ_i) the per-sample
gradient is g_i = N·δ_i a_iᵀ (Cockpit/BackPACK instead report δ_i a_iᵀ = g_i/N and rescale in each
quantity); with ``"sum"`` it is δ_i a_iᵀ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainspect.engine.distributed import all_reduce_sum, world_size
from trainspect.providers.base import Provider

# fast paths register themselves on import
from trainspect.providers.per_sample import conv, embedding, linear, norm  # noqa: F401
from trainspect.providers.per_sample.capture import LayerCapture
from trainspect.providers.per_sample.fallback import FunctionalPerSampleGradients, fallback_layer
from trainspect.providers.per_sample.layer import (
    DEFAULT_MEMORY_CAP,
    LayerStatistics,
    OuterPositions,
    Workspace,
    draw_outer_positions,
    gather_outer_elements,
    outer_shapes,
)
from trainspect.providers.per_sample.norm import BATCH_NORMS
from trainspect.providers.per_sample.registry import find_fast_path
from trainspect.providers.per_sample.stats import GradientElementSample, PerSampleGradStats

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.inspector import Inspector

#: quantities an instrument can ask for with ``per_sample_quantities``
QUANTITIES = ("sum_grads", "sum_grads_squared", "proj_mean", "elements", "element_params", "layer_elements")


class ZeroLayer(LayerStatistics):
    """Parameters of a fast-path module that did not take part in this step's loss: g_i = 0."""

    def __init__(self, param_indices: list[int], shapes: list[torch.Size], batch_size: int,
                 dtype: torch.dtype, device: torch.device):
        self.param_indices, self.shapes, self.batch_size = param_indices, shapes, batch_size
        self.dtype, self.device = dtype, device

    def sum_grads(self) -> list[torch.Tensor]:
        return [torch.zeros(s, dtype=self.dtype, device=self.device) for s in self.shapes]

    def sq_norms(self) -> torch.Tensor:
        return torch.zeros(self.batch_size, len(self.shapes), dtype=self.dtype, device=self.device)

    def sum_grads_squared(self) -> list[torch.Tensor]:
        return self.sum_grads()

    def project(self, directions: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.zeros(self.batch_size, len(self.shapes), len(directions), dtype=self.dtype, device=self.device)

    def elements(self, local: int, samples: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return torch.zeros(samples.shape[0], dtype=self.dtype, device=self.device)

    def chunks(self, local: int):
        yield torch.zeros(self.batch_size, *self.shapes[local], dtype=self.dtype, device=self.device)


@dataclass
class PerSampleLayers:
    """This step's per-layer handlers (every tracked parameter is covered by exactly one)."""

    handlers: list[LayerStatistics]
    batch_size: int
    fallback_params: list[str] = field(default_factory=list)
    ill_defined: list[str] = field(default_factory=list)


class PerSampleLayerProvider(Provider):
    """Capture hooks and per-layer handlers of the per-sample gradients (see the module docstring).

    Class attributes (set before ``attach`` to change): ``memory_cap`` (bytes for one materialized block
    of per-sample gradients).
    """

    name = "per_sample_layers"
    memory_cap: int = DEFAULT_MEMORY_CAP

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        model = inspector.model
        self.index_of = {id(p): i for i, p in enumerate(inspector.params)}
        owners: dict[int, dict[int, tuple[str, nn.Module]]] = {}
        for mname, module in model.named_modules(remove_duplicate=False):
            for p in module.parameters(recurse=False):
                if id(p) in self.index_of:
                    owners.setdefault(id(p), {}).setdefault(id(module), (mname, module))
        inside_mha = {
            id(sub) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for sub in m.modules()
        }
        self.fast_modules: dict[str, nn.Module] = {}
        self.fast_params: dict[str, list[int]] = {}
        fallback: list[int] = []
        self.fallback_reasons: dict[str, str] = {}
        for i, p in enumerate(inspector.params):
            mods = owners.get(id(p), {})
            if len(mods) != 1:
                fallback.append(i)
                self.fallback_reasons[inspector.param_names[i]] = "shared by several modules (tied weights)"
                continue
            (mname, module), = mods.values()
            if id(module) in inside_mha:
                fallback.append(i)
                self.fallback_reasons[inspector.param_names[i]] = "applied functionally by nn.MultiheadAttention"
                continue
            fp, reason = find_fast_path(module)
            covered = {
                id(getattr(module, a)) for a in ("weight", "bias") if isinstance(getattr(module, a, None), nn.Parameter)
            }
            if fp is None or id(p) not in covered:
                fallback.append(i)
                self.fallback_reasons[inspector.param_names[i]] = reason or "not a weight/bias of a fast-path layer"
                continue
            self.fast_modules[mname] = module
            self.fast_params.setdefault(mname, []).append(i)
        self.fallback_indices = fallback
        self.fallback_names = [inspector.param_names[i] for i in fallback]
        # looked up once (the model's structure is fixed once attached); whether each is training, every step
        self._batch_norms = [(m, mod) for m, mod in model.named_modules() if isinstance(mod, BATCH_NORMS)]
        self._functional: FunctionalPerSampleGradients | None = None
        self._capture: LayerCapture | None = None
        #: the fast paths' large temporaries, reused while consecutive steps need them (see Workspace)
        self.workspace = Workspace()
        self._warned: set[str] = set()

    # -- capture -------------------------------------------------------------------------------------
    def arm(self, ctx: StepContext) -> None:
        self._capture = LayerCapture(self.fast_modules, lambda: ctx.micro_batch_index)
        for mname, module in self._batch_norms:
            if module.training and mname not in self._warned:
                self._warned.add(mname)
                warnings.warn(
                    f"trainspect: {type(module).__name__} {mname!r} is in training mode: it normalizes with batch "
                    "statistics, so each sample's output depends on the whole batch and per-sample gradients are "
                    "not defined. Per-sample statistics (gradient tests, GSNR, histograms, alpha's variances) report "
                    "the per-sample terms of the batch gradient instead (they sum to the mini-batch gradient); use "
                    "GroupNorm/LayerNorm, or model.eval() for BatchNorm, for exact per-sample values.",
                    RuntimeWarning, stacklevel=2,
                )

    def disarm(self, ctx: StepContext) -> None:
        if self._capture is not None:
            self._capture.remove()

    def end_step(self, ctx: StepContext) -> None:
        if not self.inspector.provider_needed_at(self.name, ctx.step + 1):
            self.workspace.clear()  # a tracking interval: do not hold the memory until the next due step

    def close(self) -> None:
        self.workspace.clear()

    def before_update(self, ctx: StepContext) -> None:
        # the fallback re-evaluates the model: it must run at θ_t, before optimizer.step() changes it
        if self.fallback_indices:
            try:
                ctx.get(self.name)
            except Exception:  # recorded by whichever instrument asks for it
                pass

    # -- handlers ------------------------------------------------------------------------------------
    def compute(self, ctx: StepContext) -> PerSampleLayers:
        capture = self._capture
        self._capture = None
        if capture is None:
            raise RuntimeError("per-sample capture hooks were not armed this step")
        params = ctx.params
        scale_of_n = ctx.loss_reduction == "mean"
        n = None
        for record in capture.records.values():
            calls = record.complete_calls()
            if calls:
                n = calls[0].inputs.shape[0]
                break
        if n is None:
            n = ctx.batch_size
        if n is None:
            raise RuntimeError("cannot tell the batch size: no captured layer and no inputs given to inspector.step")
        scale = float(n) if scale_of_n else 1.0
        handlers: list[LayerStatistics] = []
        ill = [m for m, mod in self._batch_norms if mod.training]
        for mname, record in capture.records.items():
            indices = self.fast_params[mname]
            if not record.complete_calls():
                for i in indices:
                    g = params[i].grad
                    if g is not None and bool((g != 0).any()):
                        raise RuntimeError(
                            f"module {mname!r} ({type(record.module).__name__}) got a gradient but its forward was "
                            "never called with gradients enabled: it is used functionally by another module, so its "
                            "per-sample gradients cannot be captured"
                        )
                p0 = params[indices[0]]
                handlers.append(ZeroLayer(indices, [params[i].shape for i in indices], n, p0.dtype, p0.device))
                continue
            fp, _ = find_fast_path(record.module)
            for call in record.complete_calls():
                if call.inputs.shape[0] != n:
                    raise RuntimeError(
                        f"module {mname!r} was called with batch size {call.inputs.shape[0]} but the step's batch "
                        f"has {n} samples: per-sample gradients need the batch on dimension 0 of every layer input"
                    )
            h = fp.build(record, self.index_of, scale, self.memory_cap, self.workspace)
            if h is not None:
                handlers.append(h)
        if self.fallback_indices:
            handlers.append(self._fallback(ctx, n))
        return PerSampleLayers(handlers, n, list(self.fallback_names), ill)

    def _fallback(self, ctx: StepContext, n: int) -> LayerStatistics:
        loss_fn = self.inspector.user_loss_fn
        if loss_fn is None:
            raise RuntimeError(
                "per-sample gradients of " + ", ".join(self.fallback_names[:5]) + " need the torch.func fallback, "
                "which re-evaluates the loss: pass loss_fn to trainspect.attach"
            )
        if ctx.inputs is None:
            raise RuntimeError("the torch.func fallback needs the batch: use `with inspector.step(inputs, targets):`")
        if self._functional is None:
            self._functional = FunctionalPerSampleGradients(
                self.inspector.model, loss_fn, self.fallback_names, self.memory_cap
            )
        if ctx.phase == "update":
            before = ctx.get("params_before_update")
            values = tuple(before[i] for i in self.fallback_indices)
        else:
            values = tuple(ctx.params[i].detach() for i in self.fallback_indices)
        return fallback_layer(self._functional, self.fallback_indices, values, ctx.inputs, ctx.targets, n)


def requested_quantities(ctx: StepContext) -> set[str]:
    """The optional quantities (:data:`QUANTITIES`) that this step's due instruments ask for."""
    out: set[str] = set()
    for inst in ctx.due_instruments:
        out.update(getattr(inst, "per_sample_quantities", ()))
    return out


def _columns(indices: list[int]) -> slice | list[int]:
    """The columns of a handler's parameters: a slice where they are consecutive (weight then bias, the usual
    case), which assigns as a plain copy instead of an advanced-indexing scatter."""
    first = indices[0]
    if indices == list(range(first, first + len(indices))):
        return slice(first, first + len(indices))
    return indices


def project_per_sample(ctx: StepContext, directions: list[list[torch.Tensor]]) -> torch.Tensor:
    """g_{i,p}ᵀ v_p for every local sample i, tracked parameter p and direction v: [N_local, P, K] float64.

    Directions are lists of tensors aligned with ``ctx.params``. Works in the update phase too (the
    captured tensors are those of θ_t), so directions known only after ``optimizer.step()`` (the update)
    can be used.
    """
    layers: PerSampleLayers = ctx.get("per_sample_layers")
    parts, order = [], []
    for h in layers.handlers:
        parts.append(h.project([[d[i] for i in h.param_indices] for d in directions]))
        order.extend(h.param_indices)
    if order == list(range(len(ctx.params))) and len({(t.dtype, t.device) for t in parts}) == 1:
        # the usual case (handlers in parameter order, one dtype and device): one concatenation and one conversion
        # instead of a conversion and a scattered copy per handler (this runs every step alpha is due)
        return torch.cat(parts, 1).to(device="cpu", dtype=torch.float64)
    out = torch.zeros(layers.batch_size, len(ctx.params), len(directions), dtype=torch.float64)
    for h, part in zip(layers.handlers, parts):
        out[:, _columns(h.param_indices)] = part.to(torch.float64).cpu()
    return out


class PerSampleGradients(Provider):
    """Sufficient statistics of the per-sample gradients (:class:`.PerSampleGradStats`), all-reduced.

    Class attributes: ``histogram_samples`` (gradient elements sampled per step for the histogram
    estimate, default 2**14, in proportion to the parameters' sizes) and ``histogram_min_samples`` (at
    least this many per parameter tensor when a per-layer histogram is due, default 2**12; else
    ``histogram_global_min_samples``, 2**8); 16 times as many when a 2-D histogram is due;
    ``position_cycle`` (default 16): the sampled positions of outer-product parameters (Linear weights,
    biases, affines) are drawn once per slot ``step % position_cycle`` and reused in that slot, because drawing
    them costs as much as gathering and binning the elements (each step's sample is still uniform and
    stratified, so its histogram stays unbiased).
    """

    name = "per_sample_grads"
    requires = ("per_sample_layers",)
    histogram_samples: int = 2**14
    #: the 2-D histogram (40×50 bins) needs more samples than the 1-D one (100 bins) for the same accuracy
    histogram_2d_factor: int = 16
    histogram_min_samples: int = 2**12
    #: the floor per parameter tensor when only all-parameter histograms are due (no per-layer one)
    histogram_global_min_samples: int = 2**8

    def compute(self, ctx: StepContext) -> PerSampleGradStats:
        layers: PerSampleLayers = ctx.get("per_sample_layers")
        want = requested_quantities(ctx)
        n_params = len(ctx.params)
        n_local = layers.batch_size
        distributed = world_size() > 1
        # Σ_i g_i as tensors is a weight-gradient-sized matmul per layer; the gradient tests only need
        # ‖ḡ‖² and g_iᵀḡ, which (in one process) come from the small per-layer Gram matrices when cheaper.
        need_sums = distributed or bool({"sum_grads", "sum_grads_squared"} & want)
        sums: list[torch.Tensor | None] = [None] * n_params
        sum_sq: list[torch.Tensor | None] = [None] * n_params
        gram_blocks: list[torch.Tensor] = []  # K [R, N, N] per Gram handler
        gram_order: list[int] = []  # the parameters of the Gram matrices, in order
        sq_norms = torch.zeros(n_local, n_params, dtype=torch.float64)
        direct: list[LayerStatistics] = []  # handlers whose projections on ḡ need sums + project
        for h in layers.handlers:
            k = None if distributed else h.gram(with_sums=need_sums)
            if k is not None:
                gram_blocks.append(k)
                gram_order.extend(h.param_indices)
            else:
                direct.append(h)
                sq_norms[:, _columns(h.param_indices)] = h.sq_norms().to(torch.float64).cpu()
            if k is None or need_sums:
                for idx, t in zip(h.param_indices, h.sum_grads()):
                    sums[idx] = t
            if "sum_grads_squared" in want:
                for idx, t in zip(h.param_indices, h.sum_grads_squared()):
                    sum_sq[idx] = t
        # every Gram matrix in one [R, N, N] float64 block, so that each quantity taken from them is one operation
        # for all layers (a step runs this for every layer, and each small tensor operation costs microseconds)
        grams: torch.Tensor | None = None
        gram_columns: slice | list[int] = []
        if gram_blocks:
            if len({b.device for b in gram_blocks}) > 1:  # a model spread over devices: concatenate on the CPU
                gram_blocks = [b.cpu() for b in gram_blocks]
            grams = (gram_blocks[0] if len(gram_blocks) == 1 else torch.cat(gram_blocks)).to("cpu", torch.float64)
            gram_columns = _columns(gram_order)
            sq_norms[:, gram_columns] = grams.diagonal(dim1=1, dim2=2).T
        in_grams = set(gram_order)
        have = [i for i in range(n_params) if sums[i] is not None]
        extra = [t for t in sum_sq if t is not None]
        reduced = all_reduce_sum(
            [*(sums[i] for i in have), *extra, sq_norms.sum(0), torch.tensor([float(n_local)], dtype=torch.float64)]
        )
        for i, t in zip(have, reduced[:len(have)]):
            sums[i] = t
        sum_sq_r = list(reduced[len(have):len(have) + len(extra)]) or None
        sum_sq_norms, n_total = reduced[-2], int(round(float(reduced[-1][0])))
        sum_norms_sq = torch.zeros(n_params, dtype=torch.float64)  # ‖Σ_i g_{i,p}‖²
        if grams is not None:
            sum_norms_sq[gram_columns] = grams.sum((1, 2))
        dense = [i for i in range(n_params) if i not in in_grams]
        if dense:
            norms = torch._foreach_norm([sums[i] for i in dense])
            sum_norms_sq[dense] = torch.stack(norms).to(torch.float64).cpu().square()
        stats = PerSampleGradStats(
            batch_size=n_total, param_names=list(ctx.param_names),
            sum_grads=sums if need_sums else None,  # type: ignore[arg-type]
            mean_grad_sq_norms=sum_norms_sq / n_total**2,
            sum_sq_norms=sum_sq_norms, sq_norms=sq_norms, sum_grads_squared=sum_sq_r,
            loss_reduction=ctx.loss_reduction, fallback_params=layers.fallback_params, ill_defined=layers.ill_defined,
        )
        if "proj_mean" in want:
            proj = torch.zeros(n_local, n_params, dtype=torch.float64)
            if grams is not None:
                proj[:, gram_columns] = grams.sum(2).T / n_total
            for h in direct:
                mean = [sums[i] / n_total for i in h.param_indices]
                proj[:, _columns(h.param_indices)] = h.project([mean])[:, :, 0].to(torch.float64).cpu()
            r = all_reduce_sum([proj.square().sum(0), proj.sum(1).square().sum().reshape(1)])
            stats.proj_mean, stats.sum_proj_mean_sq, stats.sum_proj_mean_total_sq = proj, r[0], r[1][0]
        if "elements" in want:
            stats.elements = self._sample_elements(ctx, layers, with_params="element_params" in want,
                                                   per_layer="layer_elements" in want)
        return stats

    def _sample_elements(self, ctx: StepContext, layers: PerSampleLayers,
                         with_params: bool = True, per_layer: bool = True) -> GradientElementSample:
        """A uniform sample of (sample, coordinate) pairs of each parameter tensor.

        ``histogram_samples`` pairs in all, allocated to the parameters in proportion to their size (the
        allocation that makes the all-parameter histogram's estimate a plain uniform sample), but at least
        ``histogram_min_samples`` per parameter if a per-layer histogram is due (so that it is usable; else
        ``histogram_global_min_samples``), and every element of a parameter with fewer than that many
        (N·D_p ≤ the allocation). The pairs are stratified by sample: each of the N samples gets the same
        number of uniformly drawn coordinates (an unbiased estimate, with no more variance than independent
        draws of the sample index, and one random draw fewer per element).
        """
        gen = torch.Generator().manual_seed(1_000_003 * (ctx.step + 1))
        n = layers.batch_size
        numels = [p.numel() for p in ctx.params]
        total_numel = sum(numels)
        factor = self.histogram_2d_factor if with_params else 1
        floor = self.histogram_min_samples if per_layer else self.histogram_global_min_samples
        drawn: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # (values, coordinates) per parameter
        layer_ids, totals = [], []
        outer: list[tuple[int, tuple[torch.Tensor, torch.Tensor | None], int, float]] = []  # sampled together below
        for h in layers.handlers:
            for loc, idx in enumerate(h.param_indices):
                numel = numels[idx]
                total = n * numel
                budget = factor * max(floor, round(self.histogram_samples * numel / total_numel))
                dev = ctx.params[idx].device
                layer_ids.append(idx)
                totals.append(total)
                if total <= budget:
                    samples, coords = self._all_pairs(n, numel, dev)
                    drawn.append((h.elements(loc, samples, coords), coords))
                    continue
                factors = h.outer_factors(loc)
                if factors is not None and factors[0].device == dev:
                    outer.append((len(drawn), factors, -(-budget // n), h.outer_scale(loc)))
                    drawn.append(None)
                else:
                    drawn.append(h.sample_elements(loc, budget, gen, dev))
        if outer:
            factors = [f for _, f, _, _ in outer]
            positions = self._outer_positions(outer_shapes(factors, [k for _, _, k, _ in outer]), ctx.step,
                                              factors[0][0].device)
            for (pos, _, _, scale), (values, coords) in zip(outer, gather_outer_elements(factors, positions)):
                drawn[pos] = (values.mul_(scale) if scale != 1.0 else values), coords
        values, pvals, counts = [], [], []
        for idx, (v, coords) in zip(layer_ids, drawn):  # type: ignore[misc]
            values.append(v)
            if with_params:  # only the 2-D histograms need θ at the sampled coordinates
                pvals.append(ctx.params[idx].detach().reshape(-1).index_select(0, coords))
            counts.append(v.shape[0])
        layer, weight = self._element_layers(tuple(layer_ids), tuple(counts), tuple(totals))
        # one conversion for all parameters (cat promotes mixed dtypes)
        return GradientElementSample(torch.cat(values).to(torch.float64).cpu(),
                                     torch.cat(pvals).to(torch.float64).cpu() if with_params else None, layer, weight)

    #: outer-product elements (Linear layers, biases, affines) reuse their drawn positions every this many steps
    position_cycle: int = 16

    def _outer_positions(self, shapes: tuple[tuple[int, int, int, int], ...], step: int,
                         device: torch.device) -> OuterPositions:
        """The positions of :func:`draw_outer_positions` for this step: one set per step of a cycle of
        ``position_cycle`` steps, drawn on first use and kept while the shapes stay the same.

        Drawing them costs as much as gathering and binning the elements together, on a step whose cache the
        training step has just evicted. Every step's sample is still uniform and stratified (so its histogram
        unbiased, with the same accuracy); only the estimates of steps ``position_cycle`` apart share their
        positions — not their values, which are another batch's gradients at other parameters. Seeded by the
        slot, so identical on every process.
        """
        cache = self.__dict__.setdefault("_positions", {})
        key = (shapes, str(device), step % self.position_cycle)
        positions = cache.get(key)
        if positions is None:
            if len(cache) >= 4 * self.position_cycle:  # shapes changed (another batch size): start over
                cache.clear()
            gen = torch.Generator().manual_seed(1_000_003 * (key[2] + 1))
            positions = cache[key] = draw_outer_positions(shapes, gen, device)
        return positions

    def _element_layers(self, layer_ids: tuple[int, ...], counts: tuple[int, ...],
                        totals: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element layer index and weight N·D_p/S_p (constant runs; the same every step: cached)."""
        cache = self.__dict__.setdefault("_element_layer_cache", {})
        key = (layer_ids, counts, totals)
        out = cache.get(key)
        if out is None:
            if len(cache) > 16:
                cache.clear()
            total_count = sum(counts)
            layer = torch.empty(total_count, dtype=torch.int64)
            weight = torch.empty(total_count, dtype=torch.float64)
            start = 0
            for idx, count, total in zip(layer_ids, counts, totals):
                layer[start:start + count] = idx
                weight[start:start + count] = total / count
                start += count
            out = cache[key] = (layer, weight)
        return out

    def _all_pairs(self, n: int, numel: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (sample, coordinate) pair of a parameter with at most its budget of N·D elements (cached)."""
        cache = self.__dict__.setdefault("_pairs", {})
        key = (n, numel, device)
        if key not in cache:
            flat = torch.arange(n * numel, device=device)
            cache[key] = (flat // numel, flat % numel)
        return cache[key]


class PerSampleLosses(Provider):
    """ℓ_i, the loss of each (local) sample: the loss function applied to one sample's output and target.

    Needs the loss's arguments (an ``nn.Module`` loss given to ``attach``, or ``inspector.loss_fn``).
    """

    name = "per_sample_losses"

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self._shadow: nn.Module | None = None  # an unreduced twin of the loss module (see _unreduced)

    def _unreduced(self, loss_fn: nn.Module) -> Callable[..., torch.Tensor]:
        """The loss module's ``forward`` with ``reduction="none"``, on a twin holding the module's current
        attributes (they may change during training), called without the module's hooks (the inspector's own
        loss hook must not see it) and, for torch's own losses (no parameters), without autograd."""
        shadow = self._shadow
        if shadow is None or type(shadow) is not type(loss_fn):
            shadow = self._shadow = type(loss_fn).__new__(type(loss_fn))
        shadow.__dict__.update(loss_fn.__dict__)
        shadow.__dict__["reduction"] = "none"
        forward = type(loss_fn).forward.__get__(shadow)
        if type(loss_fn).__module__ == "torch.nn.modules.loss":  # inputs detached: nothing to record
            return forward
        return torch.no_grad()(forward)

    def compute(self, ctx: StepContext) -> torch.Tensor:
        loss_fn = self.inspector.user_loss_fn
        if loss_fn is None or ctx.model_output is None:
            raise RuntimeError(
                "per-sample losses need the loss function's inputs: pass an nn.Module loss to trainspect.attach "
                "(or call inspector.loss_fn(output, target) instead of your loss function)"
            )
        out, target = ctx.model_output, ctx.loss_target
        n = out.shape[0]
        if (isinstance(loss_fn, nn.Module) and getattr(loss_fn, "reduction", None) in ("mean", "sum")
                and getattr(loss_fn, "weight", None) is None and target is not None):
            # built-in losses: one call with reduction="none" (no per-sample vmap); valid when it returns
            # one value per sample (class weights would make "mean" a weighted mean: not taken here)
            detached = target.detach() if isinstance(target, torch.Tensor) else target
            values = self._unreduced(loss_fn)(out.detach(), detached)
            if values.dim() == 1 and values.shape[0] == n:
                return values.to(torch.float64)
        with torch.no_grad():
            if target is None:
                return torch.vmap(lambda o: loss_fn(o.unsqueeze(0)))(out.detach()).to(torch.float64)
            return torch.vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(
                out.detach(), target.detach() if isinstance(target, torch.Tensor) else target
            ).to(torch.float64)


