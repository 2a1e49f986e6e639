"""FPGM pruning benchmark: speed of the tools, callback overhead, accuracy vs l1/l2 and tfmot.

Run from the repository root::

    python benchmarks/fpgm.py                   # 20-40 minutes on 2 shared CPU cores
    python benchmarks/fpgm.py --quick           # a smoke run: prints, writes nothing
    python benchmarks/fpgm.py --only overhead   # table 2 alone (about 1 minute)

It prints four tables and rewrites the ``fpgm`` section of ``benchmarks/RESULTS.md``; with
``--only overhead`` it rewrites only the ``fpgm-overhead`` block inside that section (when a
full run has written one; otherwise it only prints):

1. ``ChannelGraph``, ``fpgm_masks`` and ``rebuild`` wall time on five ``tf_keras.applications``
   models (``weights=None``, 64 px, 10 classes) from 3.5 M to 196 M parameters, next to
   Keras' own ``clone_model`` of the slim model (interleaved rounds, medians and minima).
2. ``FPGMPruning`` overhead as a fraction of epoch time (same ``fit`` with and without the
   callback, interleaved rounds, medians; goal <= 2 %).
3. FPGM vs l1 vs l2: for each of ``--seeds`` (>= 3) base models, one-shot pruning of a
   trained residual CNN on the digits data at ratios 0.3/0.5/0.7, then the same fine-tuning
   of every rebuilt slim model and of the unpruned control; mean ± std over seeds.
4. tfmot ``prune_low_magnitude`` at the same nominal sparsities for contrast (seed 0):
   accuracy after the same fine-tuning, gzipped TFLite size and LiteRT latency (after
   ``strip_pruning``), next to the FPGM slim models.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _fpgm_parts as parts  # noqa: E402
import _results  # noqa: E402
import numpy as np  # noqa: E402
from _fpgm_parts import table  # noqa: E402
from _results import machine, write_section  # noqa: E402

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.pruning import FPGMPruning  # noqa: E402

# ------------------------------------------------------------------ 2. callback overhead
HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
         "on_epoch_end", "on_train_end")
VARIANTS = {"no callback": None, "soft, update once per epoch": "soft",
            "hard, re-zero after every batch": "hard"}


def timed_hooks(callback):
    """Makes ``callback`` add the wall time spent in its own hooks to ``callback.hook_s``."""
    callback.hook_s = 0.0
    for name in HOOKS:
        def hook(*args, _original=getattr(callback, name), **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                callback.hook_s += time.perf_counter() - start
        setattr(callback, name, hook)
    return callback


def callback_overhead(data, rounds):
    """Two measures: the time spent inside the callback's hooks (robust to machine noise),
    and the difference of whole ``fit`` calls with and without it (what users see).

    Each variant trains its own copy of the same model; one warm-up epoch each (tracing),
    then ``rounds`` rounds of one epoch per variant, the order rotated every round; medians.
    """
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    initial = residual_cnn(width=32).get_weights()
    models, callbacks = {}, {}
    for name, mode in VARIANTS.items():
        model = residual_cnn(width=32)
        model.set_weights(initial)
        models[name] = compile_classifier(model)
        callbacks[name] = [] if mode is None else [timed_hooks(FPGMPruning(0.5, mode=mode))]
        models[name].fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks[name])
    times = {name: [] for name in VARIANTS}
    hooks = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for round_ in range(rounds):
        for name in names[round_ % 3:] + names[:round_ % 3]:  # rotate the order each round
            for callback in callbacks[name]:
                callback.hook_s = 0.0
            start = time.perf_counter()
            models[name].fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks[name])
            times[name].append(time.perf_counter() - start)
            hooks[name].append(sum(callback.hook_s for callback in callbacks[name]))
    return times, hooks, int(np.ceil(len(x) / 32))


def overhead_report(times, hooks, steps):
    """The table and the numbers the verdict quotes, from :func:`callback_overhead`'s runs."""
    base = statistics.median(times["no callback"])
    rows, overheads = [], {}
    for name in VARIANTS:
        median = statistics.median(times[name])
        # Per round: hook time over that round's epoch time, then the median of the ratios.
        share = statistics.median(h / t for h, t in zip(hooks[name], times[name]))
        overheads[name] = share
        dash = name == "no callback"
        rows.append([name, f"{median * 1e3:.0f}",
                     "-" if dash else f"{median / base - 1:+.1%}",
                     "-" if dash else f"{statistics.median(hooks[name]) * 1e3:.1f}",
                     "-" if dash else f"{share:.2%}"])
    hard = "hard, re-zero after every batch"
    overheads["hard ms per batch"] = statistics.median(hooks[hard]) / steps * 1e3
    overheads["ms per batch"] = base / steps * 1e3
    header = [f"fit, 1 epoch (residual_cnn width 32, digits, {steps} steps of 32)",
              "median ms", "fit time vs no callback", "median ms inside the callback's hooks",
              "hooks / epoch time (median)"]
    return table(header, rows), overheads


