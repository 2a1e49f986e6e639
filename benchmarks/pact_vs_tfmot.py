"""PACT vs tfmot quantization-aware training on sklearn's digits (issue 2).

Same residual CNN, same data, same float training, same QAT epochs, 3 seeds:
float; tfmot default 8-bit; tfmot experimental default_n_bit at 4/4, 3/3, 2/2
(weights/activations); PACT (tfcompress.quantization.quantize_model) at the same bits.
Reports test accuracy mean ± std and the QAT step-time ratio PACT / tfmot at equal bits,
then rewrites the "pact" section of benchmarks/RESULTS.md.

    python benchmarks/pact_vs_tfmot.py [--seeds 3] [--float-epochs 8] [--qat-epochs 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (  # noqa: E402,E501
    default_n_bit_quantize_scheme,
)

sys.path.insert(0, os.path.dirname(__file__))
from _results import machine, write_section  # noqa: E402

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.quantization import quantize_model  # noqa: E402

BITS = (4, 3, 2)


class _StepTimer(keras.callbacks.Callback):
    """Median wall time of a training step, after the first (tracing) epoch's steps."""

    def on_train_begin(self, logs=None):
        self.times, self._epoch = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch > 0:
            self.times.append(time.perf_counter() - self._t)


def tfmot_qat(model, bits):
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with tfmot.quantization.keras.quantize_scope():
        if bits == 8:
            return tfmot.quantization.keras.quantize_apply(annotated)
        scheme = default_n_bit_quantize_scheme.DefaultNBitQuantizeScheme(
            num_bits_weight=bits, num_bits_activation=bits)
        return tfmot.quantization.keras.quantize_apply(annotated, scheme)


def run(args):
    (x, y), (xt, yt) = load_digits(size=16)
    results = {}
    step_times = {}

    def record(name, value):
        results.setdefault(name, []).append(value)

    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        base = compile_classifier(residual_cnn((16, 16, 1), width=16))
        base.fit(x, y, batch_size=32, epochs=args.float_epochs, verbose=0)
        record("float", base.evaluate(xt, yt, verbose=0)[1])
        for bits in (8,) + BITS:
            for tool in ("tfmot", "pact"):
                keras.utils.set_random_seed(seed)
                clone = keras.models.clone_model(base)
                clone.set_weights(base.get_weights())
                qat = tfmot_qat(clone, bits) if tool == "tfmot" else quantize_model(clone, bits, bits)
                steps = args.qat_epochs * int(np.ceil(len(x) / 32))
                compile_classifier(qat, keras.optimizers.schedules.CosineDecay(args.lr, steps))
                timer = _StepTimer()
                qat.fit(x, y, batch_size=32, epochs=args.qat_epochs, verbose=0, callbacks=[timer])
                name = f"{tool} {bits}/{bits}"
                record(name, qat.evaluate(xt, yt, verbose=0)[1])
                step_times.setdefault(name, []).extend(timer.times)
                print(f"seed {seed} {name:>10}: acc {results[name][-1]:.4f}  "
                      f"step {1e3 * np.median(timer.times):.1f} ms", flush=True)

    def fmt(name):
        acc = 100 * np.array(results[name])
        return f"{acc.mean():.2f} ± {acc.std():.2f}"

    rows = [("float", "-", fmt("float"), "-", "-")]
    for bits in (8,) + BITS:
        t, p = f"tfmot {bits}/{bits}", f"pact {bits}/{bits}"
        ratio = np.median(step_times[p]) / np.median(step_times[t])
        rows.append((f"{bits}/{bits}", "tfmot" if bits == 8 else "tfmot n-bit", fmt(t), fmt(p),
                     f"{ratio:.2f}"))
    header = "| bits (w/a) | tfmot scheme | tfmot acc % | PACT acc % | step time PACT/tfmot |"
    lines = [header, "|---|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)

    float_acc = 100 * np.mean(results["float"])
    pact4 = 100 * np.mean(results["pact 4/4"])
    ahead = all(np.mean(results[f"pact {b}/{b}"]) > np.mean(results[f"tfmot {b}/{b}"]) for b in (3, 2))
    ratios = [float(r[4]) for r in rows[1:]]
    goals = [
        f"- PACT ahead of tfmot n-bit at 3 and 2 bits: **{'met' if ahead else 'not met'}**",
        f"- PACT 4/4 within 1 point of float ({pact4:.2f} vs {float_acc:.2f}): "
        f"**{'met' if float_acc - pact4 <= 1.0 else 'not met'}**",
        f"- step time ratio PACT/tfmot <= 1.15 (max {max(ratios):.2f}): "
        f"**{'met' if max(ratios) <= 1.15 else 'not met'}**",
    ]
    body = (
        "## PACT vs tfmot QAT (`benchmarks/pact_vs_tfmot.py`)\n\n"
        f"Digits (sklearn, 16x16), residual CNN width 16, {args.float_epochs} float epochs, "
        f"{args.qat_epochs} QAT epochs (Adam, {args.lr} cosine-decayed to 0) for every tool, "
        f"{args.seeds} seeds; accuracy on the "
        f"held-out 25%. Step time: median over steps after the first epoch. {machine()}.\n\n"
        + table + "\n\n" + "\n".join(goals) + "\n"
    )
    write_section("pact", body)
    print("\n".join(goals))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="QAT peak LR (cosine decay)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
