"""PACT the tfmot way: annotate the layers you choose, then ``quantize_apply``.

tfmot's own workflow, with :class:`~tfcompress.quantization.PACTQuantizeConfig` as the
quantize config of the chosen layers: here the two convolutions get 4-bit weights and
activations and the classifier 8-bit ones, while the pooling and flatten layers are not
annotated and get no quantizer of their own (the converter gives them their input's int8
scale; any op it has to leave in float shows up as a float fallback in the parity report).
``quantize_apply`` runs inside ``quantize_scope`` so that tfmot can deserialize the configs.

    python examples/tfmot_way.py [--output tfmot-way] [--quick]
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402  (Keras 2, what tfcompress and tfmot work with)

from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.export import litert, to_tflite, verify  # noqa: E402
from tfcompress.models import compile_classifier  # noqa: E402
from tfcompress.quantization import (  # noqa: E402
    PACTQuantizeConfig,
    clip_ranges,
    quantize_apply,
    quantize_scope,
)

#: Layer name -> the quantize config it is annotated with; other layers stay float.
CHOSEN = {
    "conv1": PACTQuantizeConfig(weight_bits=4, activation_bits=4, mode="relu"),
    "conv2": PACTQuantizeConfig(weight_bits=4, activation_bits=4, mode="relu"),
    "logits": PACTQuantizeConfig(weight_bits=8, activation_bits=8),
}


def small_cnn():
    layers = keras.layers
    return keras.Sequential([
        keras.Input((16, 16, 1), name="image"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="logits"),
    ], name="small_cnn")


def annotate(layer):
    """``clone_model``'s clone function: wraps the chosen layers in tfmot annotations."""
    config = CHOSEN.get(layer.name)
    if config is None:
        return layer.__class__.from_config(layer.get_config())
    return tfmot.quantization.keras.quantize_annotate_layer(
        layer.__class__.from_config(layer.get_config()), quantize_config=config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="tfmot-way", help="folder for the .tflite file")
    parser.add_argument("--quick", action="store_true", help="a few steps only (CI smoke run)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    (x, y), (x_test, y_test) = load_digits(size=16)
    float_epochs, qat_epochs = (3, 1) if args.quick else (15, 5)  # the model is tiny

    model = compile_classifier(small_cnn())
    model.fit(x, y, batch_size=32, epochs=float_epochs, verbose=2)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())  # annotation wrappers add no weights
    with quantize_scope():
        qat = quantize_apply(tfmot.quantization.keras.quantize_annotate_model(annotated))
    compile_classifier(qat, learning_rate=5e-4)
    qat.fit(x, y, batch_size=32, epochs=qat_epochs, verbose=2)
    qat_acc = qat.evaluate(x_test, y_test, verbose=0)[1]

    path = to_tflite(qat, out / "tfmot_way_int8.tflite")
    tflite_acc = float(np.mean(litert.run(path, x_test).argmax(-1) == y_test))
    report = verify(qat, path, x_test, raise_on_failure=False)

    print("\nLearned PACT clip ranges (low, high) of the annotated layers:")
    for name, (low, high) in clip_ranges(qat).items():
        print(f"  {name:<24} [{low:7.3f}, {high:7.3f}]")
    print(report.summary())
    print(f"\nfloat test accuracy {float_acc:.4f}, QAT (Keras) accuracy {qat_acc:.4f}, "
          f"TFLite accuracy {tflite_acc:.4f}, {path.name} {path.stat().st_size:,} bytes")
    return {"float": float_acc, "qat": qat_acc, "tflite": tflite_acc}


if __name__ == "__main__":
    main()
