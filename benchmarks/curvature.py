"""Curvature estimators: products (and seconds) to a target accuracy, ours vs. the classic baselines.

For the digits MLP and CNN (``trainspect.demo.digits``) and a small transformer on the same data, each
briefly trained so the Hessian has its usual outlier structure:

1. **Hessian-vector products**: seconds per product, double backward with a reused graph (ours) vs.
   forward-over-reverse (``torch.func.jvp(grad)``) vs. ``curvlinops-for-pytorch`` (if installed).
2. **λ_max**: Hessian-vector products until the estimate is within 1e-3 (relative) of the exact value,
   for Lanczos (ours) and power iteration (PyHessian's algorithm, reimplemented below; Cockpit's
   ``HessMaxEV`` is the same iteration), plus each method's result with its own stopping rule
   (ours: rtol 1e-3; PyHessian: relative change < 1e-3, at most 100 iterations). The exact value is a
   Lanczos run to rtol 1e-10 (its error bound is printed).
3. **trace**: Hutch++ (ours, 60 products) vs. plain Hutchinson: the number of Hutchinson probes needed
   for the same standard error, from Hutchinson's per-probe standard deviation (medians over seeds).

Last lines: ``lambda_max products ratio (power/ours): X.X`` and ``trace probes ratio (hutchinson/ours): Y.Y``
(medians over the three models). Run:

    OMP_PROC_BIND=true OMP_PLACES=cores PYTHONPATH=src python benchmarks/curvature.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from trainspect.demo.digits import digits_cnn, digits_mlp, load_digits
from trainspect.functional.hvp import HessianOperator
from trainspect.functional.lanczos import lanczos_extreme_eigenvalues
from trainspect.functional.trace import hutchinson_trace, hutchpp_trace

TARGET = 1e-3


class DigitsTransformer(nn.Module):
    """The 8×8 digit as 8 tokens (rows) of 8 pixels: linear embedding, one encoder layer, mean-pool, head."""

    def __init__(self, d: int = 32, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(8, d))
        self.encoder = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos
        return self.head(self.encoder(h).mean(1))


def train(model: nn.Module, data, steps: int, lr: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        idx = torch.randint(0, len(data.x_train), (128,), generator=gen)
        opt.zero_grad()
        loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()


def power_iteration(matvec, dim: int, *, max_iter: int, tol: float = 1e-3, seed: int = 0,
                    reference: float | None = None) -> tuple[float, int, list[float]]:
    """PyHessian's ``eigenvalues`` (top-1): Rayleigh quotient of normalized Hv; stops when the relative change
    |λ_k − λ_{k−1}| / (|λ_{k−1}| + 1e-6) < tol, or (with ``reference``) when within TARGET of it."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    v /= v.norm()
    eig, history = None, []
    for k in range(1, max_iter + 1):
        hv = matvec(v).to(torch.float64)
        new = float(torch.dot(hv, v))
        history.append(new)
        v = hv / hv.norm()
        if reference is not None:
            if abs(new - reference) <= TARGET * abs(reference):
                return new, k, history
        elif eig is not None and abs(new - eig) / (abs(eig) + 1e-6) < tol:
            return new, k, history
        eig = new
    return history[-1], max_iter, history


def first_within(history: list[float], exact: float) -> int | None:
    """1-based index of the first estimate within TARGET of ``exact`` after which it stays within."""
    ok = [abs(h - exact) <= TARGET * abs(exact) for h in history]
    for k in range(len(ok)):
        if all(ok[k:]):
            return k + 1
    return None