def overhead_markdown(overhead_table, overheads, rounds, load, quick):
    soft = overheads["soft, update once per epoch"]
    hard = overheads["hard, re-zero after every batch"]
    goal = lambda value: "met" if value <= 0.02 else "NOT met"  # noqa: E731
    stamp = getattr(_results, "stamp", machine)()
    return f"""<!-- begin fpgm-overhead -->
### `FPGMPruning` callback overhead (median of {rounds} interleaved rounds, whole `fit` call)
{stamp}{" (--quick run)" if quick else ""}; load average {load:.1f} at the start.

{overhead_table}

Each epoch runs one mask update (the default schedule for a float ratio; recomputed masks
equal to the ones in force are not re-applied) and, in hard mode, one compiled call per batch
that re-zeroes the masked variables and reads the optimizer step. Goal <= 2 % of epoch time,
judged on the time spent inside the hooks (per round, hook time / that epoch's time; the
median over rounds): soft mode {goal(soft)} ({soft:.2%}), hard mode {goal(hard)} ({hard:.2%}).
Hard mode pays {overheads["hard ms per batch"]:.2f} ms per batch against
{overheads["ms per batch"]:.0f} ms per training batch of this tiny model; the share shrinks
as models and batches grow. The whole-`fit` differences are the honest user view, but on a
shared 2-core machine they swing by tens of percent between runs, far more than the effect
measured.
<!-- end fpgm-overhead -->"""


# ------------------------------------------------------------------ 3./4. accuracy
def accuracy_tables(data, seeds, epochs, finetune, latency_runs):
    """Table 3 over ``seeds`` base models and table 4 on the seed-0 one, as markdown."""
    runs, contrast = [], None
    for seed in range(seeds):
        keras.backend.clear_session()
        base, out, slims = parts.seed_run(data, seed, epochs, finetune)
        runs.append(out)
        if seed == 0:
            contrast = parts.tfmot_contrast(data, base, out, slims, finetune, latency_runs)
            print(contrast)
        del base, slims
    (x, _), (x_test, y_test) = data
    chance = 1 / len(np.unique(y_test))
    criteria = parts.criteria_table(runs)
    print(criteria)
    return f"""### FPGM vs l1 vs l2 on digits (residual CNN width 16, {seeds} seeds)
{len(x)} training and {len(x_test)} test images (16 px). For each seed 0..{seeds - 1}: a base
model trained {epochs} epochs with that seed (test accuracy {parts.pm(r["base"] for r in runs)}
over seeds), pruned one-shot with `fpgm_masks(criterion=...)`, rebuilt, then fine-tuned
{finetune} epochs (fresh Adam, same data, batch 32, shuffling seeded with the base model's
seed); the unpruned control fine-tuned the same way reaches
{parts.pm(r["control"] for r in runs)}. Cells: mean ± std (sample) over the {seeds} seeds;
MACs and params kept are those of the seed-0 FPGM slim models (the same for every criterion:
the keep counts depend only on the ratio).

{criteria}

{parts.criteria_sentences(runs, chance)}

Pruning *during* training is `FPGMPruning`'s job, not measured here: the must-show test in
`tests/pruning/test_callback.py` ramps a width-32 model to ratio 0.5 and asserts it stays
within 2 points of the unpruned accuracy.

### Contrast: tfmot `prune_low_magnitude` at the same nominal sparsity (seed 0)
tfmot zeroes that fraction of the weights of each layer (`ConstantSparsity`, {finetune}
epochs of the same fine-tuning, `strip_pruning`) and keeps the dense shapes; FPGM at channel
ratio r removes whole channels. Latencies measured with interleaved runs.

{contrast}"""


