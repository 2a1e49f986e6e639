"""PACT vs tfmot quantization-aware training on sklearn's digits (issue 2, issue 8).

Same residual CNN, same data, same float training, and one fine-tuning budget for every
row (the same epochs, Adam with the same cosine-decayed learning rate, batch 32, the same
seeds):

* float control: the float model fine-tuned with that budget, no quantization; every
  "within N points of float" verdict compares against it;
* TFLite full-int8 post-training quantization of the control (LiteRT accuracy);
* tfmot default 8-bit, tfmot experimental default_n_bit at 4/4, 3/3, 2/2 (weights/
  activations), and PACT (``tfcompress.quantization.quantize_model``) at the same bits;
* ablations: PACT with its clip range frozen at the calibrated init
  (``trainable_range=False``), and tfmot 8-bit after the same BatchNorm folding as PACT.

Writes test accuracy mean ± std ("pact" section of benchmarks/RESULTS.md) and the QAT
step-time ratio PACT / tfmot at equal bits, measured by interleaved steps ("pact-timing").

    python benchmarks/pact_vs_tfmot.py [--seeds 3] [--float-epochs 8] [--qat-epochs 10]
                                       [--only accuracy|timing]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _results  # noqa: E402
from _pact_variants import (  # noqa: E402
    BATCH,
    accuracy,
    add_recipe_arguments,
    fine_tune,
    pact_qat,
    tflite_ptq_accuracy,
    tfmot_qat,
    variants,
)

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402

BITS = (8, 4, 3, 2)
CALIBRATION_SAMPLES = 256  # representative data of the TFLite PTQ rows


def stamp() -> str:
    """Date, commit and machine of this run (``_results.stamp`` when it exists)."""
    if callable(getattr(_results, "stamp", None)):
        return _results.stamp()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__), check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"Measured on commit `{commit.strip()}`, {_results.machine()}"


def _float_model(x, y, seed, epochs):
    keras.utils.set_random_seed(seed)
    base = compile_classifier(residual_cnn((16, 16, 1), width=16))
    base.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return base


def run_seed(args, data, seed, results):
    """Every row of the table for one seed; appends accuracies to ``results[row]``."""
    (x, y), (xt, yt) = data
    base = _float_model(x, y, seed, args.float_epochs)
    results.setdefault("float (no fine-tuning)", []).append(accuracy(base, xt, yt))
    keras.utils.set_random_seed(seed)
    control = keras.models.clone_model(base)
    control.set_weights(base.get_weights())
    control = fine_tune(control, x, y, args.qat_epochs, args.lr)
    results.setdefault("float control", []).append(accuracy(control, xt, yt))
    results.setdefault("tflite int8 PTQ of control", []).append(
        tflite_ptq_accuracy(control, x[:CALIBRATION_SAMPLES], xt, yt))
    for name, (make, _) in variants(BITS).items():
        keras.utils.set_random_seed(seed)
        model = fine_tune(make(base), x, y, args.qat_epochs, args.lr)
        results.setdefault(name, []).append(accuracy(model, xt, yt))
    for name, values in results.items():
        print(f"seed {seed} {name:>28}: acc {values[-1]:.4f}", flush=True)
    return base


def _mean(results, name) -> float:
    return 100 * float(np.mean(results[name]))


def _fmt(results, name) -> str:
    acc = 100 * np.array(results[name])
    return f"{acc.mean():.2f} ± {acc.std():.2f}"


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def accuracy_table(results) -> str:
    """Two tables: the float references, then QAT at each bit width."""
    reference = _markdown(("float model", "test acc %"), [
        ("after the float epochs only", _fmt(results, "float (no fine-tuning)")),
        ("**float control** (+ the same fine-tuning as QAT)", _fmt(results, "float control")),
        ("control, TFLite full-int8 post-training quantization (LiteRT)",
         _fmt(results, "tflite int8 PTQ of control")),
    ])
    rows = []
    for bits in BITS:
        folded = _fmt(results, "tfmot+fold 8/8") if bits == 8 else "-"
        rows.append((f"{bits}/{bits}", "default 8-bit" if bits == 8 else "default_n_bit",
                     _fmt(results, f"tfmot {bits}/{bits}"), folded,
                     _fmt(results, f"pact {bits}/{bits}"),
                     _fmt(results, f"pact-frozen {bits}/{bits}")))
    qat = _markdown(("bits (w/a)", "tfmot scheme", "tfmot acc %", "tfmot, BN folded first acc %",
                     "**PACT acc %**", "PACT, frozen clip range acc %"), rows)
    return reference + "\n\n" + qat


def verdicts(results) -> list:
    """Each sentence computed from this run's means."""
    control = _mean(results, "float control")
    pact = {b: _mean(results, f"pact {b}/{b}") for b in BITS}
    tfmot_ = {b: _mean(results, f"tfmot {b}/{b}") for b in BITS}
    frozen = {b: _mean(results, f"pact-frozen {b}/{b}") for b in BITS}
    ahead = [b for b in (3, 2) if pact[b] > tfmot_[b]]
    ptq, fold = _mean(results, "tflite int8 PTQ of control"), _mean(results, "tfmot+fold 8/8")
    gain = ", ".join(f"{pact[b] - frozen[b]:+.2f} at {b}/{b}" for b in BITS)
    behind = [b for b in BITS if pact[b] < frozen[b]]

    def met(ok):
        return "met" if ok else "not met"

    return [
        f"- PACT ahead of tfmot n-bit at 3 and 2 bits (3/3: {pact[3]:.2f} vs {tfmot_[3]:.2f}; "
        f"2/2: {pact[2]:.2f} vs {tfmot_[2]:.2f}): **{met(len(ahead) == 2)}**",
        f"- PACT 4/4 within 1 point of the float control ({pact[4]:.2f} vs {control:.2f}, "
        f"{pact[4] - control:+.2f}): **{met(control - pact[4] <= 1.0)}**",
        f"- Training the clip range (PACT) vs keeping the calibrated one: {gain} points; "
        + ("PACT is ahead or equal at every bit width." if not behind else
           "PACT is behind the frozen range at " + ", ".join(f"{b}/{b}" for b in behind) + "."),
        f"- tfmot 8/8 with PACT's BatchNorm folding: {fold:.2f} vs {tfmot_[8]:.2f} without "
        f"({fold - tfmot_[8]:+.2f}); PACT 8/8: {pact[8]:.2f}.",
        f"- TFLite int8 post-training quantization of the control: {ptq:.2f} "
        f"({ptq - control:+.2f} vs the control); QAT at 8/8 reaches {pact[8]:.2f} (PACT) and "
        f"{tfmot_[8]:.2f} (tfmot).",
    ]


