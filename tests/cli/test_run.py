"""``trainspect run``: an unmodified script runs with trainspect attached, or trainspect refuses clearly."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import trainspect
from trainspect.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_mlp.py"


def test_runs_the_unmodified_example_and_records_every_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", "--run-dir", str(run_dir), "--quiet", "--instruments", "cheap",
                 str(EXAMPLE), "--epochs", "2", "--batch-size", "100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "attached to model Sequential" in err and "optimizer SGD" in err and "CrossEntropyLoss" in err
    # the script's own output is intact; its last printed loss is the loss trainspect recorded last
    last_printed = float(re.findall(r"epoch 2: loss ([0-9.]+)", out)[0])
    run = trainspect.open_run(run_dir)
    steps, loss = run.scalar("loss")
    n_steps = 2 * 6  # 600 samples, batches of 100, 2 epochs; the first step finds the model (not recorded)
    np.testing.assert_array_equal(steps, np.arange(n_steps - 1))
    assert abs(loss[-1] - last_printed) < 5e-4
    assert run.layer_names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert run.meta["optimizer"] == "SGD" and run.meta["config"]["attached_by"] == "trainspect run"
    _, update = run.scalar("update_size")
    assert len(update) == n_steps - 1 and (update > 0).all()
    assert run.errors() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (  # a GAN-like script: two optimizers
            """
            a, b = nn.Linear(2, 1), nn.Linear(2, 1)
            opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
            loss_fn = nn.MSELoss()
            for _ in range(3):
                for model, opt in ((a, opt_a), (b, opt_b)):
                    opt.zero_grad()
                    loss_fn(model(x), y).backward()
                    opt.step()
            """,
            "two optimizers",
        ),
        (  # a functional loss: nothing to observe
            """
            model = nn.Linear(2, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
            """,
            "no loss module",
        ),
    ],
    ids=["two-optimizers", "no-loss-module"],
)
def test_refuses_with_a_clear_message_and_the_script_runs_on(tmp_path, capsys, body, reason):
    script = tmp_path / "train.py"
    script.write_text("import torch\nfrom torch import nn\nx, y = torch.randn(8, 2), torch.randn(8, 1)\n"
                      + textwrap.dedent(body) + "print('script finished')\n")
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--quiet", str(script)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "script finished" in out
    assert f"not attaching: {reason}" in err and "trainspect.attach(" in err


AMP_ACCUMULATION_SCRIPT = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
loss_fn = nn.CrossEntropyLoss()
for step in range(6):
    opt.zero_grad()
    losses = []
    for micro in range(2):
        x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        if step == 3 and micro == 1:
            x[0, 0] = float("inf")  # inf/NaN gradients: the scaler skips this step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        losses.append(loss.item())
        scaler.scale(loss / 2).backward()
    print("step", step, "scale", scaler.get_scale(), "loss", sum(losses) / 2)
    scaler.step(opt)
    scaler.update()
"""


def test_mixed_precision_and_accumulation_in_an_unmodified_script(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(AMP_ACCUMULATION_SCRIPT)
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--quiet", "--instruments", "cheap", str(script)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "GradScaler" in err
    printed = [line.split() for line in out.splitlines() if line.startswith("step ")]
    scales = np.array([float(p[3]) for p in printed])[1:]  # the script's first step finds the model
    losses = np.array([float(p[5]) for p in printed])[1:]
    run = trainspect.open_run(tmp_path / "run")
    np.testing.assert_array_equal(run.scalar("loss_scale")[1], scales)
    np.testing.assert_array_equal(run.scalar("amp_step_skipped")[1], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(run.steps()["optimizer_stepped"], [1, 1, 0, 1, 1])
    finite = np.isfinite(losses)
    np.testing.assert_allclose(run.scalar("loss")[1][finite], losses[finite], rtol=1e-6)  # both micro-batches
