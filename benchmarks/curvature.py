"""Curvature estimators: products (and seconds) to a target accuracy, ours vs. the classic baselines.

For the digits MLP and CNN (``trainspect.demo.digits``) and a small transformer on the same data, each
briefly trained so the Hessian has its usual outlier structure:

1. **Hessian-vector products**: seconds per product, double backward with a reused graph (ours) vs.
   forward-over-reverse (``torch.func.jvp(grad)``) vs. ``curvlinops-for-pytorch`` (if installed).
2. **λ_max**: Hessian-vector products until the estimate is within 1e-3 (relative) of the exact value,
   for Lanczos (ours) and power iteration (PyHessian's algorithm, reimplemented below; Cockpit's
   ``HessMaxEV`` is the same iteration), plus each method's result with its own stopping rule
   (ours: rtol 1e-3; PyHessian: relative change < 1e-3, at most 100 iterations). The exact value is a
   Lanczos run to rtol 1e-10 (its error bound is printed). Ours reports the Gauss–Radau estimate from the
   Lanczos products (``trainspect.functional.lanczos``); the count for the plain Ritz value (``refine=False``,
   the same products) is printed alongside. Both of the instrument's modes are measured along the same
   training run: curvature on each measured step's own mini-batch (``curvature_batch=None``, the default)
   and on one fixed batch of 128 training samples (``curvature_batch=(x, y)``). With step batches the
   top eigenvector of one batch's Hessian is a poor start for the next batch's, so the warm start saves
   little; on a fixed batch it changes only as θ does, and the warm start saves most of the products.
3. **trace**: Hutch++ (ours, 60 products) vs. plain Hutchinson: the number of Hutchinson probes needed
   for the same standard error, from Hutchinson's per-probe standard deviation (medians over seeds).

Last lines: ``lambda_max products ratio (power/ours): X.X`` and ``trace probes ratio (hutchinson/ours): Y.Y``
(medians over the three models; the λ_max headline is the fixed-batch mode, the step-batch ratio is printed
on the line before). Run:

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


def power_iteration(matvec, dim: int, *, max_iter: int, tol: float = 1e-3, seed: int = 0,
                    reference: float | None = None, start: torch.Tensor | None = None):
    """PyHessian's ``eigenvalues`` (top-1): Rayleigh quotient of normalized Hv; stops when the relative change
    |λ_k − λ_{k−1}| / (|λ_{k−1}| + 1e-6) < tol, or (with ``reference``) when within TARGET of it.
    Returns (estimate, products, history, last vector)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=gen, dtype=torch.float64) if start is None else start.clone()
    v /= v.norm()
    eig, history = None, []
    for k in range(1, max_iter + 1):
        hv = matvec(v).to(torch.float64)
        new = float(torch.dot(hv, v))
        history.append(new)
        v = hv / hv.norm()
        if reference is not None:
            if abs(new - reference) <= TARGET * abs(reference):
                return new, k, history, v
        elif eig is not None and abs(new - eig) / (abs(eig) + 1e-6) < tol:
            return new, k, history, v
        eig = new
    return history[-1], max_iter, history, v


def rule_stop(history: list[float], tol: float) -> int:
    """Products at which PyHessian's rule |λ_k − λ_{k−1}| / (|λ_{k−1}| + 1e-6) < tol stops (or the last)."""
    for k in range(1, len(history)):
        if abs(history[k] - history[k - 1]) / (abs(history[k - 1]) + 1e-6) < tol:
            return k + 1
    return len(history)


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


def warm(vector: torch.Tensor, step: int) -> torch.Tensor:
    """The provider's warm start: last Ritz vector + 5 % noise (``HessianExtremeEigenvalues._start``)."""
    gen = torch.Generator().manual_seed(step)
    noise = torch.randn(vector.shape[0], generator=gen, dtype=torch.float64)
    return vector / vector.norm() + 0.05 * noise / noise.norm()


def ritz_to_target(op, exact: float, seed: int, start: torch.Tensor | None) -> int:
    """Products until the plain Ritz value (no Gauss–Radau refinement) is within TARGET, same start."""
    res = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-12, max_iter=min(op.dim, 60), seed=seed,
                                      which="largest", start=start, refine=False)
    return first_within(res.largest_history, exact) or 60


def lanczos_to_target(op, exact: float, seed: int, start: torch.Tensor | None):
    """Lanczos with its own stop (rtol 1e-3); returns (result, seconds, products until within TARGET)."""
    t0 = time.perf_counter()
    res = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=TARGET, max_iter=300, seed=seed, which="largest",
                                      start=start, return_vectors=True)
    seconds = time.perf_counter() - t0
    k = first_within(res.largest_history, exact)
    if k is None:  # its own stop came before the target was reached: continue (same start) to count
        more = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-12, max_iter=300, seed=seed,
                                           which="largest", start=start)
        k = first_within(more.largest_history, exact) or 300
    return res, seconds, k


