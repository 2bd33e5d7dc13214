"""The Hessian quantities the diagnosis needs, from the shared curvature machinery in ``trainspect.functional``
(``hvp.HessianOperator``, ``lanczos.lanczos_extreme_eigenvalues``, ``trace.hutchinson_trace``); one place to
adapt if that API changes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def curvature_available() -> bool:
    try:
        import trainspect.functional.hvp
        import trainspect.functional.lanczos
        import trainspect.functional.trace  # noqa: F401
    except ImportError:
        return False
    return True


def hessian_top_and_trace(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, *,
                          seed: int, trace_matvecs: int, rtol: float, max_iter: int
                          ) -> tuple[float, float, float, int, bool]:
    """(largest eigenvalue, Hutchinson trace, its standard error, Hessian-vector products, Lanczos converged)."""
    from trainspect.functional.hvp import HessianOperator
    from trainspect.functional.lanczos import lanczos_extreme_eigenvalues
    from trainspect.functional.trace import hutchinson_trace

    op = HessianOperator(model, loss_fn, inputs, targets)
    eig = lanczos_extreme_eigenvalues(op.matvec, op.dim, rtol=rtol, max_iter=max_iter, seed=seed,
                                      which="largest")
    tr = hutchinson_trace(op.matvec, op.dim, trace_matvecs, seed, matmat=op.matmat)
    return (float(eig.largest), float(tr.value), float(tr.standard_error), int(eig.num_matvecs + tr.num_matvecs),
            bool(eig.converged))
