import pytest
import torch

from trainspect.functional.connectivity import (
    bezier_point,
    interpolation_barrier,
    linear_point,
    mode_connectivity_peak,
    mode_connectivity_signed,
)


def test_bezier_curve_passes_through_the_endpoints_and_has_the_quadratic_form():
    w0, w1, th = {"a": torch.tensor([0.0, 2.0])}, {"a": torch.tensor([4.0, 2.0])}, {"a": torch.tensor([1.0, 10.0])}
    assert torch.equal(bezier_point(w0, th, w1, 0.0)["a"], w0["a"])
    assert torch.equal(bezier_point(w0, th, w1, 1.0)["a"], w1["a"])
    t = 0.3
    expected = (1 - t) ** 2 * w0["a"] + 2 * t * (1 - t) * th["a"] + t**2 * w1["a"]
    assert torch.allclose(bezier_point(w0, th, w1, t)["a"], expected)
    # with the control point at the midpoint the Bezier curve is the straight line
    mid = {"a": 0.5 * (w0["a"] + w1["a"])}
    assert torch.allclose(bezier_point(w0, mid, w1, t)["a"], linear_point(w0, w1, t)["a"])


def test_mode_connectivity_summaries():
    errors = [2.0, 5.0, 30.0, 4.0, 1.0]
    assert mode_connectivity_peak(errors) == -30.0  # endpoints excluded
    assert mode_connectivity_signed(errors) == pytest.approx(1.5 - 30.0)
    assert mode_connectivity_signed([10.0, 4.0, 3.0, 5.0, 10.0]) == pytest.approx(7.0)  # dips below: positive
    assert interpolation_barrier([1.0, 1.0, 1.0]) == 0.0
    assert interpolation_barrier([0.0, 10.0, 2.0]) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        mode_connectivity_peak([1.0, 2.0])
