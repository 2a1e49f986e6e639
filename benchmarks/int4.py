"""4-bit weight storage in TFLite files (issue 12): int8 vs int4 files of a 4-bit-weight model.

Digits (sklearn, 16x16), the residual CNN (tf_keras) trained in float, then PACT QAT with
4-bit weights in every layer (``first_last_bits=None``) and 8-bit activations (TFLite runs
activations in int8 whatever their training width, so the weights are what int4 storage
changes), fine-tuned with the recipe of ``pact_vs_tfmot.py`` (``_pact_variants.fine_tune``).
The QAT model is exported twice, ``weight_storage="int8"`` and ``"int4"``; for each seed:

* file sizes and the bytes of the weights stored as INT4;
* top-1 agreement on the test split: int4 file vs the Keras QAT model, and vs the int8 file;
* LiteRT latency ratio int4 / int8: medians of interleaved invokes, one thread, batch 1.

Writes the "int4" section of benchmarks/RESULTS.md.

    python benchmarks/int4.py [--seeds 3] [--float-epochs 8] [--qat-epochs 10] [--runs 300]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _results  # noqa: E402
from _pact_variants import BATCH, accuracy, add_recipe_arguments, copy_of, fine_tune  # noqa: E402

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.export import Int4Warning, litert, repack_int4, to_tflite  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.quantization import quantize_model  # noqa: E402

AGREEMENT_GOAL = 0.99


def builtin_latency(paths, x, runs: int) -> list:
    """Median ms per invoke of each file on LiteRT's builtin kernels alone (XNNPACK, the
    default CPU delegate, off), interleaved like ``litert.compare_latency``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreters = []
    for path in paths:
        interpreter = Interpreter(
            model_path=str(path), num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreters.append(interpreter)
    times = [[] for _ in paths]
    for round_index in range(runs + runs // 10):
        for k in range(len(paths)):
            i = (round_index + k) % len(paths)
            start = time.perf_counter_ns()
            interpreters[i].invoke()
            if round_index >= runs // 10:
                times[i].append((time.perf_counter_ns() - start) / 1e6)
    return [float(np.median(t)) for t in times]


def run_seed(args, data, seed: int, folder: pathlib.Path) -> dict:
    """One row: train float, fine-tune PACT w4/a8, export int8 and int4, measure."""
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    base = compile_classifier(residual_cnn((16, 16, 1), width=16))
    base.fit(x, y, batch_size=BATCH, epochs=args.float_epochs, verbose=0)
    keras.utils.set_random_seed(seed)
    qat = quantize_model(copy_of(base), activation_bits=8, weight_bits=4, first_last_bits=None)
    qat = fine_tune(qat, x, y, args.qat_epochs, args.lr)
    int8 = to_tflite(qat, folder / f"seed{seed}_int8.tflite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Int4Warning)
        to_tflite(qat, folder / f"seed{seed}_int4_direct.tflite", weight_storage="int4")
    report = repack_int4(int8, folder / f"seed{seed}_int4.tflite")
    int4 = folder / f"seed{seed}_int4.tflite"
    same_bytes = int4.read_bytes() == (folder / f"seed{seed}_int4_direct.tflite").read_bytes()
    keras_top1 = np.argmax(qat.predict(xt, verbose=0), axis=1)
    top8 = np.argmax(litert.run(int8, xt), axis=1)
    top4 = np.argmax(litert.run(int4, xt), axis=1)
    base_ms, int4_ms = litert.compare_latency([int8, int4], xt[:1], threads=1, runs=args.runs,
                                              warmup=args.runs // 10)
    builtin8, builtin4 = builtin_latency([int8, int4], xt[:1], args.runs)
    row = {
        "seed": seed, "qat_acc": accuracy(qat, xt, yt),
        "int8_acc": float(np.mean(top8 == yt)), "int4_acc": float(np.mean(top4 == yt)),
        "int8_size": report.int8_size, "int4_size": report.int4_size,
        "weights8": sum(t.elements for t in report.packed),
        "weights4": sum(t.elements - t.saved_bytes for t in report.packed),
        "packed": len(report.packed), "kept": len(report.kept),
        "agree_keras": float(np.mean(top4 == keras_top1)),
        "agree_int8": float(np.mean(top4 == top8)),
        "int8_vs_keras": float(np.mean(top8 == keras_top1)),
        "ratio": int4_ms.median_ms / base_ms.median_ms,
        "int8_ms": base_ms.median_ms, "int4_ms": int4_ms.median_ms,
        "builtin_ratio": builtin4 / builtin8, "builtin8_ms": builtin8, "builtin4_ms": builtin4,
        "same_bytes": same_bytes,
        "warnings": sum(issubclass(w.category, Int4Warning) for w in caught),
    }
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items()), flush=True)
    return row


def table(rows) -> str:
    header = ("seed", "int8 file (B)", "int4 file (B)", "int4/int8 size",
              "weights int8 -> int4 (B)", "QAT acc %", "int8 acc %", "int4 acc %",
              "int8 vs QAT top-1 %", "int4 vs QAT top-1 %", "int4 vs int8 top-1 %",
              "latency int8 / int4 (ms)",
              "latency int4/int8", "no XNNPACK: int8 / int4 (ms)", "no XNNPACK: int4/int8")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['int8_size']} | {r['int4_size']} | "
            f"{r['int4_size'] / r['int8_size']:.3f} | {r['weights8']} -> {r['weights4']} | "
            f"{100 * r['qat_acc']:.2f} | {100 * r['int8_acc']:.2f} | {100 * r['int4_acc']:.2f} | "
            f"{100 * r['int8_vs_keras']:.2f} | {100 * r['agree_keras']:.2f} | "
            f"{100 * r['agree_int8']:.2f} | "
            f"{r['int8_ms']:.4f} / {r['int4_ms']:.4f} | {r['ratio']:.3f} | "
            f"{r['builtin8_ms']:.4f} / {r['builtin4_ms']:.4f} | {r['builtin_ratio']:.3f} |")
    return "\n".join(lines)


