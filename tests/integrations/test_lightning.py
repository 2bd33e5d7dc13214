"""Lightning: TrainspectCallback records unclipped, accumulated gradients and the step's loss."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="the 'lightning' extra is not installed "
                                                       "(pip install 'trainspect[lightning]')")
from lightning.pytorch.utilities.grads import grad_norm  # noqa: E402

import trainspect  # noqa: E402
from trainspect.integrations.lightning import TrainspectCallback  # noqa: E402

ACCUMULATE, BATCH, STEPS = 2, 4, 3
CLIP = 0.01  # far below the gradient norm: clipping changes every step's gradients
INSTRUMENTS = ["loss", "grad_norm", "learning_rate", "nonfinite", "param_norm", "update_size", "update_to_weight",
               "distance", "norm_test", "inner_test", "ortho_test", "mean_gsnr", "alpha", "grad_hist_1d"]


class TinyClassifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()
        self.micro_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.micro_losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LightningsOwnGradNorm(pl.Callback):
    """The reference: Lightning's grad_norm utility in the hook Lightning documents for it."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append(grad_norm(pl_module, 2)["grad_2.0_norm_total"])


def _plain_loop(data, run_dir):
    """The same training written as a plain PyTorch loop with trainspect.attach: the reference run."""
    model = TinyClassifier()
    optimizer = model.configure_optimizers()
    inspector = trainspect.attach(model, optimizer, model.loss_fn, run_dir=run_dir, instruments=INSTRUMENTS,
                                  progress=False)
    xs, ys = data.tensors
    for step in range(STEPS):
        optimizer.zero_grad()
        with inspector.step() as s:
            for j in range(ACCUMULATE):
                lo = (step * ACCUMULATE + j) * BATCH
                x, y = xs[lo:lo + BATCH], ys[lo:lo + BATCH]
                s.add_batch(x, y)
                (model.loss_fn(model.net(x), y) / ACCUMULATE).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # after the block: trainspect saw them unclipped
        optimizer.step()
    inspector.close()
    return trainspect.open_run(run_dir)


def test_callback_records_the_run(tmp_path):
    g = torch.Generator().manual_seed(1)
    n = ACCUMULATE * BATCH * STEPS
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH)
    model, reference = TinyClassifier(), LightningsOwnGradNorm()
    callback = TrainspectCallback(run_dir=tmp_path / "run", instruments=INSTRUMENTS, log_to_lightning=True)
    logger = pl.loggers.CSVLogger(tmp_path / "logs", name="", version="")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, accumulate_grad_batches=ACCUMULATE, gradient_clip_val=CLIP,
        callbacks=[reference, callback], logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(model, loader)

    run = trainspect.open_run(tmp_path / "run")
    steps, norms = run.scalar("grad_norm")
    np.testing.assert_array_equal(steps, np.arange(STEPS))
    np.testing.assert_allclose(norms, reference.norms, rtol=1e-5)  # before clipping, like Lightning's own
    assert (norms > 10 * CLIP).all()
    _, loss = run.scalar("loss")  # the loss of the whole step: mean over its equal-sized micro-batches
    np.testing.assert_allclose(loss, np.array(model.micro_losses).reshape(STEPS, ACCUMULATE).mean(1), rtol=1e-5)
    assert run.layer_names == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    assert run.meta["loss"] == "CrossEntropyLoss" and run.errors() == []
    _, update = run.scalar("update_size")
    assert (update > 0).all()
    # every value, per-sample statistics over both micro-batches included, equals the plain loop's
    plain = _plain_loop(data, tmp_path / "plain")
    assert set(plain.series_names()) == set(run.series_names())
    for name, info in plain.series_info().items():
        if info["kind"] in ("scalar", "layers"):
            np.testing.assert_allclose(run.series(name).values, plain.series(name).values, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_allclose(np.array(run.histograms(name).counts), np.array(plain.histograms(name).counts),
                                       rtol=1e-5, atol=1e-9, err_msg=name)
    # also sent to Lightning's logger
    with open(tmp_path / "logs" / "metrics.csv") as f:
        logged = [float(r["trainspect/grad_norm"]) for r in csv.DictReader(f) if r.get("trainspect/grad_norm")]
    np.testing.assert_allclose(logged, norms, rtol=1e-6)


class _RankSlices(torch.utils.data.Sampler):
    """Global batch b is samples [b·G, (b+1)·G); rank r of W reads the r-th of W equal slices of it."""

    def __init__(self, n: int, global_batch: int):
        self.n, self.global_batch = n, global_batch

    def __iter__(self):
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        per = self.global_batch // world
        for b in range(self.n // self.global_batch):
            yield from range(b * self.global_batch + rank * per, b * self.global_batch + (rank + 1) * per)

    def __len__(self):
        return self.n


def _fit(data, run_dir, devices: int):
    sampler = _RankSlices(len(data), 2 * BATCH)
    loader = torch.utils.data.DataLoader(data, batch_size=2 * BATCH // devices, sampler=sampler)
    strategy = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = pl.Trainer(accelerator="cpu", devices=devices, max_steps=STEPS, use_distributed_sampler=False,
                         callbacks=[TrainspectCallback(run_dir=run_dir, instruments=INSTRUMENTS)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **strategy)
    trainer.fit(TinyClassifier(), loader)
    return trainspect.open_run(run_dir)


@pytest.mark.slow
def test_lightning_ddp_equals_one_process_on_the_global_batch(tmp_path):
    """Lightning's ddp_spawn strategy, 2 CPU processes (gloo): run with `pytest -m slow tests/integrations`."""
    g = torch.Generator().manual_seed(1)
    n = 2 * BATCH * STEPS
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    single = _fit(data, tmp_path / "single", devices=1)
    ddp = _fit(data, tmp_path / "ddp", devices=2)
    assert ddp.errors() == [] and set(ddp.series_names()) == set(single.series_names())
    for name, info in single.series_info().items():
        if info["kind"] in ("scalar", "layers"):
            np.testing.assert_allclose(ddp.series(name).values, single.series(name).values, rtol=1e-5, err_msg=name)
