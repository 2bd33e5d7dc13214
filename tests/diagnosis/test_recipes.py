import torch

from trainspect.diagnosis.metrics import loss_and_error
from trainspect.diagnosis.recipes import RECIPES, corrupt_labels, digits_cnn_width, digits_mlp_width, train_sgd


def test_label_noise_flips_the_expected_share_and_is_deterministic():
    y = torch.arange(10).repeat(1000)
    noisy = corrupt_labels(y, 0.1, 10, seed=3)
    changed = (noisy != y).float().mean().item()
    assert abs(changed - 0.1 * 9 / 10) < 0.01  # a redrawn label keeps its class with probability 1/10
    assert torch.equal(noisy, corrupt_labels(y, 0.1, 10, seed=3))


def test_subsets_are_nested_and_noisy_collection_keeps_clean_test_labels():
    clean, noisy = RECIPES["digits-mlp"].data(), RECIPES["digits-mlp-noisy"].data()
    x_small, _ = clean.subset(0.25)
    x_big, _ = clean.subset(0.5)
    assert torch.equal(x_big[: len(x_small)], x_small)
    assert torch.equal(clean.y_test, noisy.y_test) and not torch.equal(clean.y_train, noisy.y_train)


def test_zoo_models_have_the_width_knob_and_train():
    x = torch.randn(4, 64)
    for make in (digits_mlp_width, digits_cnn_width):
        small, big = make(4), make(8)
        assert small(x).shape == (4, 10)
        assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    data = RECIPES["digits-cnn"].data()
    xs, ys = data.subset(0.25)
    torch.manual_seed(0)
    model = digits_cnn_width(4)
    before = loss_and_error(model, xs, ys).loss
    train_sgd(model, xs, ys, batch_size=32, epochs=10, lr=0.05, seed=0)
    assert loss_and_error(model, xs, ys).loss < 0.7 * before
