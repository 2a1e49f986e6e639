"""Shared checks for the pruning tests: random statistics, exactness, TFLite parity."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from tfcompress._keras import flavour_of, input_names, is_model, keras
from tfcompress.pruning import (
    ChannelGraph,
    apply_masks,
    count_macs,
    graph_macs,
    graph_params,
    rebuild,
    select_masks,
)

#: Smallest input side each applications family accepts (default 32).
MIN_SIDE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetLarge": 32}


def application_names(K=keras) -> list:
    """Every model constructor exported by ``K.applications`` (``K``: tf_keras or Keras 3)."""
    apps = K.applications
    return sorted(n for n, f in vars(apps).items() if inspect.isfunction(f) and n[0].isupper())


def build_application(name: str, side: Optional[int] = None, K=keras):
    """``name`` from ``K.applications`` with random weights (seeded: the same on every run),
    a small input, 10 logits (no softmax) where supported."""
    K.utils.set_random_seed(0)
    fn = getattr(K.applications, name)
    params = inspect.signature(fn).parameters
    kwargs: Dict[str, Any] = {"weights": None, "classes": 10}
    side = side or MIN_SIDE.get(name, 32)
    kwargs["input_shape"] = (side, side, 3)
    if "classifier_activation" in params:
        kwargs["classifier_activation"] = None
    if "alpha" in params and name.startswith("MobileNet"):
        kwargs["alpha"] = 0.35 if name == "MobileNetV2" else 0.75 if "V3" in name else 0.25
    if "include_preprocessing" in params:
        kwargs["include_preprocessing"] = False
    return fn(**kwargs)


def _np(tensor) -> np.ndarray:
    """A model output as numpy (a tf.Tensor in tf_keras, a backend tensor in Keras 3)."""
    return np.asarray(tensor)


def randomize(model, seed: int = 0) -> None:
    """Random BatchNorm statistics/affine, biases and per-channel scales: nothing is
    trivially zero, so a wrong slice shows up in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in _leaves(model):
        weights = layer.get_weights()
        if not weights:
            continue
        names = [getattr(w, "path", w.name).split("/")[-1].split(":")[0] for w in layer.weights]
        new = []
        for name, value in zip(names, weights):
            shape = value.shape
            if name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif name in ("moving_mean", "beta", "bias"):
                value = rng.normal(0.0, 0.2, shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            new.append(np.asarray(value, np.float32))
        layer.set_weights(new)


def _leaves(model):
    for layer in model.layers:
        if is_model(layer):
            yield from _leaves(layer)
        else:
            yield layer


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.abs(a).max()), 1e-6)
    return float(np.abs(a - b).max()) / scale