def only_overhead(data, rounds, load, quick):
    """``--only overhead``: prints table 2; rewrites its block only if RESULTS.md has one."""
    times, hooks, steps = callback_overhead(data, rounds)
    overhead_table, overheads = overhead_report(times, hooks, steps)
    markdown = overhead_markdown(overhead_table, overheads, rounds, load, quick)
    print(markdown)
    results = _results.RESULTS
    if results.exists() and "<!-- begin fpgm-overhead -->" in results.read_text():
        write_section("fpgm-overhead", markdown.split("\n", 1)[1].rsplit("\n", 1)[0])
        print("wrote block 'fpgm-overhead' of benchmarks/RESULTS.md")
    else:
        print("RESULTS.md has no 'fpgm-overhead' block yet (a full run writes it): not written")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: fewer models, repeats, epochs; writes nothing")
    parser.add_argument("--only", choices=["overhead"],
                        help="run only the callback-overhead measurement")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the overhead table")
    parser.add_argument("--seeds", type=int,
                        help="base models for table 3 (default 3; a full run needs >= 3)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 3)
    if args.seeds < (1 if args.quick else 3):
        parser.error(f"--seeds must be >= 3 for a full run (mean ± std), got {args.seeds}")
    return args


def main(argv=None):
    args = parse(argv)
    stamp, dirty = _results.stamp(), parts.dirty_paths()  # at the start: the code that runs
    repeats, rounds, epochs, finetune, runs = (1, 3, 2, 1, 20) if args.quick else (3, 9, 8, 3, 200)
    rounds = args.rounds or rounds
    data = load_digits(size=16)
    load = os.getloadavg()[0]
    if args.only == "overhead":
        return only_overhead(data, rounds, load, args.quick)

    print("1. ChannelGraph / fpgm_masks / rebuild / clone_model speed")
    models = parts.SPEED_MODELS[::2] if args.quick else parts.SPEED_MODELS
    speed = parts.tool_speed(repeats, models)
    print(speed)
    print("2. callback overhead")
    overhead_table, overheads = overhead_report(*callback_overhead(data, rounds))
    overhead = overhead_markdown(overhead_table, overheads, rounds, load, args.quick)
    print(overhead)
    print("3./4. accuracy")
    accuracy = accuracy_tables(data, args.seeds, epochs, finetune, runs)
    note = f" Tracked files differing from that commit at the start (others at work): " \
        f"{', '.join(dirty)}." if dirty else ""
    markdown = f"""## FPGM pruning (`benchmarks/fpgm.py`)

{stamp}{" (--quick run)" if args.quick else ""}; load average {load:.1f} at the start.{note}

### Tool speed: trace, `fpgm_masks`, `rebuild` (ratio 0.3) against `clone_model`
{speed}

{overhead}

{accuracy}
"""
    if args.quick:
        print(markdown + "\n--quick: benchmarks/RESULTS.md not written")
        return
    write_section("fpgm", markdown)
    print("wrote section 'fpgm' of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