def measure_lambda_max(op, step: int, power_cap: int, prev_ours, prev_power, label: str):
    """One measurement as the instrument would make it (warm-started Lanczos) plus the baselines
    (cold Lanczos, power iteration cold and warm, PyHessian's own stopping rule) on the operator ``op``.
    Returns (row, new Lanczos vector, new power-iteration vector)."""
    ref = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=1e-10, max_iter=min(op.dim, 300),
                                      seed=10**6 + step, which="largest")
    exact = ref.largest
    _, t_cold, k_cold = lanczos_to_target(op, exact, step, None)
    start = warm(prev_ours, step) if prev_ours is not None else None
    hot, t_hot, k_hot = lanczos_to_target(op, exact, step, start)
    k_ritz = ritz_to_target(op, exact, step, start)
    # PyHessian's own rule: tol 1e-3 (its default) and tol 1e-4 (one history: same seed and start)
    _, _, own_hist, _ = power_iteration(op.matvec, op.dim, max_iter=100, seed=step, tol=1e-4)
    own_k = rule_stop(own_hist, 1e-3)
    own = own_hist[own_k - 1]
    own4_k = rule_stop(own_hist, 1e-4)
    own4_err = abs(own_hist[own4_k - 1] - exact) / exact
    t0 = time.perf_counter()
    _, _, hist, _ = power_iteration(op.matvec, op.dim, max_iter=power_cap, seed=step, reference=exact)
    t_power = time.perf_counter() - t0
    p_cold = first_within(hist, exact) or power_cap
    pstart = warm(prev_power, step) if prev_power is not None else None
    _, _, hist_w, v = power_iteration(op.matvec, op.dim, max_iter=power_cap, seed=step, reference=exact,
                                      start=pstart)
    p_warm = first_within(hist_w, exact) or power_cap
    row = dict(step=step, exact=exact, ref_err=ref.error_bound_largest, cold=k_cold, warm=k_hot, ritz=k_ritz,
               own=hot.num_matvecs, own_err=abs(hot.largest - exact) / exact, t_warm=t_hot, t_cold=t_cold,
               power=p_cold, power_warm=p_warm, t_power=t_power, power_own=own_k,
               power_own_err=abs(own - exact) / exact, power_own4=own4_k, power_own4_err=own4_err,
               first=start is None)
    print(f"  step {step} ({label}): exact λ_max {exact:.5g} (bound {ref.error_bound_largest:.0e}); products to "
          f"1e-3: Lanczos warm {k_hot}{' (first: cold)' if start is None else ''} (Ritz value {k_ritz}), "
          f"cold {k_cold}; power iteration cold {p_cold}{'+' if p_cold >= power_cap else ''}, warm {p_warm}. "
          f"Own stopping rules: Lanczos {hot.num_matvecs} products, rel. error {row['own_err']:.1e}; PyHessian "
          f"{own_k} products, rel. error {row['power_own_err']:.1e}; PyHessian tol 1e-4 {own4_k} products, rel. "
          f"error {own4_err:.1e}")
    return row, hot.largest_vector, v


