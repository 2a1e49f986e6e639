"""FPGM-prune a Keras 3 ``keras.applications`` MobileNetV2, rebuild it smaller and export it.

One-shot structured pruning of a real architecture (inverted residuals: every block's
projection is tied to the next block's input through the residual adds, and depthwise
convolutions tie their input and output channels, so channels are pruned in groups):

1. ``fpgm_masks`` picks the filters to remove (FPGM: those closest to the geometric median),
2. ``rebuild`` creates the smaller dense model; it computes exactly what the original does
   with the pruned channels zeroed, which this script checks,
3. the slim model is exported to TFLite, ``verify`` checks the file against Keras and
   LiteRT times it against the original (except with ``--quick``, which skips converting
   the original).

The weights are random (``weights=None``, nothing is downloaded); fine-tune the slim model
on your data as usual afterwards. The model is a Keras 3 one (``import keras``) and so is the
slim model ``rebuild`` returns; ``--keras 2`` runs the same script on tf_keras.

    python examples/prune_mobilenetv2.py [--ratio 0.3] [--size 128] [--alpha 1.0]
                                         [--keras 3] [--output mobilenetv2-pruned] [--quick]
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfcompress.export import litert, to_tflite, verify  # noqa: E402
from tfcompress.pruning import (  # noqa: E402
    apply_masks,
    count_macs,
    count_params,
    fpgm_masks,
    rebuild,
)


def calibrate_batch_norm(keras, model, x):
    """Sets every BatchNormalization's moving statistics to those of ``x``'s activations.

    With random weights and the initial statistics (mean 0, variance 1) the activations of
    a deep network fade to ~1e-11, every output is the same and any parity check passes
    vacuously. One training-mode pass with momentum 0 stores each layer's batch statistics,
    so that inference sees normalized activations, as in a trained model.
    """
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.3, help="channels to remove, [0, 1)")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--round-to", type=int, default=1, help="keep multiples of N channels")
    parser.add_argument("--output", default="mobilenetv2-pruned", help="folder for .tflite files")
    parser.add_argument("--keras", choices=("2", "3"), default="3",
                        help="3: Keras 3 (import keras); 2: tf_keras")
    parser.add_argument("--quick", action="store_true",
                        help="small input and width, no latency comparison (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.alpha = 64, 0.35
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.keras == "3":
        import keras
    else:
        import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(args.size, args.size, 3), alpha=args.alpha, weights=None, classes=100)
    x = np.random.default_rng(0).uniform(-1, 1, (32, args.size, args.size, 3)).astype("float32")
    calibrate_batch_norm(keras, model, x)
    masks = fpgm_masks(model, args.ratio, round_to=args.round_to)
    slim = rebuild(model, masks)
    print(masks.summary())
    print(f"rebuilt as: {type(slim).__module__.split('.')[0]} {type(slim).__name__}")

    # Exactness: the slim model computes what the original computes with the pruned
    # channels zeroed.
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    apply_masks(masked, masks)
    expected = masked.predict(x, verbose=0)
    exact = np.max(np.abs(expected - slim.predict(x, verbose=0)))

    slim_path = to_tflite(slim, out / "mobilenetv2_slim.tflite", quantize=None)
    report = verify(slim, slim_path, x)
    rows = {"original": (model, None, None), "slim": (slim, slim_path, None)}
    if not args.quick:  # converting MobileNetV2 takes a while: CI converts the slim one only
        original_path = to_tflite(model, out / "mobilenetv2.tflite", quantize=None)
        base, fast = litert.compare_latency([original_path, slim_path], threads=1, runs=50)
        rows = {"original": (model, original_path, base), "slim": (slim, slim_path, fast)}

    print(f"\n{'model':<12}{'params':>12}{'MACs':>16}{'file KiB':>10}{'latency ms':>12}")
    for name, (keras_model, path, timing) in rows.items():
        size = f"{path.stat().st_size / 1024:.0f}" if path else "-"
        median = f"{timing.median_ms:.3f}" if timing else "-"
        print(f"{name:<12}{count_params(keras_model):>12,}{count_macs(keras_model):>16,}"
              f"{size:>10}{median:>12}")
    print(f"\nparams kept {count_params(slim) / count_params(model):.1%}, MACs kept "
          f"{count_macs(slim) / count_macs(model):.1%}")
    if rows["slim"][2]:
        print(f"latency kept {fast.median_ms / base.median_ms:.1%} (LiteRT, 1 thread, batch 1)")
    print(f"exactness: max |masked - slim| = {exact:.2e} on outputs of spread "
          f"{expected.std(axis=0).mean():.2e} across samples")
    print(report.summary())
    print(f"accuracy parity: the slim TFLite file agrees with the slim Keras model on "
          f"{report.top1_agreement:.2%} of top-1 predictions")
    return {"exact": float(exact), "agreement": report.top1_agreement}


if __name__ == "__main__":
    main()
