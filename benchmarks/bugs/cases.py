"""The cases: faulty setups (fault kind, expected codes, plain-run verification) and healthy controls."""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmarks.bugs.common import (
    Case,
    GRUClassifier,
    PlainResult,
    Setup,
    TinyTransformer,
    bias_init,
    cnn,
    data,
    mlp,
    scale_init,
)

CASES: list[Case] = []


def case(name: str, fault: str, family: str, expected: tuple[str, ...] = (), verify=None, steps: int = 300):  # type: ignore[no-untyped-def]
    def register(build):  # type: ignore[no-untyped-def]
        CASES.append(Case(name, fault, family, build, expected, verify, steps))
        return build

    return register


# -- plain-run verifications -----------------------------------------------------------------------------
def no_learning(r: PlainResult) -> tuple[bool, str]:
    end = r.end()
    ok = not math.isfinite(end) or end > 0.9 * r.start() or (r.val_acc and r.val_acc[-1] < 0.5)
    return bool(ok), f"loss {r.start():.3g} → {end:.3g}, val acc {r.val_acc[-1] if r.val_acc else float('nan'):.2f}"


def nonfinite(r: PlainResult) -> tuple[bool, str]:
    first = next((i for i, v in enumerate(r.losses) if not math.isfinite(v)), None)
    return first is not None, f"first NaN/inf loss at step {first}"


def diverges(r: PlainResult) -> tuple[bool, str]:
    end = r.end()
    ok = r.nonfinite or not math.isfinite(end) or end > r.start()
    return ok, f"loss {r.start():.3g} → {end:.3g}{' (NaN)' if r.nonfinite else ''}"


def blows_up(r: PlainResult) -> tuple[bool, str]:
    peak = max((v for v in r.losses if math.isfinite(v)), default=float("inf"))
    return r.nonfinite or peak > 10 * r.losses[0], f"loss {r.losses[0]:.3g} at step 0, peak {peak:.3g}"


def negative_loss(r: PlainResult) -> tuple[bool, str]:
    return min(r.losses) < 0, f"loss goes down to {min(r.losses):.3g} (a likelihood loss cannot be negative)"


def hurts(threshold: float = 0.8):  # type: ignore[no-untyped-def]
    """The fault costs accuracy: final validation accuracy below ``threshold`` (healthy runs reach > 0.9)."""

    def verify(r: PlainResult) -> tuple[bool, str]:
        acc = r.val_acc[-1] if r.val_acc else float("nan")
        return (not math.isfinite(acc)) or acc < threshold, f"val acc {acc:.2f} (healthy > 0.9)"

    return verify


def _activation_share(r: PlainResult, kinds: tuple[type, ...], test) -> float:  # type: ignore[no-untyped-def]
    shares = []

    def hook(m, args, out):  # type: ignore[no-untyped-def]
        x = args[0]
        flat = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() == 4 else x.reshape(-1, x.shape[-1]).T
        shares.append(float(test(flat).float().mean()))

    handles = [m.register_forward_hook(hook) for m in r.model.modules() if isinstance(m, kinds)]
    x = data().x_train[:256]
    if r.setup.transform is not None:
        x = r.setup.transform(x)
    with torch.no_grad():
        r.model(x)
    for h in handles:
        h.remove()
    return max(shares) if shares else 0.0


def dead_units(r: PlainResult) -> tuple[bool, str]:
    share = _activation_share(r, (nn.ReLU,), lambda f: (f > 0).float().mean(1) < 0.01)
    return share > 0.5, f"dead share of worst ReLU layer {share:.2f} (after training)"


def saturated_units(r: PlainResult) -> tuple[bool, str]:
    share = _activation_share(r, (nn.Tanh, nn.Sigmoid), lambda f: (f.abs() > 3).float().mean(1) >= 0.8)
    return share > 0.5, f"saturated share of worst layer {share:.2f} (after training)"


