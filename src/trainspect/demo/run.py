"""``trainspect demo``: a real training run on digits with the inspector attached."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import trainspect
from trainspect.demo.digits import accuracy, load_digits
from trainspect.demo.scenarios import SCENARIOS


def run_demo(
    scenario: str = "healthy",
    *,
    epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
    runs_root: str | Path = "runs",
    run_dir: str | Path | None = None,
    instruments: Any = "default",
    progress: bool | str = "auto",
    threads: int | None = None,
) -> Path:
    """Train the digits MLP of ``scenario`` for ``epochs`` and return the run folder."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}")
    if threads:
        torch.set_num_threads(threads)
    spec = SCENARIOS[scenario]
    data = load_digits(seed=seed)
    setup = spec.build(data, seed)
    steps_per_epoch = (len(data.x_train) + batch_size - 1) // batch_size
    if run_dir is None:
        run_dir = Path(runs_root) / f"demo-{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    inspector = trainspect.attach(
        setup.model, setup.optimizer, setup.loss_fn, run_dir=run_dir, instruments=instruments,
        progress=progress, total_steps=epochs * steps_per_epoch, overwrite=True, name=f"demo-{scenario}",
        config={"scenario": scenario, "epochs": epochs, "batch_size": batch_size, "seed": seed},
    )
    generator = torch.Generator().manual_seed(seed)
    model, optimizer, loss_fn = setup.model, setup.optimizer, setup.loss_fn
    try:
        for _epoch in range(epochs):
            order = torch.randperm(len(data.x_train), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                x, y = data.x_train[idx], data.y_train[idx]
                if setup.transform_inputs is not None:
                    x = setup.transform_inputs(x)
                if setup.transform_targets is not None:
                    y = setup.transform_targets(y)
                if setup.zero_grad:
                    optimizer.zero_grad()
                with inspector.step(x, y):
                    output = model(x)
                    loss = loss_fn(output, y)
                    loss.backward()
                optimizer.step()
                # one batch of examples per epoch for the samples view (digits are 8x8 images)
                inspector.log_samples(x, output, y, schedule=steps_per_epoch,
                                      image_shape=(8, 8) if x.ndim == 2 and x.shape[1] == 64 else None)
            inspector.log(val_accuracy=accuracy(model, data.x_val, data.y_val),
                          train_accuracy=accuracy(model, data.x_train, data.y_train))
    finally:
        inspector.close()
    return inspector.run_dir  # type: ignore[return-value]
