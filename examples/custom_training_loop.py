"""FPGM pruning from a hand-written ``tf.GradientTape`` training loop.

``FPGMPruning`` is a Keras callback, but it does not need ``model.fit``: a custom loop
drives it through a ``keras.callbacks.CallbackList``, calling the hooks where ``fit``
would. The callback counts the steps itself (the model is not compiled, so it has no
``model.optimizer`` to read ``iterations`` from), recomputes the masks when the schedule
says so before a batch, and writes ``pruned_ratio``/``macs_ratio`` into the epoch logs.
After training, ``rebuild`` turns the masked model into a smaller one with the same
outputs.

    python examples/custom_training_loop.py [--ratio 0.5] [--epochs 12]
                                            [--output custom-loop] [--quick]
"""

import argparse
import math
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402  (Keras 2, what tfcompress and tfmot work with)

from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.export import litert, to_tflite  # noqa: E402
from tfcompress.models import residual_cnn  # noqa: E402
from tfcompress.pruning import (  # noqa: E402
    FPGMPruning,
    PolynomialRatio,
    count_macs,
    count_params,
    rebuild,
)

BATCH = 32


def make_train_step(model, optimizer):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)), tf.float32)
        return loss, tf.reduce_mean(correct)

    return train_step


def train(model, optimizer, dataset, epochs, pruning):
    """The loop ``fit`` would run, calling the callback hooks where ``fit`` calls them."""
    train_step = make_train_step(model, optimizer)
    callbacks = keras.callbacks.CallbackList([pruning], model=model)
    callbacks.on_train_begin()
    step = 0
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        losses, accuracies = [], []
        for x_batch, y_batch in dataset:
            callbacks.on_train_batch_begin(step)
            loss, batch_accuracy = train_step(x_batch, y_batch)
            losses.append(float(loss))
            accuracies.append(float(batch_accuracy))
            callbacks.on_train_batch_end(step)
            step += 1
        logs = {"loss": np.mean(losses), "accuracy": np.mean(accuracies)}
        callbacks.on_epoch_end(epoch, logs)
        print(f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f}, train accuracy "
              f"{logs['accuracy']:.4f}, pruned_ratio {logs['pruned_ratio']:.3f}, macs_ratio "
              f"{logs['macs_ratio']:.3f}")
    callbacks.on_train_end()  # applies the final masks


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="channels to remove, [0, 1)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs")
    parser.add_argument("--output", default="custom-loop", help="folder for the .tflite file")
    parser.add_argument("--quick", action="store_true", help="a few steps only (CI smoke run)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = load_digits(size=16)
    epochs = 3 if args.quick else args.epochs
    if args.quick:
        x, y = x[:512], y[:512]
    steps = math.ceil(len(x) / BATCH)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(BATCH)

    model = residual_cnn((16, 16, 1), width=16)
    optimizer = keras.optimizers.Adam(1e-3)
    # The ratio ramps over the first half of training, one mask update per epoch; the rest
    # fine-tunes the pruned model (soft mode keeps the channels at zero after the last update).
    ramp_end = max(1, (epochs // 2) * steps)
    pruning = FPGMPruning(PolynomialRatio(0.0, args.ratio, begin_step=0, end_step=ramp_end,
                                          frequency=steps))
    train(model, optimizer, dataset, epochs, pruning)

    masked_acc = accuracy(model, x_test, y_test)
    slim = rebuild(model, pruning.masks)
    slim_acc = accuracy(slim, x_test, y_test)
    path = to_tflite(slim, out / "custom_loop_slim.tflite", quantize=None)
    tflite_acc = float(np.mean(np.argmax(litert.run(path, x_test), -1) == y_test))

    print(f"\n{'model':<18}{'test accuracy':>14}{'params':>9}{'MACs':>12}")
    # The masked model still holds every channel (zeros included): its MACs are what the
    # callback reports as kept, its parameter count is unchanged.
    masked_macs = round(pruning.macs_ratio * count_macs(model))
    print(f"{'masked (trained)':<18}{masked_acc:>14.4f}{count_params(model):>9,}"
          f"{masked_macs:>12,}")
    print(f"{'slim (rebuilt)':<18}{slim_acc:>14.4f}{count_params(slim):>9,}{count_macs(slim):>12,}")
    print(f"{'slim TFLite':<18}{tflite_acc:>14.4f}")
    return {"masked": masked_acc, "slim": slim_acc, "tflite": tflite_acc}


if __name__ == "__main__":
    main()