def grads_vanish(r: PlainResult) -> tuple[bool, str]:
    g = [(n, v) for n, v in r.first_grad_norms.items() if n.endswith("weight")]
    params = dict(r.model.named_parameters())
    rel = [v / float(params[n].norm()) for n, v in g]
    ratio = rel[0] / rel[-1]
    return ratio < 1e-3, f"relative grad first/last weight at step 0: {ratio:.2g}"


def grads_explode(r: PlainResult) -> tuple[bool, str]:
    base = sorted(r.grad_norms[:10])[5]
    peak = max((v for v in r.grad_norms if math.isfinite(v)), default=float("inf"))
    ok = r.nonfinite or peak > 100 * base or base > 1e3
    return ok, f"grad norm {base:.3g} at start, peak {peak:.3g}{' then NaN' if r.nonfinite else ''}"


def grads_grow(r: PlainResult) -> tuple[bool, str]:
    a, b = sorted(r.grad_norms[:10])[5], sorted(r.grad_norms[-10:])[5]
    return b > 5 * a or not math.isfinite(b), f"grad norm {a:.3g} → {b:.3g} (accumulating)"


def frozen_params(names: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def verify(r: PlainResult) -> tuple[bool, str]:
        torch.manual_seed(0)
        fresh = r.setup  # the trained model; compare with its initial copy kept by the build
        init = getattr(fresh, "initial", None)
        params = dict(r.model.named_parameters())
        same = [n for n in names if init is not None and torch.equal(params[n].detach(), init[n])]
        return len(same) == len(names), f"unchanged after training: {same}"

    return verify


def labels_unlearnable(r: PlainResult) -> tuple[bool, str]:
    fell = r.end() < 0.9 * r.start()
    acc = r.val_acc[-1]
    return fell and acc < 0.2, f"train loss {r.start():.3g} → {r.end():.3g}, val acc {acc:.2f}"


def oscillates(r: PlainResult) -> tuple[bool, str]:
    losses = torch.tensor(r.losses)
    jumps = int((losses.diff().abs() > 0.5 * r.losses[0]).sum())
    acc = r.val_acc[-1]
    return jumps >= 16 and acc < 0.8, f"{jumps} jumps > 0.5·L0 in {len(losses)} steps, val acc {acc:.2f}"


def _keep_initial(setup: Setup) -> Setup:
    setup.initial = {n: p.detach().clone() for n, p in setup.model.named_parameters()}  # type: ignore[attr-defined]
    return setup


# -- faulty cases ------------------------------------------------------------------------------------------
@case("mlp-deep-large-init", "exploding gradients", "mlp",
      ("exploding-gradients", "nonfinite-loss", "nonfinite-gradients", "loss-divergence"), grads_explode)
def _():
    model = scale_init(mlp((64,) * 8), 1.6)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss())


@case("mlp-deep-sigmoid", "vanishing gradients", "mlp", ("vanishing-gradients",), grads_vanish)
def _():
    model = mlp((32,) * 10, act=nn.Sigmoid)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())


@case("mlp-deep-tanh-small-init", "vanishing gradients", "mlp", ("vanishing-gradients",), grads_vanish)
def _():
    model = scale_init(mlp((64,) * 8, act=nn.Tanh), 0.3)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss())


@case("mlp-negative-bias", "dead ReLU", "mlp", ("dead-relu",), dead_units)
def _():
    model = bias_init(mlp((128, 64)), -3.0)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@case("cnn-negative-bias", "dead ReLU", "cnn", ("dead-relu",), dead_units)
def _():
    model = bias_init(cnn(), -2.0)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


def _normal_init(model: nn.Module, std: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)  # std 1-4 instead of 1/sqrt(fan_in)
    return model


