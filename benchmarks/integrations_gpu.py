"""GPU check of the mixed-precision paths (needs CUDA): float16 autocast + GradScaler, plain and Lightning.

1. Plain loop, ``torch.autocast("cuda", float16)`` + ``torch.amp.GradScaler``, an inf injected at one step:
   trainspect's grad_norm must equal the unscaled gradient norm computed by hand, and the skipped step must
   be recorded as skipped.
2. Lightning ``precision="16-mixed"`` (its MixedPrecision plugin owns the GradScaler): trainspect's grad_norm
   at ``on_before_optimizer_step`` must equal Lightning's own ``grad_norm`` utility there (unscaled).

Run:  python benchmarks/integrations_gpu.py        (prints one line per check, exits 1 on a mismatch)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import trainspect

STEPS, POISON = 5, 2


def plain_amp(tmp: Path) -> bool:
    def train(attach: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).cuda()
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**14)
        ins = trainspect.attach(model, opt, loss_fn, grad_scaler=scaler, run_dir=tmp / "amp", instruments="cheap",
                                progress=False, overwrite=True) if attach else None
        g = torch.Generator().manual_seed(3)
        norms, skipped = [], []
        for step in range(STEPS):
            x, y = torch.randn(16, 32, generator=g).cuda(), torch.randint(0, 4, (16,), generator=g).cuda()
            if step == POISON:
                x[0, 0] = float("inf")
            opt.zero_grad()
            cm = ins.step(x, y) if ins else torch.enable_grad()
            with cm:
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
            scaler.unscale_(opt)
            norms.append(float(torch.cat([p.grad.double().reshape(-1) for p in model.parameters()]).norm()))
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped.append(scaler.get_scale() < scale)
        if ins:
            ins.close()
        return np.array(norms), np.array(skipped)

    ref_norms, ref_skipped = train(False)
    train(True)
    run = trainspect.open_run(tmp / "amp")
    norms = run.scalar("grad_norm")[1]
    finite = np.isfinite(ref_norms)
    ok = (np.allclose(norms[finite], ref_norms[finite], rtol=1e-5)
          and run.scalar("amp_step_skipped")[1].tolist() == ref_skipped.astype(float).tolist()
          and bool(ref_skipped[POISON]) and run.steps()["optimizer_stepped"][POISON] == 0)
    print(f"plain fp16 + GradScaler: grad_norm {norms.round(4).tolist()} vs unscaled reference "
          f"{ref_norms.round(4).tolist()}; skipped {run.scalar('amp_step_skipped')[1].tolist()} -> "
          f"{'OK' if ok else 'MISMATCH'}")
    return ok


def lightning_16_mixed(tmp: Path) -> bool:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.grads import grad_norm

    from trainspect.integrations.lightning import TrainspectCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, i):
            return self.loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Reference(pl.Callback):
        def __init__(self):
            self.norms: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.norms.append(grad_norm(pl_module, 2)["grad_2.0_norm_total"])

    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 32, generator=g), torch.randint(0, 4, (64,), generator=g))
    ref = Reference()
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=4, accumulate_grad_batches=2,
                         callbacks=[ref, TrainspectCallback(run_dir=tmp / "lit", instruments="cheap", overwrite=True)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    norms = trainspect.open_run(tmp / "lit").scalar("grad_norm")[1]
    ok = len(norms) == len(ref.norms) == 4 and np.allclose(norms, ref.norms, rtol=1e-4)
    print(f"Lightning 16-mixed: grad_norm {norms.round(4).tolist()} vs Lightning's grad_norm "
          f"{np.round(ref.norms, 4).tolist()} -> {'OK' if ok else 'MISMATCH'}")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = [plain_amp(Path(tmp)), lightning_16_mixed(Path(tmp))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
