"""``trainspect preflight module:function`` on a user's file."""

from __future__ import annotations

import textwrap

import pytest
import torch

from trainspect.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

SETUP = """
import torch
from torch import nn


def setup():
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    y = x[:, :2].argmax(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2){tail})
    return model, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-2), (x, y)
"""


def test_cli_runs_a_users_setup(tmp_path, capsys):
    path = tmp_path / "good.py"
    path.write_text(textwrap.dedent(SETUP.format(tail="")))
    assert main(["preflight", f"{path}:setup", "--overfit-steps", "150"]) == 0
    out = capsys.readouterr().out
    assert "ok    gradients" in out and "ready to train" in out


def test_cli_fails_on_a_broken_setup(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(SETUP.format(tail=", nn.Softmax(dim=1)")))
    assert main(["preflight", f"{path}:setup", "--overfit-steps", "150", "--skip", "gradients"]) == 1
    assert "cannot-overfit-one" in capsys.readouterr().out


def test_cli_reports_a_bad_target(tmp_path, capsys):
    assert main(["preflight", "no_such_module_xyz:setup"]) == 2
    assert "error" in capsys.readouterr().err
