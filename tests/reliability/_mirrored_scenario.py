"""FPGM pruning and PACT QAT under ``tf.distribute.MirroredStrategy`` on 2 logical CPUs.

Run as a script (``python _mirrored_scenario.py [tf_keras|keras3]``, the Keras the models
are built with; default tf_keras): logical devices must be configured
before TensorFlow initialises, which the pytest process has already done. Prints one JSON
line of measurements that ``test_distributed.py`` asserts on; it asserts nothing itself,
so that a failure shows the numbers.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

from tfcompress._keras import is_keras3_object  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn, resolve_flavour  # noqa: E402
from tfcompress.pruning import FPGMPruning, PolynomialRatio, rebuild  # noqa: E402
from tfcompress.quantization import clip_ranges, quantize_model  # noqa: E402

(X, Y), (X_TEST, _) = load_digits(size=16)
X, Y, X_TEST = X[:256], Y[:256], X_TEST[:128]
BATCH = 32  # global batch: 16 per replica
FLAVOUR = resolve_flavour(sys.argv[1] if len(sys.argv) > 1 else "tf_keras")
keras = FLAVOUR.module


def tf_variable(variable):
    """The TensorFlow variable behind a model variable (Keras 3 wraps it in ``.value``)."""
    return variable.value if is_keras3_object(variable) else variable


def replicas_identical(model) -> bool:
    """True if every trainable variable holds bit-identical values on every replica.

    BatchNorm moving statistics differ per replica by design (each replica normalises its own
    batch): tf_keras keeps them sync-on-read and averages them when read, Keras 3 keeps them
    in on-write mirrored variables each replica assigns its own values to. They are not
    trained and not written by the pruning callback, so they are left out.
    """
    for variable in model.trainable_weights:
        variable = tf_variable(variable)
        values = [v.numpy() for v in getattr(variable, "values", (variable,))]
        if any(not np.array_equal(values[0], other) for other in values[1:]):
            return False
    return True


def pruned_zero_on_every_replica(model, masks, graph) -> bool:
    """True if each pruned channel of every producer kernel is zero on every replica."""
    for group in graph.groups:
        pruned = masks.pruned(group.id)
        for key in group.producers if len(pruned) else ():
            kernel = tf_variable(graph.records[key].layer.weights[0])
            for value in getattr(kernel, "values", (kernel,)):
                if np.any(value.numpy()[..., pruned] != 0):
                    return False
    return True


def prune(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = compile_classifier(residual_cnn(width=8, flavour=FLAVOUR))
    schedule = PolynomialRatio(0.0, 0.5, begin_step=0, end_step=8, frequency=4)
    callback = FPGMPruning(schedule, mode="hard")
    model.fit(X, Y, batch_size=BATCH, epochs=2, callbacks=[callback], shuffle=False, verbose=0)
    return model, callback


def qat(strategy, float_weights):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        base = residual_cnn(width=8, flavour=FLAVOUR)
        base.set_weights(float_weights)
        # 3-bit weights: the default weight_range="auto" learns their steps (LSQ variables)
        model = compile_classifier(quantize_model(base, activation_bits=4, weight_bits=3))
    history = model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    ranges = {name.split("_")[0] if name.startswith("quantize_layer") else name: value
              for name, value in clip_ranges(model).items()}
    return model, ranges, history.history["loss"]


def main() -> None:
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single = tf.distribute.get_strategy()
    report = {"replicas": mirrored.num_replicas_in_sync}

    model, callback = prune(mirrored)
    masks = callback.masks
    reference, reference_callback = prune(single)
    slim = rebuild(model, masks)
    # The masked model on one device: under the strategy each replica would normalise with its
    # own BatchNorm moving statistics (sync-on-read), which get_weights() averages.
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    outputs = masked.predict(X_TEST, verbose=0)
    report.update(
        pruned_ratio=masks.pruned_ratio,
        masks_json=masks.to_json(),
        single_masks_json=reference_callback.masks.to_json(),
        replicas_identical=replicas_identical(model),
        pruned_zero_everywhere=pruned_zero_on_every_replica(model, masks, callback.graph),
        rebuild_max_diff=float(np.abs(slim.predict(X_TEST, verbose=0) - outputs).max()),
        single_max_diff=float(np.abs(reference.predict(X_TEST, verbose=0) - outputs).max()),
        output_scale=float(np.abs(outputs).max()),
    )

    keras.utils.set_random_seed(0)
    # trained activations give real ranges
    trained = compile_classifier(residual_cnn(width=8, flavour=FLAVOUR))
    trained.fit(X, Y, batch_size=BATCH, epochs=6, verbose=0)
    float_weights = trained.get_weights()
    qat_model, ranges, losses = qat(mirrored, float_weights)
    _, single_ranges, single_losses = qat(single, float_weights)
    report.update(
        qat_losses=losses,
        single_qat_losses=single_losses,
        qat_replicas_identical=replicas_identical(qat_model),
        learned_steps=sum("log_step" in v.name for v in qat_model.trainable_weights),
        clip_ranges=ranges,
        single_clip_ranges=single_ranges,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
