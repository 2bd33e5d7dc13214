"""Panel layout from series metadata (shared by the figure and the dashboard)."""

from __future__ import annotations

import math

import numpy as np

from trainspect.views.data import build_panels, clean, column_groups


def _info(kind: str, group: str, **kw: object) -> dict[str, object]:
    return {"kind": kind, "group": group, "instrument": "x", **kw}


def test_scalar_and_its_layer_series_share_a_panel_and_orphans_stand_alone() -> None:
    info = {
        "grad_norm": _info("scalar", "gradients", healthy="finite", log_scale=True),
        "layer_grad_norm": _info("layers", "gradients"),
        "layer_only_thing": _info("layers", "step_size"),
        "hist": _info("histogram", "gradients"),
    }
    panels = {p.key: p for p in build_panels(info)}
    assert set(panels) == {"grad_norm", "layer_only_thing", "hist"}
    assert panels["grad_norm"].series == ["grad_norm", "layer_grad_norm"]
    assert panels["grad_norm"].layers_series == "layer_grad_norm"
    assert panels["grad_norm"].healthy == "finite" and panels["grad_norm"].log_scale
    assert panels["hist"].kind == "histogram"


def test_columns_follow_cockpit_order_and_new_groups_get_their_own_column() -> None:
    info = {
        "c": _info("scalar", "curvature"),
        "loss": _info("scalar", "performance"),
        "n": _info("scalar", "my_new_group"),
        "a": _info("scalar", "step_size"),
    }
    assert column_groups(build_panels(info)) == ["step_size", "curvature", "my_new_group"]


def test_clean_turns_non_finite_numbers_into_null() -> None:
    assert clean(np.array([1.0, math.nan, math.inf])) == [1.0, None, None]
    assert clean(np.array([[1.0, -math.inf]])) == [[1.0, None]]
    assert clean({"a": math.nan, "b": [np.float64(2.0)]}) == {"a": None, "b": [2.0]}