@case("mlp-tanh-std2-init", "saturated activations", "mlp", ("saturated-activations",), saturated_units)
def _():
    model = _normal_init(mlp((128, 64), act=nn.Tanh), 2.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


@case("mlp-sigmoid-std4-init", "saturated activations", "mlp", ("saturated-activations",), saturated_units)
def _():
    model = _normal_init(mlp((128, 64), act=nn.Sigmoid), 4.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


@case("mlp-lr-too-high", "learning rate too high", "mlp",
      ("loss-divergence", "nonfinite-loss", "update-too-large", "loss-oscillation"), blows_up)
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=8.0), nn.CrossEntropyLoss())


@case("cnn-sgd-lr-too-high", "learning rate too high", "cnn",
      ("loss-divergence", "nonfinite-loss", "update-too-large", "loss-oscillation"), hurts(0.5))
def _():
    model = cnn()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1.0), nn.CrossEntropyLoss())


@case("transformer-lr-too-high", "learning rate too high", "transformer",
      ("loss-divergence", "nonfinite-loss", "update-too-large", "loss-oscillation"), hurts(0.5))
def _():
    model = TinyTransformer()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1.0), nn.CrossEntropyLoss())


@case("mlp-lr-too-low", "learning rate too low", "mlp", ("update-too-small", "loss-plateau"), no_learning)
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-5), nn.CrossEntropyLoss())


@case("gru-lr-too-low", "learning rate too low", "gru", ("update-too-small", "loss-plateau"), no_learning)
def _():
    model = GRUClassifier()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-7), nn.CrossEntropyLoss())


class LogFeatures(nn.Module):
    """A 'log-features' layer without an epsilon: log(0) = -inf after a ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class SqrtFeatures(nn.Module):
    """A 'sqrt-compression' layer applied where values can be negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


@case("mlp-log-of-relu", "NaN/inf", "mlp", ("nonfinite-loss", "nonfinite-gradients"), nonfinite)
def _():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), LogFeatures(), nn.Linear(64, 10))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


@case("cnn-sqrt-of-conv", "NaN/inf", "cnn", ("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters"),
      nonfinite)
def _():
    model = cnn()
    model.insert(2, SqrtFeatures())  # sqrt of the conv output, before the ReLU: negative values give NaN
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())


@case("mlp-no-zero-grad", "missing zero_grad", "mlp", ("gradient-accumulation",), grads_grow)
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), zero_grad=False)


@case("gru-no-zero-grad", "missing zero_grad", "gru", ("gradient-accumulation",), grads_grow)
def _():
    model = GRUClassifier()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), zero_grad=False)


@case("mlp-softmax-output", "double softmax", "mlp", ("double-softmax",), hurts(0.9))
def _():
    model = mlp()
    model.append(nn.Softmax(dim=1))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss())


@case("transformer-softmax-output", "double softmax", "transformer", ("double-softmax",), hurts(0.9))
def _():
    model = TinyTransformer(softmax_head=True)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss())


@case("mlp-nll-on-logits", "NLLLoss without log_softmax", "mlp", ("nll-without-log-softmax",), negative_loss)
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.NLLLoss())


@case("mlp-head-not-in-optimizer", "parameter not in optimizer", "mlp", ("parameter-not-in-optimizer",),
      frozen_params(("4.weight", "4.bias")))
def _():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model[4] = nn.Linear(64, 10)  # head replaced after the optimizer was built
    return _keep_initial(Setup(model, opt, nn.CrossEntropyLoss()))


@case("cnn-optimizer-on-features", "parameter not in optimizer", "cnn", ("parameter-not-in-optimizer",),
      frozen_params(("7.weight", "9.weight")))
def _():
    model = cnn()
    opt = torch.optim.Adam(model[:6].parameters(), lr=1e-3)  # built from the conv part only
    return _keep_initial(Setup(model, opt, nn.CrossEntropyLoss()))


