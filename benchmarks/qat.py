"""QAT that earns its keep: PACT against post-training quantization on a harder digits split.

Digits saturates on its usual split (one test image = 0.22 points, every method near 99%), so
this benchmark makes it harder: a stratified **25% / 75%** split (449 training images, 1348
test images, one test image = 0.074 points), a narrow residual CNN (``width=8``, 16 px) and
more seeds. Every variant starts from a copy of the same float model and gets the same
fine-tuning budget (:func:`_pact_variants.fine_tune`: Adam at peak learning rate ``LR``,
cosine decay, batch 32, same epochs and seed), and every accuracy is that of a **LiteRT
file**:

* float control (the float model fine-tuned with that budget, a float32 file), and the
  control with its BatchNorms folded first (the float half of what QAT does);
* the TFLite converter's full-int8 post-training quantization of the control;
* tfmot's default 8-bit QAT;
* PACT (``quantize_model``) at 8/8, 4/4, 3/3, 2/2 with the defaults, and one ablation row
  per default that differs from plain PACT, switched back: ``batch_norm="fold"`` (at every
  width), ``first_last_bits=None`` and ``low_bit_activations="all"`` (below 8 bits),
  ``weight_range="max"`` (3 and 2 bits, where ``"auto"`` learns the step) and
  ``weight_range="learned"`` (4 bits, where ``"auto"`` takes the maximum, and 2 bits, where
  it learns a midrise grid); and the options that are not defaults: ``weight_range="mse"``
  (3 and 2 bits), ``weight_range="learned_midrise"`` (3 bits) and distillation from the
  float model (at every width); ``alpha_init`` (8 bits: ``"mse"``; 4 and 2 bits:
  ``"minmax"``) and ``range_learning`` (2 bits: ``"pact"``; 4 and 3 bits: ``"lsq"``);
* the control and PACT at every width fine-tuned at the earlier recipe's learning rate
  (``PREVIOUS_LR``), each compared with the control at its own rate.

Per row: mean ± std over the seeds, and the mean ± std of the per-seed difference from the
control (the same seed's float model, so the seed-to-seed spread cancels).

    python benchmarks/qat.py [--seeds 5] [--jobs 2] [--float-epochs 40] [--qat-epochs 10]
                             [--lr 3e-3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import inspect
import multiprocessing
import os
import pathlib
import signal
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _pact_variants import BATCH, copy_of, fine_tune, tfmot_qat  # noqa: E402
from _results import stamp, write_section  # noqa: E402

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.export import litert, to_tflite  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.quantization import (  # noqa: E402
    PACTQuantizer,
    fold_batch_norms,
    quantize_model,
)

SIZE, WIDTH, TEST_FRACTION, CALIBRATION = 16, 8, 0.75, 256
CONTROL = "float control"
PTQ = "converter int8 PTQ of the control"
# The fine-tuning recipe's peak learning rate (``--lr``), and the earlier recipe's, which the
# learning-rate ablation rows (the control and each PACT width) fine-tune with instead.
LR, PREVIOUS_LR = 3e-3, 1e-3
ROWS_PER_PROCESS = 12  # rows per spawned process (see run_seeds)


def pact(bits, **options):
    return lambda model: quantize_model(copy_of(model), bits, bits, **options)


def variants():
    """``{row: Row}``: how each row's model is made from the float model, trained, exported.

    Each default of ``quantize_model`` that differs from plain PACT gets its ablation row
    (the option switched back), at every width where it matters; the options that are not
    defaults (``weight_range="mse"``, ``"learned_midrise"`` at 3 bits, distillation) get
    theirs. The control and each PACT width are also fine-tuned at the earlier recipe's
    learning rate (``PREVIOUS_LR``)."""
    rows = {CONTROL: Row(copy_of),
            "float control, BatchNorm folded first": Row(lambda m: fold_batch_norms(copy_of(m))),
            "tfmot 8/8": Row(lambda m: tfmot_qat(m, 8), "int8")}
    for bits in (8, 4, 3, 2):
        rows[f"PACT {bits}/{bits}"] = Row(pact(bits), "int8")
        for option, value, widths in ABLATIONS:
            if bits in widths:
                rows[f"PACT {bits}/{bits}, {option}={_shown(value)}"] = Row(
                    pact(bits, **{option: value}), "int8")
        rows[f"PACT {bits}/{bits} + distillation"] = Row(pact(bits), "int8", distill=True)
    rows[f"{CONTROL}, lr={PREVIOUS_LR:g}"] = Row(copy_of, lr=PREVIOUS_LR)
    for bits in (8, 4, 3, 2):
        rows[f"PACT {bits}/{bits}, lr={PREVIOUS_LR:g}"] = Row(pact(bits), "int8", lr=PREVIOUS_LR)
    return rows


# (option, a value other than the default, the widths where its row is run): every width for
# batch_norm, below 8 bits (where they change something) for the others; for weight_range and
# alpha_init the widths where "auto" differs from that value (weights: 2-3 bits learn the
# step, on a midrise grid at 2 bits, 4 bits take the max; activations: 8 bits calibrate to
# the batch extremes, fewer to the least-error clip); for range_learning, PACT's gradient
# where "auto" takes LSQ's (2 bits) and LSQ's where it takes PACT's (3-4 bits).
ABLATIONS = (("batch_norm", "fold", (8, 4, 3, 2)), ("first_last_bits", None, (4, 3, 2)),
             ("low_bit_activations", "all", (4, 3, 2)), ("weight_range", "max", (3, 2)),
             ("weight_range", "learned", (4, 2)), ("weight_range", "learned_midrise", (3,)),
             ("weight_range", "mse", (3, 2)), ("alpha_init", "mse", (8,)),
             ("alpha_init", "minmax", (4, 2)), ("range_learning", "pact", (2,)),
             ("range_learning", "lsq", (4, 3)))


def _default(option):
    """The default of a ``quantize_model`` argument or of a PACT option it forwards."""
    for function in (quantize_model, PACTQuantizer.__init__):
        parameters = inspect.signature(function).parameters
        if option in parameters:
            return parameters[option].default
    raise KeyError(option)


DEFAULTS = {option: _default(option) for option, _, _ in ABLATIONS}


def _shown(value) -> str:
    """An option value as Python source: ``"fold"``, ``None``."""
    return f'"{value}"' if isinstance(value, str) else str(value)


class Row:
    """``make(float model)`` -> the model to fine-tune; ``quantize``: its TFLite export;
    ``distill`` fine-tunes on the float model's logits too (``distillation_loss``); ``lr``
    replaces the recipe's peak learning rate (the learning-rate ablation rows)."""

    def __init__(self, make, quantize=None, distill=False, lr=None):
        self.make, self.quantize, self.distill, self.lr = make, quantize, distill, lr

    def train(self, base, x, y, epochs, lr):
        return fine_tune(self.make(base), x, y, epochs, self.lr or lr,
                         teacher=base if self.distill else None)


