"""The pruning path is model config + numpy: on Keras 3's JAX backend it is exact too, and
QAT and TFLite export, which run TensorFlow graphs, say so instead of failing deep inside.

Keras reads ``KERAS_BACKEND`` once, at import, so each check runs in a fresh interpreter.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="jax is not installed (it is in the test extra)")

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    sys.path.insert(0, os.path.join({tests!r}, "pruning"))
    from _exactness import randomize, relative_error
    from tfcompress.models import residual_cnn
    from tfcompress.pruning import (ChannelGraph, Masks, apply_masks, count_macs, fpgm_masks,
                                    graph_macs, rebuild)

    def check(model):
        randomize(model)
        x = np.random.default_rng(0).uniform(-1, 1, (2,) + tuple(model.input_shape[1:]))
        x = x.astype("float32")
        masks = Masks.from_json(fpgm_masks(model, 0.3).to_json())  # JSON round trip too
        graph = ChannelGraph(model)
        slim = rebuild(model, masks)
        before = np.asarray(model(x))
        apply_masks(model, masks)
        masked, out = np.asarray(model(x)), np.asarray(slim(x))
        return {{"backend": keras.backend.backend(), "slim_class": type(slim).__module__,
                 "changed": relative_error(before, masked), "error": relative_error(masked, out),
                 "macs": count_macs(model), "slim_macs": count_macs(slim),
                 "predicted_macs": graph_macs(graph, masks), "probed": graph.probed,
                 "params": model.count_params(), "slim_params": slim.count_params()}}

    class ReflectionPadding2D(keras.layers.Layer):
        def call(self, x):
            return keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")

    def probed_model():
        # layers no handler knows, probed with numpy inputs; a depthwise Conv2D(groups=C)
        L, ops = keras.layers, keras.ops
        inputs = keras.Input((8, 8, 3))
        h = L.Conv2D(8, 3, name="conv")(inputs)
        h = L.Conv2D(8, 3, groups=8, padding="same", name="grouped")(h)
        h = ReflectionPadding2D(name="pad")(h)
        h = L.Lambda(lambda t: t * ops.sigmoid(t), name="swish")(h)
        h = L.Conv2D(8, 3, name="conv2")(ops.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]]))
        h = L.Lambda(lambda t: t - ops.mean(t, axis=-1, keepdims=True), name="center")(h)
        h = L.GlobalAveragePooling2D()(L.Conv2D(8, 1, name="conv3")(h))
        return keras.Model(inputs, L.Dense(2)(h))

    def refusal(step):
        try:
            step()
        except RuntimeError as error:
            return str(error)
        return "no error"

    def recurrent():
        x = keras.Input((6, 2))
        h = keras.layers.Conv1D(8, 3, padding="same")(x)
        h = keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True))(h)
        return keras.Model(x, keras.layers.Dense(3)(keras.layers.GRU(5)(h)))

    builders = {{"residual_cnn": lambda: residual_cnn(width=8, flavour="keras3"),
                "MobileNetV2": lambda: keras.applications.MobileNetV2(
                    input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10),
                "recurrent": recurrent, "probed": probed_model}}
    report = {{name: check(builders[name]()) for name in {names!r}}}
    from tfcompress.export import to_tflite
    from tfcompress.quantization import quantize_model
    small = residual_cnn(width=4, flavour="keras3")
    report["refusals"] = {{
        "quantize_model": refusal(lambda: quantize_model(small)),
        "to_tflite": refusal(lambda: to_tflite(small, os.path.join({tmp!r}, "m.tflite"))),
    }}
    report["written"] = os.listdir({tmp!r})
    print(json.dumps(report))
""")


def _run_on_jax(names, tmp):
    """The script's report for the models ``names``, from a fresh JAX-backend interpreter."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    script = _SCRIPT.format(tests=tests, tmp=str(tmp), names=list(names))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    return _run_on_jax(["residual_cnn", "recurrent", "probed"], tmp_path_factory.mktemp("jax"))


def _check_exact(row):
    assert row["backend"] == "jax" and row["slim_class"].startswith("keras.")
    assert row["changed"] > 1e-6  # not vacuous: the masks changed the outputs
    assert row["error"] <= 1e-4  # masked == rebuilt
    assert row["slim_macs"] == row["predicted_macs"] < row["macs"]
    assert row["slim_params"] < row["params"]


@pytest.mark.parametrize("name", ["residual_cnn", "recurrent", "probed"])
def test_pruning_path_is_exact_on_jax(jax_results, name):
    _check_exact(jax_results[name])


@pytest.mark.slow
def test_mobilenetv2_pruning_is_exact_on_jax(tmp_path):
    _check_exact(_run_on_jax(["MobileNetV2"], tmp_path)["MobileNetV2"])


def test_probing_runs_on_jax(jax_results):
    assert jax_results["probed"]["probed"] == {
        "pad": "probed: channel-wise (clean)", "swish": "probed: channel-wise (clean)",
        "pad_1": "probed: channel-wise (clean)", "center": "probed: mixes channels -> barrier"}


@pytest.mark.parametrize("step", ["quantize_model", "to_tflite"])
def test_qat_and_export_say_they_need_the_tensorflow_backend(jax_results, step):
    message = jax_results["refusals"][step]
    assert "TensorFlow backend" in message and "KERAS_BACKEND='jax'" in message, message
    assert jax_results["written"] == []  # no half-written file