def tflite_run(model, x: np.ndarray) -> np.ndarray:
    """Converts ``model`` to a float TFLite flatbuffer and runs it on ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # either flavour
    interpreter = Interpreter(model_content=converter.convert())
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def check_pruned(model, ratio: float = 0.3, tflite: bool = True,
                 seed: int = 0, expect_change: bool = True,
                 criterion: str = "fpgm", x: Optional[np.ndarray] = None,
                 keep: Optional[Dict[str, Any]] = None,
                 per_layer: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Masks ``model`` at ``ratio`` (and ``per_layer``: 1.0 cuts a residual branch),
    rebuilds it and asserts the contract; returns stats (``x``: the input batch, default 2
    uniform [-1, 1) samples; ``keep``: a dict that receives the ``graph``, ``masks`` and
    ``slim`` model)."""
    randomize(model, seed)
    if x is None:
        x = np.random.default_rng(seed).uniform(-1, 1, (2,) + tuple(model.input_shape[1:]))
        x = x.astype(np.float32)
    graph = ChannelGraph(model)
    masks = select_masks(graph, ratio, criterion=criterion, per_layer=per_layer)
    macs, params = graph_macs(graph), graph_params(graph)
    assert params == model.count_params()
    slim = rebuild(model, masks)
    if keep is not None:
        keep.update(graph=graph, masks=masks, slim=slim)
    original = _np(model(x, training=False))
    apply_masks(model, masks)
    masked = _np(model(x, training=False))
    if expect_change and masks.pruned_ratio > 0:  # not vacuous: pruning changed the outputs
        assert relative_error(original, masked) > 1e-6
    out = _np(slim(x, training=False))
    parity = check_parity(model, slim, x, masked, out)
    assert type(slim) is type(model)  # the same flavour and class back
    assert slim.output_shape == model.output_shape
    assert input_names(slim) == input_names(model)
    slim_macs, slim_params = count_macs(slim), slim.count_params()
    assert slim_macs == graph_macs(graph, masks) and slim_params == graph_params(graph, masks)
    prunable = [g for g in graph.groups if g.prunable]
    if masks.pruned_ratio > 0:
        assert slim_macs < macs and slim_params < params
    else:
        assert slim_macs == macs and slim_params == params
    stats = {"macs": macs, "macs_kept": slim_macs / macs, "params_kept": slim_params / params,
             "groups": len(graph.groups), "pruned_groups": sum(
                 len(masks.kept[g.id]) < g.size for g in prunable),
             "barriers": sorted({reason for bs in graph.barriers.values() for _, reason in bs
                                 if reason not in ("model input", "reaches a model output")}),
             **parity}
    if tflite:
        lite = tflite_run(slim, x)
        stats["tflite_error"] = relative_error(out, lite)
        if "error_float64" not in parity:  # else float32 cannot resolve 1e-4 (see above)
            assert stats["tflite_error"] <= TOLERANCE, (
                f"TFLite differs: {stats['tflite_error']:.2e}")
    return stats


#: Relative tolerance of every parity check (masked vs rebuilt, Keras vs TFLite).
TOLERANCE = 1e-4
#: Relative output change from one-ulp weight noise above which float32 rounding alone can
#: approach TOLERANCE (``benchmarks/resnetrs_conditioning.py``: ResNetRS420 with random
#: BatchNorm statistics reaches 0.3); masked vs rebuilt is then compared in float64.
ILL_CONDITIONED = 1e-5


def check_parity(model, slim, x, masked, out) -> Dict[str, float]:
    """Asserts masked == rebuilt within TOLERANCE: in float32, or, when float32 fails and the
    masked model is too ill-conditioned for float32 to resolve TOLERANCE, in float64."""
    stats = {"error": relative_error(masked, out)}
    if stats["error"] <= TOLERANCE:
        return stats
    stats["ulp_noise"] = ulp_noise_effect(model, x)
    message = f"masked and rebuilt outputs differ: {stats['error']:.2e}"
    assert stats["ulp_noise"] > ILL_CONDITIONED, message + (
        f" (one-ulp weight noise moves the output by only {stats['ulp_noise']:.1e})")
    x64 = x.astype(np.float64)
    stats["error_float64"] = relative_error(_np(float64_twin(model)(x64, training=False)),
                                            _np(float64_twin(slim)(x64, training=False)))
    assert stats["error_float64"] <= TOLERANCE, message + (
        f", in float64 too: {stats['error_float64']:.2e}")
    return stats


def ulp_noise_effect(model, x: np.ndarray, seed: int = 0) -> float:
    """Relative output change when each float32 weight moves by one ulp (random sign): the
    size of the rounding error float32 itself makes on ``model`` (weights are restored)."""
    rng = np.random.default_rng(seed)
    weights = model.get_weights()
    before = _np(model(x, training=False))
    model.set_weights([np.nextafter(w, np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf)
                                    .astype(w.dtype)) for w in weights])
    after = _np(model(x, training=False))
    model.set_weights(weights)
    return relative_error(before, after)


def float64_twin(model):
    """The same architecture with float64 layers and the same weight values."""
    def cast(node):
        if isinstance(node, dict):
            return {key: cast(value) for key, value in node.items()}
        if isinstance(node, list):
            return [cast(value) for value in node]
        return "float64" if node == "float32" else node

    backend = flavour_of(model).module.backend
    previous = backend.floatx()
    backend.set_floatx("float64")
    try:
        twin = type(model).from_config(cast(model.get_config()))
    finally:
        backend.set_floatx(previous)
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return twin