def lambda_max_during_training(model, data, loss_fn, lr: float, measure_at: list[int], power_cap: int,
                               fixed: tuple[torch.Tensor, torch.Tensor]):
    """Train with Adam; at the scheduled steps measure λ_max as the instrument would (warm-started Lanczos),
    with cold-started Lanczos and power iteration for comparison, in both of the instrument's modes: on that
    step's mini-batch (``curvature_batch=None``) and on one fixed batch (``curvature_batch=(x, y)``).
    Returns {"step batch": rows, "fixed batch": rows}."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, list[dict]] = {"step batch": [], "fixed batch": []}
    prev = {mode: (None, None) for mode in rows}
    for step in range(max(measure_at) + 1):
        idx = torch.randint(0, len(data.x_train), (128,), generator=gen)
        x, y = data.x_train[idx], data.y_train[idx]
        if step in measure_at:
            for mode, (bx, by) in (("step batch", (x, y)), ("fixed batch", fixed)):
                op = HessianOperator(model, loss_fn, bx, by)
                row, ours, power = measure_lambda_max(op, step, power_cap, *prev[mode], mode)
                rows[mode].append(row)
                prev[mode] = (ours, power)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer measurement steps")
    parser.add_argument("--power-cap", type=int, default=600, help="max power iterations for the 1e-3 target")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_digits()
    loss_fn = nn.CrossEntropyLoss()
    seeds = [0, 1, 2]
    # the instrument's default schedule (10 per decade) between steps 100 and 400
    measure_at = [100, 126, 158] if args.quick else [100, 126, 158, 200, 251, 316, 398]
    models = {
        "digits MLP": digits_mlp(),
        "digits CNN": digits_cnn(),
        "transformer": DigitsTransformer(),
    }
    ratios = {mode: {"warm": [], "cold": [], "own": []} for mode in ("step batch", "fixed batch")}
    trace_ratios = []
    for name, model in models.items():
        dim = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {dim} parameters; Adam lr 1e-3, batch 128 ==")
        gen = torch.Generator().manual_seed(123)
        idx = torch.randint(0, len(data.x_train), (128,), generator=gen)
        x, y = data.x_train[idx], data.y_train[idx]
        secs = hvp_seconds(model, loss_fn, x, y)
        print("seconds per Hessian-vector product (at init): "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in secs.items()))
        # the fixed curvature batch: 128 training samples chosen once, as curvature_batch=(x, y) would be
        fixed_idx = torch.randint(0, len(data.x_train), (128,), generator=torch.Generator().manual_seed(7))
        fixed = (data.x_train[fixed_idx], data.y_train[fixed_idx])
        by_mode = lambda_max_during_training(model, data, loss_fn, 1e-3, measure_at, args.power_cap, fixed)
        med = statistics.median
        for mode, rows in by_mode.items():
            later = [r for r in rows if not r["first"]]
            ratio = med(r["power"] for r in later) / med(r["warm"] for r in later)
            cold = med(r["power"] for r in rows) / med(r["cold"] for r in rows)
            ratios[mode]["warm"].append(ratio)
            ratios[mode]["cold"].append(cold)
            print(f"λ_max to 1e-3 on the {mode} (medians): Lanczos warm {med(r['warm'] for r in later)} products "
                  f"({med(r['t_warm'] for r in later):.2f} s; plain Ritz value {med(r['ritz'] for r in later)}), "
                  f"Lanczos cold {med(r['cold'] for r in rows)} "
                  f"({med(r['t_cold'] for r in rows):.2f} s), power iteration cold {med(r['power'] for r in rows)} "
                  f"({med(r['t_power'] for r in rows):.2f} s), power warm {med(r['power_warm'] for r in later)}"
                  f" -> ratio power/ours {ratio:.1f} (cold/cold {cold:.1f})")
            print(f"  own stopping rules (medians): Lanczos rtol 1e-3 {med(r['own'] for r in rows)} products, max "
                  f"rel. error {max(r['own_err'] for r in rows):.1e}; PyHessian tol 1e-3 "
                  f"{med(r['power_own'] for r in rows)} products, max rel. error "
                  f"{max(r['power_own_err'] for r in rows):.1e}; PyHessian tol 1e-4 "
                  f"{med(r['power_own4'] for r in rows)} products, max rel. error "
                  f"{max(r['power_own4_err'] for r in rows):.1e}")
            ratios[mode]["own"].append(med(r["power_own4"] for r in rows) / med(r["own"] for r in rows))

        # trace: Hutch++ with m products vs. Hutchinson at equal standard error, at the trained state
        op = HessianOperator(model, loss_fn, x, y)
        m = 60
        pp = [hutchpp_trace(op.matmat, op.dim, m, seed=s) for s in seeds]
        hut = [hutchinson_trace(op.matvec, op.dim, m, seed=s, matmat=op.matmat) for s in seeds]
        se_pp = med(e.standard_error for e in pp)
        sigma_h = med(e.standard_error * math.sqrt(m) for e in hut)
        needed = (sigma_h / se_pp) ** 2
        trace_ratios.append(needed / m)
        print(f"trace: Hutch++ {m} products: {med(e.value for e in pp):.5g} ± {se_pp:.3g}; "
              f"Hutchinson {m} probes: {med(e.value for e in hut):.5g} ± "
              f"{med(e.standard_error for e in hut):.3g}; Hutchinson needs {needed:.0f} probes for "
              f"± {se_pp:.3g} -> ratio {needed / m:.1f}")
    print()
    med = statistics.median
    for mode, r in ratios.items():
        print(f"{mode}: lambda_max products ratio, both cold-started (power/ours): {med(r['cold']):.1f}; own "
              f"stopping rules (PyHessian tol 1e-4 / ours rtol 1e-3): {med(r['own']):.1f}; warm-started Lanczos "
              f"(power/ours): {med(r['warm']):.1f}")
    # the headline is the fixed-batch mode (curvature_batch=(x, y)): the one where the warm start pays off
    print(f"lambda_max products ratio (power/ours): {med(ratios['fixed batch']['warm']):.1f}")
    print(f"trace probes ratio (hutchinson/ours): {statistics.median(trace_ratios):.1f}")


if __name__ == "__main__":
    main()