def accuracy_part(args, data):
    (x, _), (xt, _) = data
    results, base = {}, None
    started = time.perf_counter()
    for seed in range(args.seeds):
        base = run_seed(args, data, seed, results)
    table, goals = accuracy_table(results), verdicts(results)
    print(table + "\n" + "\n".join(goals))
    minutes = (time.perf_counter() - started) / 60
    _results.write_section("pact", (
        "## PACT vs tfmot QAT accuracy (`benchmarks/pact_vs_tfmot.py`)\n\n"
        f"Digits (sklearn, 16x16; {len(x)} training / {len(xt)} test images), residual CNN "
        f"width 16, {args.float_epochs} float epochs, then the same fine-tuning for every row: "
        f"{args.qat_epochs} epochs, Adam {args.lr} cosine-decayed to 0, batch {BATCH}. Seeds "
        f"0..{args.seeds - 1} (mean ± std of test accuracy). The float control is the float "
        "model fine-tuned with that budget; the PTQ row converts the control with the TFLite "
        f"converter's full-int8 quantization ({CALIBRATION_SAMPLES} training images as "
        "representative data) and runs it on LiteRT. \"PACT frozen range\" calibrates alpha/"
        "beta like PACT but never trains them (`trainable_range=False`). "
        f"{args.stamp}; the run took {minutes:.0f} min.\n\n"
        + table + "\n\n" + "\n".join(goals) + "\n"))
    return base


def timing_part(args, data, base=None):
    """QAT step time, PACT vs tfmot at equal bits: interleaved train_on_batch, medians."""
    (x, y), _ = data
    if base is None:
        keras.utils.set_random_seed(0)
        base = compile_classifier(residual_cnn((16, 16, 1), width=16))
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, BATCH * 8, BATCH)]
    rows, ratios = [], []
    for bits in BITS:
        models = {"tfmot": compile_classifier(tfmot_qat(base, bits)),
                  "pact": compile_classifier(pact_qat(base, bits))}
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
    _results.write_section("pact-timing", (
        "## PACT vs tfmot QAT step time (`benchmarks/pact_vs_tfmot.py`)\n\n"
        f"Batch {BATCH}, same model; {args.timing_rounds} interleaved `train_on_batch` rounds "
        f"(alternating order) after warm-up, medians. Load average at the end: {load:.1f} "
        f"(the machine is shared). {args.stamp}.\n\n"
        + table + "\n\n" + goal + "\n"))
    print(table + "\n" + goal)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_arguments(parser)
    parser.add_argument("--timing-rounds", type=int, default=150)
    parser.add_argument("--only", choices=("accuracy", "timing"),
                        help="run one part (each rewrites its own RESULTS.md section)")
    args = parser.parse_args(argv)
    if args.seeds < 3:
        parser.error(f"--seeds must be at least 3 for a mean ± std, got {args.seeds}")
    args.stamp = stamp()  # the commit this run starts from (others may commit meanwhile)
    data = load_digits(size=16)
    base = accuracy_part(args, data) if args.only in (None, "accuracy") else None
    if args.only in (None, "timing"):
        timing_part(args, data, base)


if __name__ == "__main__":
    main()