def verdicts(rows) -> list:
    """Sentences computed from this run's rows."""
    size = float(np.mean([r["int4_size"] / r["int8_size"] for r in rows]))
    agree_keras = min(r["agree_keras"] for r in rows)
    agree_int8 = min(r["agree_int8"] for r in rows)
    int8_keras = min(r["int8_vs_keras"] for r in rows)
    ratio = float(np.median([r["ratio"] for r in rows]))
    builtin = float(np.median([r["builtin_ratio"] for r in rows]))
    speed = ("as fast as the int8 file (within 5%)" if abs(ratio - 1) <= 0.05 else
             f"{'slower' if ratio > 1 else 'faster'} than the int8 file ({ratio:.2f}x its "
             "latency)")
    met = "met" if agree_keras >= AGREEMENT_GOAL else "not met"
    kept = sorted({r["kept"] for r in rows})
    return [
        f"- int4 files are {size:.1%} of the int8 files on average "
        f"({np.mean([r['int8_size'] - r['int4_size'] for r in rows]) / 1024:.1f} KiB saved; "
        f"{rows[0]['packed']} weight tensors repacked, {kept[0] if len(kept) == 1 else kept} "
        "kept int8).",
        f"- top-1 agreement of the int4 file with the Keras QAT model >= "
        f"{AGREEMENT_GOAL:.0%} on every seed (lowest {agree_keras:.2%}): **{met}**; the int8 "
        f"file's own agreement with the QAT model is at lowest {int8_keras:.2%}, and the int4 "
        f"file agrees with the int8 file on at least {agree_int8:.2%} of the test images.",
        f"- LiteRT (1 thread, batch 1): the int4 file is {speed}; median ratio int4/int8 "
        f"{ratio:.3f} over {len(rows)} seed(s). On the builtin kernels alone (XNNPACK off) the "
        f"ratio is {builtin:.3f}: "
        + ("the gap is XNNPACK, which runs the int8 file's ops but not the int4 ones."
           if ratio - builtin > 0.2 else "the int4 kernels themselves make the difference."),
        "- `to_tflite(..., weight_storage=\"int4\")` wrote the same bytes as `repack_int4` of "
        f"the int8 file on {sum(r['same_bytes'] for r in rows)} of {len(rows)} seeds, with "
        f"{sum(r['warnings'] for r in rows)} `Int4Warning`s.",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_arguments(parser)
    parser.add_argument("--runs", type=int, default=300, help="timed interleaved invokes")
    args = parser.parse_args(argv)
    stamp = _results.stamp()  # the commit this run starts from
    data = load_digits(size=16)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int4-") as folder:
        rows = [run_seed(args, data, seed, pathlib.Path(folder)) for seed in range(args.seeds)]
    minutes = (time.perf_counter() - started) / 60
    text, goals = table(rows), verdicts(rows)
    print(text + "\n" + "\n".join(goals))
    (x, _), (xt, _) = data
    _results.write_section("int4", (
        "## 4-bit weight storage in TFLite files (`benchmarks/int4.py`)\n\n"
        f"Digits (sklearn, 16x16; {len(x)} training / {len(xt)} test images), residual CNN "
        f"width 16 (tf_keras), {args.float_epochs} float epochs, then PACT QAT (4-bit weights "
        f"in every layer, 8-bit activations) fine-tuned {args.qat_epochs} epochs (Adam "
        f"{args.lr} cosine-decayed, batch {BATCH}). Each QAT model exported with "
        "`to_tflite(qat, path)` (int8) and "
        "`weight_storage=\"int4\"`; accuracies and agreements on the test split with LiteRT; "
        f"latency: {args.runs} interleaved invokes per file, 1 thread, batch 1, medians, with "
        "LiteRT's default XNNPACK delegate (as `litert.run` and the CLI use it) and without. "
        f"Seeds 0..{args.seeds - 1}. {stamp}; the run took {minutes:.0f} min.\n\n"
        + text + "\n\n" + "\n".join(goals) + "\n"))


if __name__ == "__main__":
    main()
