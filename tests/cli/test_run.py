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
