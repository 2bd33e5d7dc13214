"""Mixed precision: CPU autocast (bfloat16) + GradScaler; gradients measured unscaled, skipped steps reported."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import trainspect

STEPS = 4
POISONED_STEP = 2  # an inf in the batch: inf/NaN gradients, so the scaler skips this step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for step in range(STEPS):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
        if step == POISONED_STEP:
            x[0, 0] = float("inf")
        out.append((x, y))
    return out


def _train(inspector_kwargs=None):
    """The usual AMP loop; returns the unscaled gradient norms, scales and skips seen by hand, and the run."""
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    inspector = None
    if inspector_kwargs is not None:
        inspector = trainspect.attach(model, optimizer, loss_fn, grad_scaler=scaler, **inspector_kwargs)
    norms, scales, skipped = [], [], []
    for x, y in _batches():
        optimizer.zero_grad()
        block = inspector.step(x, y) if inspector else _Null()
        with block:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
        scales.append(scaler.get_scale())
        scaler.unscale_(optimizer)  # reference only: what the optimizer will see (scaler.step won't redo it)
        grads = [p.grad.double().reshape(-1) for p in model.parameters()]
        norms.append(float(torch.cat(grads).norm()))
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(optimizer)
        scaler.update()
        skipped.append(all(torch.equal(b, p) for b, p in zip(before, model.parameters())))
    if inspector:
        inspector.close()
    return np.array(norms), np.array(scales), np.array(skipped)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None


def test_gradients_are_unscaled_and_skipped_steps_reported(tmp_path):
    ref_norms, ref_scales, ref_skipped = _train()
    assert ref_skipped.tolist() == [s == POISONED_STEP for s in range(STEPS)]  # the reference really skips
    _train({"run_dir": tmp_path / "amp", "instruments": "cheap", "progress": False})
    run = trainspect.open_run(tmp_path / "amp")
    steps, norms = run.scalar("grad_norm")
    np.testing.assert_array_equal(steps, np.arange(STEPS))
    finite = np.isfinite(ref_norms)
    assert not finite[POISONED_STEP]
    # measured after unscaling: the true gradient norm, not 2^12 times it
    np.testing.assert_allclose(norms[finite], ref_norms[finite], rtol=1e-5)
    _, scales = run.scalar("loss_scale")
    np.testing.assert_array_equal(scales, ref_scales)
    _, skipped = run.scalar("amp_step_skipped")
    np.testing.assert_array_equal(skipped, ref_skipped.astype(float))
    np.testing.assert_array_equal(run.steps()["optimizer_stepped"], (~ref_skipped).astype(float))
    update_steps, _ = run.scalar("update_size")
    assert POISONED_STEP not in update_steps.tolist()  # no update on a skipped step
    assert run.errors() == []