def litert_accuracy(model, x, y, folder, quantize=None, calibration=None) -> float:
    path = to_tflite(model, pathlib.Path(folder) / "model.tflite", quantize=quantize,
                     representative_data=calibration)
    return float(np.mean(np.argmax(litert.run(path, x), axis=1) == y))


def run_rows(args, data, seed, first, last):
    """Seed ``seed``'s float model, then rows ``first:last`` of :func:`variants` from it."""
    (x, y), (xt, yt) = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    base = compile_classifier(residual_cnn((SIZE, SIZE, 1), width=WIDTH))
    base.fit(x, y, batch_size=BATCH, epochs=args.float_epochs, verbose=0)
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        if first == 0:
            result["float (no fine-tuning)"] = litert_accuracy(base, xt, yt, folder)
        for name, row in list(variants().items())[first:last]:
            keras.utils.set_random_seed(seed)
            model = row.train(base, x, y, args.qat_epochs, args.lr)
            result[name] = litert_accuracy(model, xt, yt, folder, row.quantize)
            if row.quantize is None and name.startswith(CONTROL):
                ptq = name.replace(CONTROL, PTQ)
                result[ptq] = litert_accuracy(model, xt, yt, folder, "int8", x[:CALIBRATION])
                print(f"  seed {seed} {ptq}: {result[ptq]:.4f}", flush=True)
            print(f"  seed {seed} {name}: {result[name]:.4f}", flush=True)
            del model
            gc.collect()
    return result


