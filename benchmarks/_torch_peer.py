"""The Torch-Pruning side of ``benchmarks/peers.py``: the torch mirror of the residual CNN,
the Keras training recipe in torch, accuracy, MACs and latency helpers.

``torch`` and ``tp`` (``torch_pruning``) are ``None`` when either is not installed; then
``MISSING`` holds the ImportError and nothing else here may be called.
"""

from __future__ import annotations

import statistics
import time

try:
    import torch
    import torch_pruning as tp
except ImportError as missing:  # pragma: no cover - depends on the environment
    torch = tp = None
    MISSING = missing
else:
    MISSING = None

RATIO = 0.5
WIDTH = 32
BATCH = 32
LEARNING_RATE = 1e-3
#: Keras layer names of the residual CNN that carry weights, in forward order.
CONVS = ("stem", "block1a", "block1b", "dw", "block2a", "block2b")


def torch_residual_cnn(width: int = WIDTH, num_classes: int = 10):
    """The torch mirror of ``tfcompress.models.residual_cnn``, modules named like its layers.

    Keras' BatchNormalization(momentum=0.9, epsilon=1e-3) is torch's momentum=0.1, eps=1e-3.
    """
    nn, functional = torch.nn, torch.nn.functional

    class ResidualCNN(nn.Module):
        def __init__(self):
            super().__init__()

            def conv_bn(prefix, cin, cout, stride=1, groups=1):
                setattr(self, f"{prefix}_conv", nn.Conv2d(cin, cout, 3, stride, 1, groups=groups,
                                                          bias=False))
                setattr(self, f"{prefix}_bn", nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1))

            conv_bn("stem", 1, width)
            conv_bn("block1a", width, width)
            conv_bn("block1b", width, width)
            conv_bn("dw", width, width, groups=width)
            conv_bn("block2a", width, 2 * width, stride=2)
            conv_bn("block2b", 2 * width, 2 * width)
            self.logits = nn.Linear(2 * width, num_classes)

        def unit(self, prefix, x, relu=True):
            x = getattr(self, f"{prefix}_bn")(getattr(self, f"{prefix}_conv")(x))
            return functional.relu(x) if relu else x

        def forward(self, x):
            x = shortcut = self.unit("stem", x)
            x = self.unit("block1b", self.unit("block1a", x), relu=False)
            x = functional.relu(x + shortcut)
            x = self.unit("block2b", self.unit("block2a", self.unit("dw", x)))
            return self.logits(x.mean(dim=(2, 3)))

    return ResidualCNN()


def copy_keras_weights(keras_model, torch_model) -> None:
    """Copies the weights of ``keras_model``: HWIO -> OIHW, (in, out) -> (out, in)."""
    nn = torch.nn
    with torch.no_grad():
        for name, module in torch_model.named_children():
            weights = keras_model.get_layer(name).get_weights()
            if isinstance(module, nn.Conv2d):  # depthwise kernels are (H, W, C, 1) -> (C, 1, H, W)
                axes = (2, 3, 0, 1) if module.groups > 1 else (3, 2, 0, 1)
                module.weight.copy_(torch.from_numpy(weights[0].transpose(axes)))
            elif isinstance(module, nn.BatchNorm2d):
                for tensor, value in zip((module.weight, module.bias, module.running_mean,
                                          module.running_var), weights):
                    tensor.copy_(torch.from_numpy(value))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.from_numpy(weights[0].T))
                module.bias.copy_(torch.from_numpy(weights[1]))


def fit_torch(model, x, y, epochs: int, seed: int) -> None:
    """Keras' ``fit`` recipe in torch: Adam (Keras' epsilon), batch 32, reshuffled each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=1e-7)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH):
            index = order[start:start + BATCH]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()


def torch_accuracy(model, x, y) -> float:
    model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
    return float((logits.argmax(-1).numpy() == y).mean())


def torch_importance():
    """FPGM importance when this Torch-Pruning has it, else L2 magnitude; and its name."""
    if hasattr(tp.importance, "FPGMImportance"):
        return tp.importance.FPGMImportance(), "FPGMImportance"
    return tp.importance.MagnitudeImportance(p=2), "MagnitudeImportance(p=2) (no FPGMImportance)"


def _pruner_class():
    """``MagnitudePruner`` (an alias of ``BasePruner`` in 1.6), else ``BasePruner``."""
    return getattr(tp.pruner, "MagnitudePruner", None) or tp.pruner.BasePruner


def torch_pruner_name():
    """The name of the pruner class :func:`torch_pruner` uses."""
    return "MagnitudePruner" if hasattr(tp.pruner, "MagnitudePruner") else "BasePruner"


def torch_pruner(model, example):
    """A one-shot Torch-Pruning pruner at ``RATIO`` (building it traces the dependency graph)."""
    return _pruner_class()(model, example, importance=torch_importance()[0],
                           pruning_ratio=RATIO, ignored_layers=[model.logits])


def conv_linear_macs(model, example) -> int:
    """Conv + Linear MACs of one forward pass, the definition of ``tfcompress.count_macs``."""
    total, hooks = [0], []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            total[0] += output.numel() // output.shape[0] * kernel
        else:
            total[0] += module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        model(example)
    for handle in hooks:
        handle.remove()
    return total[0]


def torch_latency(models, x, runs: int, warmup: int = 10):
    """(median, min) ms per eager forward of each model, one thread, interleaved rounds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = [[] for _ in models]
    try:
        with torch.inference_mode():
            for round_index in range(warmup + runs):
                for k in range(len(models)):
                    i = (round_index + k) % len(models)
                    start = time.perf_counter_ns()
                    models[i](x)
                    if round_index >= warmup:
                        times[i].append((time.perf_counter_ns() - start) / 1e6)
    finally:
        torch.set_num_threads(threads)
    return [(statistics.median(t), min(t)) for t in times]


def torch_channels(model):
    return [getattr(model, f"{name}_bn").num_features for name in CONVS]
