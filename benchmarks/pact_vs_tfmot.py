"""PACT vs tfmot quantization-aware training on sklearn's digits (issue 2).

Same residual CNN, same data, same float training, same QAT epochs, 3 seeds:
float; tfmot default 8-bit; tfmot experimental default_n_bit at 4/4, 3/3, 2/2
(weights/activations); PACT (tfcompress.quantization.quantize_model) at the same bits.
Reports test accuracy mean ± std ("pact" section of benchmarks/RESULTS.md) and the QAT
step-time ratio PACT / tfmot at equal bits, measured by interleaved steps ("pact-timing").

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


def tfmot_qat(model, bits):
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with tfmot.quantization.keras.quantize_scope():
        if bits == 8:
            return tfmot.quantization.keras.quantize_apply(annotated)
        scheme = default_n_bit_quantize_scheme.DefaultNBitQuantizeScheme(
            num_bits_weight=bits, num_bits_activation=bits)
        return tfmot.quantization.keras.quantize_apply(annotated, scheme)


def _qat(tool, model, bits):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return tfmot_qat(clone, bits) if tool == "tfmot" else quantize_model(clone, bits, bits)


def accuracy(args, data):
    (x, y), (xt, yt) = data
    results = {}
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        base = compile_classifier(residual_cnn((16, 16, 1), width=16))
        base.fit(x, y, batch_size=32, epochs=args.float_epochs, verbose=0)
        results.setdefault("float", []).append(base.evaluate(xt, yt, verbose=0)[1])
        for bits in (8,) + BITS:
            for tool in ("tfmot", "pact"):
                keras.utils.set_random_seed(seed)
                qat = _qat(tool, base, bits)
                steps = args.qat_epochs * int(np.ceil(len(x) / 32))
                compile_classifier(qat, keras.optimizers.schedules.CosineDecay(args.lr, steps))
                qat.fit(x, y, batch_size=32, epochs=args.qat_epochs, verbose=0)
                name = f"{tool} {bits}/{bits}"
                results.setdefault(name, []).append(qat.evaluate(xt, yt, verbose=0)[1])
                print(f"seed {seed} {name:>10}: acc {results[name][-1]:.4f}", flush=True)

    def fmt(name):
        acc = 100 * np.array(results[name])
        return f"{acc.mean():.2f} ± {acc.std():.2f}"

    rows = [("float", "-", fmt("float"), "-")]
    for bits in (8,) + BITS:
        rows.append((f"{bits}/{bits}", "tfmot" if bits == 8 else "tfmot n-bit",
                     fmt(f"tfmot {bits}/{bits}"), fmt(f"pact {bits}/{bits}")))
    table = "\n".join(["| bits (w/a) | tfmot scheme | tfmot acc % | PACT acc % |",
                       "|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows])
    print(table)
    float_acc = 100 * np.mean(results["float"])
    pact4 = 100 * np.mean(results["pact 4/4"])
    ahead = all(np.mean(results[f"pact {b}/{b}"]) > np.mean(results[f"tfmot {b}/{b}"])
                for b in (3, 2))
    goals = [
        f"- PACT ahead of tfmot n-bit at 3 and 2 bits: **{'met' if ahead else 'not met'}**",
        f"- PACT 4/4 within 1 point of float ({pact4:.2f} vs {float_acc:.2f}): "
        f"**{'met' if float_acc - pact4 <= 1.0 else 'not met'}**",
    ]
    write_section("pact", (
        "## PACT vs tfmot QAT accuracy (`benchmarks/pact_vs_tfmot.py`)\n\n"
        f"Digits (sklearn, 16x16), residual CNN width 16, {args.float_epochs} float epochs, "
        f"{args.qat_epochs} QAT epochs (Adam, {args.lr} cosine-decayed to 0) for every tool, "
        f"{args.seeds} seeds; accuracy on the held-out 25%. {machine()}.\n\n"
        + table + "\n\n" + "\n".join(goals) + "\n"))
    print("\n".join(goals))
    return base


def timing(args, data, base=None):
    """QAT step time, PACT vs tfmot at equal bits: interleaved train_on_batch, medians."""
    (x, y), _ = data
    if base is None:
        keras.utils.set_random_seed(0)
        base = compile_classifier(residual_cnn((16, 16, 1), width=16))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 32 * 8, 32)]
    rows, ratios = [], []
    for bits in (8,) + BITS:
        models = {tool: compile_classifier(_qat(tool, base, bits)) for tool in ("tfmot", "pact")}
        for model in models.values():  # trace and warm up
            for bx, by in batches[:3]:
                model.train_on_batch(bx, by)
        times = {tool: [] for tool in models}
        for round_ in range(args.timing_rounds):
            order = list(models) if round_ % 2 == 0 else list(models)[::-1]
            bx, by = batches[round_ % len(batches)]
            for tool in order:
                start = time.perf_counter()
                models[tool].train_on_batch(bx, by)
                times[tool].append(time.perf_counter() - start)
        t, p = (1e3 * np.median(times[tool]) for tool in ("tfmot", "pact"))
        ratios.append(p / t)
        rows.append(f"| {bits}/{bits} | {t:.2f} | {p:.2f} | {p / t:.2f} |")
        print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(["| bits (w/a) | tfmot ms/step | PACT ms/step | PACT/tfmot |",
                       "|---|---|---|---|"] + rows)
    goal = (f"- step time ratio PACT/tfmot <= 1.15 (max {max(ratios):.2f}): "
            f"**{'met' if max(ratios) <= 1.15 else 'not met'}**")
    write_section("pact-timing", (
        "## PACT vs tfmot QAT step time (`benchmarks/pact_vs_tfmot.py`)\n\n"
        f"Batch 32, same model; {args.timing_rounds} interleaved `train_on_batch` rounds "
        f"(alternating order) after warm-up, medians. Load average at the end: {load:.1f} "
        f"(the machine is shared). {machine()}.\n\n" + table + "\n\n" + goal + "\n"))
    print(table + "\n" + goal)


def run(args):
    data = load_digits(size=16)
    base = accuracy(args, data) if args.only in (None, "accuracy") else None
    if args.only in (None, "timing"):
        timing(args, data, base)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="QAT peak LR (cosine decay)")
    parser.add_argument("--timing-rounds", type=int, default=60)
    parser.add_argument("--only", choices=("accuracy", "timing"),
                        help="run one part (each rewrites its own RESULTS.md section)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