class DetachedMLP(nn.Module):
    """The first layer's output is detached ("to save memory"): the first layer never learns."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)).detach()
        return self.fc3(torch.relu(self.fc2(h)))


@case("mlp-detached-layer", "graph cut (no gradient)", "mlp", ("no-gradient",),
      frozen_params(("fc1.weight", "fc1.bias")))
def _():
    model = DetachedMLP()
    return _keep_initial(Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()))


class NoGradEmbedGRU(GRUClassifier):
    """The input projection is computed under torch.no_grad() (copied from inference code)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.proj(x.view(-1, 8, 8))
        _, h = self.gru(x)
        return self.head(h[-1])


@case("gru-no-grad-projection", "graph cut (no gradient)", "gru", ("no-gradient",),
      frozen_params(("proj.weight", "proj.bias")))
def _():
    model = NoGradEmbedGRU()
    return _keep_initial(Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()))


def _one_feature_scaled(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 20] *= 1000.0  # one feature in different units (e.g. metres vs millimetres)
    return x


@case("mlp-feature-in-other-units", "input feature scales", "mlp", ("input-feature-scales",), hurts(0.9))
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(),
                 transform=_one_feature_scaled)


@case("cnn-raw-pixels-x16", "inputs not normalised", "cnn", ("inputs-not-normalized", "input-feature-scales"),
      hurts(0.9))
def _():
    model = cnn()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss(),
                 standardize=False, transform=lambda x: x * 16.0)


@case("mlp-shuffled-labels", "labels not learnable", "mlp", ("labels-not-learnable",), labels_unlearnable,
      steps=400)
def _():
    model = mlp((256, 256))
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss(), shuffle_labels=True)


@case("cnn-shuffled-labels", "labels not learnable", "cnn", ("labels-not-learnable",), labels_unlearnable,
      steps=400)
def _():
    model = cnn(32)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss(), shuffle_labels=True)


@case("mlp-sgd-momentum-oscillates", "loss oscillation", "mlp", ("loss-oscillation", "loss-divergence"),
      oscillates)
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.15, momentum=0.9), nn.CrossEntropyLoss())


@case("cnn-sgd-momentum-oscillates", "loss oscillation", "cnn", ("loss-oscillation", "loss-divergence"),
      oscillates)
def _():
    model = scale_init(cnn(), 2.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss())


# -- healthy controls ----------------------------------------------------------------------------------------
def _healthy(name: str, family: str, steps: int = 300):  # type: ignore[no-untyped-def]
    return case(name, "", family, (), hurts_not, steps)


def hurts_not(r: PlainResult) -> tuple[bool, str]:
    acc = r.val_acc[-1]
    return acc > 0.85, f"val acc {acc:.2f}"


@_healthy("healthy-mlp-adam", "mlp")
def _():
    model = mlp()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@_healthy("healthy-mlp-sgd-momentum", "mlp")
def _():
    model = mlp()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss())


@_healthy("healthy-mlp-tanh-sgd", "mlp")
def _():
    model = mlp((128, 64), act=nn.Tanh)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())


@_healthy("healthy-mlp-bn-dropout-adamw", "mlp")
def _():
    model = mlp((128, 64), batchnorm=True, dropout=0.2)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01), nn.CrossEntropyLoss())


@_healthy("healthy-mlp-accumulate-2", "mlp")
def _():
    model = mlp()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), accumulate=2)


@_healthy("healthy-mlp-frozen-first-layer", "mlp")
def _():
    model = mlp((128, 64))
    model[0].requires_grad_(False)  # deliberate freezing: not trainable, not an alarm
    return Setup(model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3),
                 nn.CrossEntropyLoss())


@_healthy("healthy-cnn-adam", "cnn")
def _():
    model = cnn()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@_healthy("healthy-cnn-sgd", "cnn")
def _():
    model = cnn()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss())


@_healthy("healthy-gru-adam", "gru")
def _():
    model = GRUClassifier()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss())


@_healthy("healthy-transformer-adam", "transformer")
def _():
    model = TinyTransformer()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss())


@_healthy("healthy-mlp-sigmoid-adam", "mlp")
def _():
    model = mlp((64,), act=nn.Sigmoid)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss())
