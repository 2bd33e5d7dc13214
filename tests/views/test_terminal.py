"""The terminal view: the live panel's content, findings printed once, the closing summary."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from torch import nn

import trainspect
from tests.conftest import batches, tiny_mlp, train
from trainspect.checks import Finding
from trainspect.views.terminal import TerminalView, format_number


def test_live_panel_shows_progress_eta_and_key_numbers(run_dir):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    view = TerminalView(progress=True, total_steps=40, console=console)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False, sinks=[view])
    train(inspector, model, optimizer, loss_fn, batches(10))
    panel = Console(file=io.StringIO(), width=100, record=True)
    panel.print(view._render())
    text = panel.export_text()
    assert "10/40 steps" in text and "ETA" in text
    assert "loss" in text and format_number(view.latest["loss"]) in text
    assert "grad_norm" in text
    finding = Finding("test-code", "warning", "something odd", "because", location="0 (Linear)")
    inspector.add_finding(finding)
    inspector.add_finding(Finding("test-code", "warning", "something odd", "because", location="0 (Linear)"))
    inspector.close()
    printed = out.getvalue()
    assert printed.count("test-code") == 1  # announced once, not at every occurrence


def test_quiet_mode_prints_only_the_summary(run_dir, capsys):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inspector = trainspect.attach(model, optimizer, loss_fn, run_dir=run_dir, progress=False)
    train(inspector, model, optimizer, loss_fn, batches(3))
    assert capsys.readouterr().out == ""
    inspector.close()
    out = capsys.readouterr().out
    assert "3 steps recorded" in out and "no findings" in out


def test_format_number():
    assert format_number(0.5) == "0.5"
    assert format_number(1.5e-6) == "1.500e-06"
    assert format_number(float("nan")) == "nan" and format_number(float("-inf")) == "-inf"