def hvp_seconds(model, loss_fn, x, y, repeats: int = 3, products: int = 10) -> dict[str, float]:
    out = {}
    for method in ("double_backward", "forward_over_reverse"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            op = HessianOperator(model, loss_fn, x, y, method=method)
            v = torch.randn(op.dim)
            for _ in range(products):
                v = op.matvec(v)
                v /= v.norm()
            times.append((time.perf_counter() - t0) / products)
        out[method] = statistics.median(times)
    try:
        from curvlinops import HessianLinearOperator
    except Exception:  # pragma: no cover - optional
        return out
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            H = HessianLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False,
                                      progressbar=False)
            v = torch.randn(sum(p.numel() for p in params))
            for _ in range(products):
                v = H @ v
                v /= v.norm()
            times.append((time.perf_counter() - t0) / products)
    except Exception as error:  # e.g. no forward-mode AD for CPU attention
        print(f"curvlinops HessianLinearOperator fails: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
        return out
    out["curvlinops"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and training steps")
    parser.add_argument("--power-cap", type=int, default=600, help="max power iterations for the 1e-3 target")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_digits()
    loss_fn = nn.CrossEntropyLoss()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    steps = 100 if args.quick else 300
    models = {
        "digits MLP": (digits_mlp(), 1e-3),
        "digits CNN": (digits_cnn(), 1e-3),
        "transformer": (DigitsTransformer(), 1e-3),
    }
    eig_ratios, trace_ratios = [], []
    gen = torch.Generator().manual_seed(123)
    idx = torch.randint(0, len(data.x_train), (256,), generator=gen)
    x, y = data.x_train[idx], data.y_train[idx]
    for name, (model, lr) in models.items():
        train(model, data, steps, lr)
        dim = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {dim} parameters, batch {len(x)}, after {steps} Adam steps ==")
        secs = hvp_seconds(model, loss_fn, x, y)
        print("seconds per Hessian-vector product: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in secs.items()))
        op = HessianOperator(model, loss_fn, x, y)
        ref = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-10, max_iter=min(dim, 300), seed=99,
                                          which="largest")
        exact = ref.largest
        print(f"exact λ_max = {exact:.6g} (Lanczos to rtol 1e-10: {ref.num_matvecs} products, error bound "
              f"{ref.error_bound_largest:.1e}, converged={ref.converged})")
        ours_k, power_k, ours_t, power_t = [], [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            res = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=TARGET, max_iter=300, seed=seed,
                                              which="largest")
            t_own = time.perf_counter() - t0
            k = first_within(res.largest_history, exact)
            # the run stopped by its own rule: how many products did it need to be within TARGET?
            if k is None:  # not yet within at its own stop: continue to find out
                more = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-9, max_iter=300, seed=seed,
                                                   which="largest")
                k = first_within(more.largest_history, exact) or 300
            ours_k.append(k)
            ours_t.append(t_own)
            t0 = time.perf_counter()
            own, own_k, _ = power_iteration(op.matvec, op.dim, max_iter=100, seed=seed)
            t_power_own = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, pk, hist = power_iteration(op.matvec, op.dim, max_iter=args.power_cap, seed=seed, reference=exact)
            t_power = time.perf_counter() - t0
            pk = first_within(hist, exact) or args.power_cap
            power_k.append(pk)
            power_t.append(t_power)
            print(f"  seed {seed}: Lanczos own stop {res.num_matvecs} products ({t_own:.2f} s), rel. error "
                  f"{abs(res.largest - exact) / exact:.1e}, within 1e-3 after {k}; power iteration (PyHessian rule) "
                  f"{own_k} products ({t_power_own:.2f} s), rel. error {abs(own - exact) / exact:.1e}, within 1e-3 "
                  f"after {pk}{'+ (cap)' if pk >= args.power_cap else ''} ({t_power:.2f} s)")
        ratio = statistics.median(power_k) / statistics.median(ours_k)
        eig_ratios.append(ratio)
        print(f"λ_max to 1e-3: Lanczos {statistics.median(ours_k)} products / {statistics.median(ours_t):.2f} s, "
              f"power iteration {statistics.median(power_k)} products / {statistics.median(power_t):.2f} s "
              f"-> ratio {ratio:.1f}")

        # trace: Hutch++ with m products vs. Hutchinson at equal standard error
        m = 60
        pp = [hutchpp_trace(op.matmat, op.dim, m, seed=s) for s in seeds]
        hut = [hutchinson_trace(op.matvec, op.dim, m, seed=s, matmat=op.matmat) for s in seeds]
        se_pp = statistics.median(e.standard_error for e in pp)
        sigma_h = statistics.median(e.standard_error * math.sqrt(m) for e in hut)
        needed = (sigma_h / se_pp) ** 2
        trace_ratios.append(needed / m)
        print(f"trace: Hutch++ {m} products: {statistics.median(e.value for e in pp):.5g} ± {se_pp:.3g}; "
              f"Hutchinson {m} probes: {statistics.median(e.value for e in hut):.5g} ± "
              f"{statistics.median(e.standard_error for e in hut):.3g}; Hutchinson needs {needed:.0f} probes for "
              f"± {se_pp:.3g} -> ratio {needed / m:.1f}")
    print()
    print(f"lambda_max products ratio (power/ours): {statistics.median(eig_ratios):.1f}")
    print(f"trace probes ratio (hutchinson/ours): {statistics.median(trace_ratios):.1f}")


if __name__ == "__main__":
    main()
