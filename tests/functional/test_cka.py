import pytest
import torch

from trainspect.functional.cka import linear_cka, linear_cka_gram, mixup_inputs


def _random(n, p, seed):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one():
    x = _random(50, 7, 0)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _random(60, 5, 1), _random(60, 8, 2) + _random(60, 1, 3)
    q, _ = torch.linalg.qr(_random(8, 8, 4))
    base = linear_cka(x, y).item()
    assert linear_cka(x, 3.7 * y @ q).item() == pytest.approx(base, rel=1e-10)
    assert linear_cka(x @ torch.linalg.qr(_random(5, 5, 5))[0], y).item() == pytest.approx(base, rel=1e-10)
    assert 0.0 < base < 1.0


def test_feature_space_form_equals_the_gram_definition():
    x, y = _random(40, 4, 6), _random(40, 10, 7)
    y[:, :4] += 2 * x  # partly shared
    assert linear_cka(x, y).item() == pytest.approx(linear_cka_gram(x, y).item(), rel=1e-10)


def test_cka_is_not_invariant_to_a_general_linear_map():
    x = _random(80, 6, 8)
    a = _random(6, 6, 9) + 3 * torch.eye(6, dtype=torch.float64)
    a[0, 0] = 25.0  # stretches one direction: not orthogonal
    assert linear_cka(x, x @ a).item() < 0.99


def test_bad_shapes_and_constant_inputs_are_rejected():
    with pytest.raises(ValueError, match="same n inputs"):
        linear_cka(_random(5, 2, 0), _random(6, 2, 0))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 2), _random(5, 2, 0))


def test_mixup_mixes_each_row_with_a_partner_of_the_batch():
    x = torch.arange(20.0).reshape(10, 2)
    g = torch.Generator().manual_seed(0)
    m = mixup_inputs(x, 16.0, g)
    # each row is λ x_i + (1 − λ) x_π(i): the batch mean is preserved exactly
    assert torch.allclose(m.mean(0), x.mean(0))
    assert not torch.allclose(m, x)
    with pytest.raises(ValueError):
        mixup_inputs(x, 0.0, g)