def run_seeds(args):
    """Every seed's results, ``{row: accuracy}`` per seed.

    Each seed's rows run in chunks of ``ROWS_PER_PROCESS``, each chunk in a fresh spawned
    process that retrains the seed's float model (deterministic for a seed: the ``lr=0.001``
    rows reproduced the earlier whole-seed runs to the image) and frees its memory when
    done. Until the quantizers stopped using ``tf.custom_gradient`` (commit ``e26435c``) a
    process grew by about 0.3 GB per row and two whole-seed workers ran this 23 GB machine
    out of memory; chunks keep a run's memory bounded whatever a row holds on to.
    ``args.jobs`` processes run at once; stopping the run (Ctrl-C or SIGTERM) terminates
    them instead of leaving them to run on."""
    count = len(variants())
    tasks = [(seed, first, min(first + ROWS_PER_PROCESS, count))
             for seed in range(args.seeds) for first in range(0, count, ROWS_PER_PROCESS)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # raises SystemExit here
    pool = concurrent.futures.ProcessPoolExecutor(
        args.jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    try:
        chunks = pool.map(run_rows, *zip(*[(args, args.data, *task) for task in tasks]))
        results = [{} for _ in range(args.seeds)]
        for (seed, _, _), chunk in zip(tasks, chunks):
            results[seed].update(chunk)  # in row order: tasks go through the rows in order
        return results
    except BaseException:  # shutdown alone would wait for the running chunks to finish
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown()


def _stats(values, sign: str = "") -> str:
    values = 100 * np.asarray(values)
    return f"{values.mean():{sign}.2f} ± {values.std():.2f}"


def markdown(results, args, minutes) -> str:
    names = list(results[0])
    control = np.array([r[CONTROL] for r in results])
    rows = ["| variant | LiteRT test accuracy % | minus the control (paired) |",
            "|---|---|---|"]
    for name in names:
        acc = np.array([r[name] for r in results])
        diff = "-" if name == CONTROL else _stats(acc - control, "+")
        rows.append(f"| {name} | {_stats(acc)} | {diff} |")
    return "\n".join([
        "## QAT vs post-training quantization on a harder split (`benchmarks/qat.py`)",
        "",
        f"{stamp()}; the run took {minutes:.0f} min ({args.jobs} process(es)). Digits at "
        f"{SIZE} px, stratified split "
        f"with {TEST_FRACTION:.0%} held out ({len(args.data[0][0])} training / "
        f"{len(args.data[1][0])} test images), `residual_cnn(width={WIDTH})`, "
        f"{args.float_epochs} float epochs (Adam 1e-3), then the same fine-tuning for every "
        f"row: {args.qat_epochs} epochs, Adam {args.lr} cosine-decayed to 0, batch {BATCH}. "
        f"Seeds 0..{len(results) - 1}. Every accuracy is a LiteRT file's (float32 for the "
        f"float rows; the PTQ row calibrates on {CALIBRATION} training images).",
        "",
        *rows,
        "",
        *verdicts(results),
        learning_rate_verdict(results, args.lr),
    ])


def _means(results) -> dict:
    """``{row: mean accuracy in %}`` over the seeds."""
    return {name: 100 * np.mean([r[name] for r in results]) for name in results[0]}


def learning_rate_verdict(results, lr) -> str:
    """The recipe's peak learning rate against the earlier one, each row paired with the
    control fine-tuned at the same rate."""
    mean = _means(results)
    old = f", lr={PREVIOUS_LR:g}"
    control, previous = mean[CONTROL], mean[CONTROL + old]
    parts = [f"control {control:.2f} vs {previous:.2f} ({control - previous:+.2f}), PTQ of it "
             f"{mean[PTQ]:.2f} vs {mean[PTQ + old]:.2f}"]
    for bits in (8, 4, 3, 2):
        now = mean[f"PACT {bits}/{bits}"] - control
        then = mean[f"PACT {bits}/{bits}{old}"] - previous
        parts.append(f"{bits}/{bits} minus its control {now:+.2f} vs {then:+.2f}")
    return (f"- Fine-tuning peak learning rate {lr:g} (recipe) vs {PREVIOUS_LR:g}: "
            + "; ".join(parts))


def verdicts(results):
    mean = _means(results)
    control, ptq = mean[CONTROL], mean[PTQ]

    def met(ok):
        return "**met**" if ok else "**not met**"

    lines = [f"- PACT 8/8 >= PTQ int8 of the control: {mean['PACT 8/8']:.2f} vs {ptq:.2f}: "
             f"{met(mean['PACT 8/8'] >= ptq)}"]
    for bits, limit in ((4, 0.5), (3, 1.0), (2, 3.0)):
        value = mean[f"PACT {bits}/{bits}"]
        lines.append(f"- PACT {bits}/{bits} within {limit} point(s) of the control: "
                     f"{value:.2f} vs {control:.2f} ({value - control:+.2f}): "
                     f"{met(control - value <= limit)}")
    for option, ablation, _ in ABLATIONS:
        deltas = []
        for bits in (8, 4, 3, 2):
            off = mean.get(f"PACT {bits}/{bits}, {option}={_shown(ablation)}")
            if off is not None:
                on = mean[f"PACT {bits}/{bits}"]
                deltas.append(f"{bits}/{bits}: {on:.2f} vs {off:.2f} ({on - off:+.2f})")
        lines.append(f"- `{option}={_shown(DEFAULTS[option])}` (default) vs `{_shown(ablation)}`: "
                     + "; ".join(deltas))
    lines.append("- Distillation (option) vs without: " + "; ".join(
        f"{b}/{b}: {mean[f'PACT {b}/{b} + distillation']:.2f} vs {mean[f'PACT {b}/{b}']:.2f} "
        f"({mean[f'PACT {b}/{b} + distillation'] - mean[f'PACT {b}/{b}']:+.2f})"
        for b in (8, 4, 3, 2)))
    folded = mean["float control, BatchNorm folded first"]
    pact_folded = mean['PACT 8/8, batch_norm="fold"']
    lines.append(f"- Folding the BatchNorms before fine-tuning, float model vs the control: "
                 f"{folded - control:+.2f}; tfmot 8/8 (BatchNorm kept): "
                 f"{mean['tfmot 8/8'] - control:+.2f}; PACT 8/8 with `batch_norm=\"fold\"`: "
                 f"{pact_folded - control:+.2f}, with the default `\"keep\"`: "
                 f"{mean['PACT 8/8'] - control:+.2f}.")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--float-epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=LR, help="fine-tuning peak LR (cosine)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes")
    parser.add_argument("--dry-run", action="store_true", help="RESULTS.md untouched")
    args = parser.parse_args(argv)
    args.data = load_digits(size=SIZE, test_fraction=TEST_FRACTION)
    started = time.perf_counter()
    results = run_seeds(args)
    text = markdown(results, args, (time.perf_counter() - started) / 60)
    print(text)
    if args.dry_run or args.seeds < 5:
        print("\n(--dry-run or fewer than 5 seeds: RESULTS.md not written)")
    else:
        print(f"\nwrote {write_section('qat', text)}")


if __name__ == "__main__":
    main()
