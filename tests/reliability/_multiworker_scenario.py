"""One worker of a two-worker ``MultiWorkerMirroredStrategy`` run on localhost.

Usage: ``TF_CONFIG=... python _multiworker_scenario.py OUTPUT.json``. Each worker trains the
same model with :class:`FPGMPruning` (and then PACT QAT) and writes what it ended with:
its masks, a digest of its weights and its clip ranges. ``test_distributed.py`` checks that
both workers agree.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The strategy must exist before any other TensorFlow op runs in this process.
STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.pruning import FPGMPruning, PolynomialRatio  # noqa: E402
from tfcompress.quantization import clip_ranges, quantize_model  # noqa: E402


def digest(model) -> str:
    """SHA-256 of the trainable weights (mirrored: must be identical on every worker)."""
    sha = hashlib.sha256()
    for value in model.trainable_weights:
        sha.update(np.ascontiguousarray(value.numpy()).tobytes())
    return sha.hexdigest()


def main(output: str) -> None:
    (x, y), _ = load_digits(size=16)
    x, y = x[:128], y[:128]
    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        model = compile_classifier(residual_cnn(width=8))
    pruning = FPGMPruning(PolynomialRatio(0.0, 0.5, begin_step=0, end_step=4, frequency=2),
                          mode="hard")
    model.fit(x, y, batch_size=32, epochs=2, callbacks=[pruning], shuffle=False, verbose=0)

    with STRATEGY.scope():
        qat = compile_classifier(quantize_model(model, activation_bits=4, weight_bits=4))
    qat.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    ranges = {name: value for name, value in clip_ranges(qat).items()
              if not name.startswith("quantize_layer")}
    report = {"masks": pruning.masks.get_config(), "digest": digest(model),
              "qat_digest": digest(qat), "clip_ranges": ranges,
              "workers": STRATEGY.num_replicas_in_sync}
    with open(output, "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main(sys.argv[1])
