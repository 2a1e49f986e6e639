"""tfcompress vs Torch-Pruning: one residual CNN, one data set, one recipe, side by side.

Run from the repository root::

    pip install -r benchmarks/requirements-peers.txt
    python benchmarks/peers.py            # about 6 minutes on 2 CPU cores
    python benchmarks/peers.py --quick    # a smoke run with one seed and fewer epochs

Both frameworks get the same network (``tfcompress.models.residual_cnn`` width 32, mirrored
layer by layer in torch and started from the *same* initial weights, copied from Keras),
the same digits data (``tfcompress.datasets.load_digits``, NHWC for Keras, NCHW for torch),
the same float training (Adam 1e-3, batch 32), the same channel ratio (0.5, FPGM criterion)
and the same fine-tuning epochs. One run prints and records, side by side:

* channels kept per layer, MACs and parameters kept (each framework's own counter, plus
  conv + linear MACs counted the same way in both);
* accuracy of the float model, of the pruned model before and after fine-tuning (mean over
  seeds);
* time to prune + rebuild: ``fpgm_masks`` + ``rebuild`` vs Torch-Pruning's pruner
  construction (its dependency-graph trace) + ``pruner.step()``;
* latency of the slim model relative to the original in each framework's own runtime:
  LiteRT on float ``.tflite`` files for tfcompress, eager torch on CPU for Torch-Pruning,
  batch 1, one thread, medians of interleaved runs.

Without ``torch`` or ``torch-pruning`` it says so and exits 0, leaving RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _torch_peer import (  # noqa: E402  (the torch side: model mirror, training, timing)
    BATCH,
    CONVS,
    LEARNING_RATE,
    MISSING,
    RATIO,
    WIDTH,
    conv_linear_macs,
    copy_keras_weights,
    fit_torch,
    torch,
    torch_accuracy,
    torch_channels,
    torch_importance,
    torch_latency,
    torch_pruner,
    torch_pruner_name,
    torch_residual_cnn,
    tp,
)

#: Batch sizes timed: 1 (where per-op overhead shows) and 32 (where compute dominates).
LATENCY_BATCHES = (1, 32)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values, scale=100.0, digits=2):
    mean = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def timed(function, repeats, setup=lambda: None):
    """Median wall time in ms of ``function(setup())`` (setup not timed), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        argument = setup()
        start = time.perf_counter()
        result = function(argument)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


# ------------------------------------------------------------------ one seed, both frameworks
def run_seed(seed, data, epochs, finetune, prune_repeats):
    from tfcompress._keras import keras
    from tfcompress.models import compile_classifier, residual_cnn
    from tfcompress.pruning import fpgm_masks, rebuild

    (x, y), (x_test, y_test) = data
    xt, xt_test = x.transpose(0, 3, 1, 2).copy(), x_test.transpose(0, 3, 1, 2).copy()
    example = torch.from_numpy(xt[:1])
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    torch.manual_seed(seed)
    k_base = compile_classifier(residual_cnn(width=WIDTH))
    t_base = torch_residual_cnn()
    copy_keras_weights(k_base, t_base)

    def k_accuracy(model):
        return float(np.mean(model.predict(x_test, batch_size=256, verbose=0).argmax(-1) == y_test))

    out = {"tfc": {}, "tp": {}}
    k_base.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    fit_torch(t_base, xt, y, epochs, seed)
    out["tfc"]["float"] = k_accuracy(k_base)
    out["tp"]["float"] = torch_accuracy(t_base, xt_test, y_test)

    masks_ms, masks = timed(lambda _: fpgm_masks(k_base, RATIO), prune_repeats)
    rebuild_ms, k_slim = timed(lambda _: rebuild(k_base, masks), prune_repeats)
    init_ms, pruner = timed(lambda model: torch_pruner(model, example), prune_repeats,
                            setup=lambda: copy.deepcopy(t_base))
    step_ms, _ = timed(lambda p: p.step(), prune_repeats,
                       setup=lambda: torch_pruner(copy.deepcopy(t_base), example))
    t_slim = pruner.model
    pruner.step()
    out["tfc"]["time"] = (masks_ms, rebuild_ms)
    out["tp"]["time"] = (init_ms, step_ms)

    k_slim = compile_classifier(k_slim)
    out["tfc"]["one-shot"], out["tp"]["one-shot"] = k_accuracy(k_slim), torch_accuracy(
        t_slim, xt_test, y_test)
    k_slim.fit(x, y, batch_size=BATCH, epochs=finetune, verbose=0)
    fit_torch(t_slim, xt, y, finetune, seed + 1000)
    out["tfc"]["tuned"], out["tp"]["tuned"] = k_accuracy(k_slim), torch_accuracy(
        t_slim, xt_test, y_test)
    print(f"  seed {seed}: tfcompress {out['tfc']['float']:.4f} -> {out['tfc']['one-shot']:.4f} "
          f"-> {out['tfc']['tuned']:.4f} | Torch-Pruning {out['tp']['float']:.4f} -> "
          f"{out['tp']['one-shot']:.4f} -> {out['tp']['tuned']:.4f}")
    return out, (k_base, k_slim), (t_base, t_slim), example


def keras_channels(model):
    return [model.get_layer(f"{name}_bn").gamma.shape[0] for name in CONVS]


def sizes(keras_pair, torch_pair, example):
    """``{framework: {metric: (original, slim)}}`` from each side's own counters."""
    from tfcompress.pruning import count_macs, count_params

    (k_base, k_slim), (t_base, t_slim) = keras_pair, torch_pair
    t_counts = [tp.utils.count_ops_and_params(m, example) for m in (t_base, t_slim)]
    return {
        "tfc": {"macs": (count_macs(k_base), count_macs(k_slim)),
                "same macs": (count_macs(k_base), count_macs(k_slim)),
                "params": (count_params(k_base), count_params(k_slim)),
                "channels": (keras_channels(k_base), keras_channels(k_slim))},
        "tp": {"macs": tuple(int(c[0]) for c in t_counts),
               "same macs": (conv_linear_macs(t_base, example), conv_linear_macs(t_slim, example)),
               "params": tuple(int(c[1]) for c in t_counts),
               "channels": (torch_channels(t_base), torch_channels(t_slim))},
    }


def latencies(keras_pair, torch_pair, x_test, runs, batches=LATENCY_BATCHES):
    """``{batch: {framework: {"median"|"min": (original ms, slim ms)}}}``, each in its runtime."""
    from tfcompress import export

    folder = tempfile.mkdtemp(prefix="peers_bench_")
    paths = [export.to_tflite(model, os.path.join(folder, f"{name}.tflite"), quantize=None)
             for model, name in zip(keras_pair, ("original", "slim"))]
    result = {}
    for batch in batches:
        x = x_test[:batch]
        tflite = export.litert.compare_latency(paths, x, threads=1, runs=runs, warmup=10)
        eager = torch_latency(list(torch_pair), torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                              runs)
        result[batch] = {
            "tfc": {"median": tuple(r.median_ms for r in tflite),
                    "min": tuple(r.min_ms for r in tflite)},
            "tp": {"median": tuple(m for m, _ in eager), "min": tuple(m for _, m in eager)}}
    return result


# ------------------------------------------------------------------ report
def report(results, size, latency, args, elapsed):
    from _results import commit, machine

    def both(function):
        return [function("tfc"), function("tp")]

    def kept(pair):
        return pair[1] / pair[0]

    def per_seed(side, key):
        return [r[side][key] for r in results]

    def prune_time(side):
        first, second = zip(*per_seed(side, "time"))
        first, second = statistics.median(first), statistics.median(second)
        return f"{first + second:.0f} ({first:.0f} + {second:.0f})"

    rows = [
        ["how", f"`fpgm_masks(model, {RATIO})` + `rebuild`",
         f"`tp.pruner.{torch_pruner_name()}(importance={torch_importance()[1]}, "
         f"pruning_ratio={RATIO}, ignored_layers=[logits])` + `step()`"],
        ["channels per conv " + "/".join(CONVS)] + both(
            lambda s: "/".join(map(str, size[s]["channels"][0])) + " → "
            + "/".join(map(str, size[s]["channels"][1]))),
        ["MACs original → slim (own counter)"] + both(
            lambda s: f"{size[s]['macs'][0] / 1e6:.2f} M → {size[s]['macs'][1] / 1e6:.2f} M"),
        ["**MACs kept** (own counter)"] + both(lambda s: f"**{kept(size[s]['macs']):.3f}**"),
        ["MACs kept (conv + dense/linear only, both)"] + both(
            lambda s: f"{kept(size[s]['same macs']):.3f}"),
        ["params original → slim (own counter)"] + both(
            lambda s: f"{size[s]['params'][0]:,} → {size[s]['params'][1]:,}"),
        ["params kept"] + both(lambda s: f"{kept(size[s]['params']):.3f}"),
        [f"test acc % float ({args.epochs} epochs)"] + both(
            lambda s: mean_std(per_seed(s, "float"))),
        ["test acc % right after pruning"] + both(lambda s: mean_std(per_seed(s, "one-shot"))),
        [f"**test acc % after {args.finetune} fine-tuning epochs**"] + both(
            lambda s: f"**{mean_std(per_seed(s, 'tuned'))}**"),
        ["time to prune + rebuild, ms (median)"] + both(prune_time),
    ]
    for batch, times in latency.items():
        bold = "**" if batch == 1 else ""
        rows += [
            [f"latency original → slim, µs, median (min) (batch {batch}, 1 thread)"] + both(
                lambda s: " → ".join(f"{median * 1e3:.0f} ({low * 1e3:.0f})" for median, low
                                     in zip(times[s]["median"], times[s]["min"]))),
            [f"{bold}latency kept{bold} (slim / original of medians (of mins), batch {batch})"]
            + both(lambda s: f"{bold}{kept(times[s]['median']):.3f}{bold} "
                             f"({kept(times[s]['min']):.3f})"),
            [f"latency kept / MACs kept (batch {batch}, medians)"] + both(
                lambda s: f"{kept(times[s]['median']) / kept(size[s]['same macs']):.2f}"),
        ]
    header = ["", "tfcompress (tf_keras " + _tf_version() + ")",
              f"Torch-Pruning {tp.__version__} (torch {torch.__version__})"]
    markdown_table = table(header, rows)
    spread = {(batch, side): max(m / low for m, low in zip(t[side]["median"], t[side]["min"]))
              for batch, t in latency.items() for side in t}
    (worst_batch, worst_side), worst = max(spread.items(), key=lambda item: item[1])
    noise_note = (f"- Interference: the worst median was {worst:.1f}x its fastest round (batch "
                  f"{worst_batch}, {'LiteRT' if worst_side == 'tfc' else 'torch'}). "
                  + ("Medians that far from the fastest round measure the other jobs on the "
                     "machine as much as the model; read the ratios of the fastest rounds for "
                     "those rows." if worst > 1.5 else "The medians are trustworthy."))
    channels_note = ("Both keep the same channel counts per layer." if
                     size["tfc"]["channels"][1] == size["tp"]["channels"][1] else
                     "They keep different channel counts per layer (see the table).")
    seeds = ", ".join(map(str, range(args.seeds)))
    markdown = f"""## tfcompress vs Torch-Pruning (`benchmarks/peers.py`)

Measured on {machine()}, commit `{commit()}`,
torch {torch.__version__}, torch-pruning {tp.__version__}
{"(--quick run) " if args.quick else ""}in one run of {elapsed / 60:.1f} min. The machine is shared
with other jobs (1-minute load average {os.getloadavg()[0]:.1f} on 2 cores at the end of the run),
so timings are noisy, the longer batch-32 runs most: latencies are medians of {args.runs}
interleaved rounds (original and slim alternate) within each runtime, with the fastest round
(least disturbed) in parentheses.

Same residual CNN (`residual_cnn(width={WIDTH})`, mirrored module by module in torch and
started from the same initial weights, copied from Keras), same digits split (1,347 train / 450
test, 16x16), same recipe (Adam {LEARNING_RATE:g}, batch {BATCH}, {args.epochs} float epochs, prune
{RATIO:.0%} of the channels of every prunable group with an FPGM criterion, {args.finetune}
fine-tuning epochs of the slim model with a fresh Adam). Accuracies: mean ± std over seeds
{seeds}. Prune time: tfcompress `fpgm_masks` (channel-graph trace + scores) + `rebuild`;
Torch-Pruning pruner construction (dependency-graph trace) + `step()`; median of
{args.prune_repeats} repeats per seed over all seeds. Latency (models of the last seed, batches of
{" and ".join(map(str, LATENCY_BATCHES))} test images): tfcompress models as float `.tflite` on
LiteRT (XNNPACK, 1 thread), torch models in eager mode on CPU (`torch.set_num_threads(1)`).

{markdown_table}

Notes:
- "Own counter": `tfcompress.pruning.count_macs`/`count_params` (conv + dense MACs; every
  weight, BatchNorm moving statistics included) vs `tp.utils.count_ops_and_params` (module hooks:
  it also counts the BatchNorm modules, not the functional ReLUs and mean pooling of this
  model; parameters exclude BatchNorm running statistics). The
  "conv + dense/linear only" row counts torch with the tfcompress definition (forward hooks).
- Torch-Pruning's `FPGMImportance` (1.6) sums, per group member (producers and consumers),
  each filter's distances to the others computed on `|w|^2`, then averages the normalized
  member scores; tfcompress sums the distances between the signed weights of the group's
  producer filters (concatenated). {channels_note}
- The two runtimes are not compared with each other (different kernels, graph executor vs
  eager Python); only each one's slim/original ratio is. At batch 1 an eager torch forward
  pass is mostly per-module Python dispatch, a fixed cost that pruning does not shrink; the
  batch-32 rows show how much of the MACs saving each runtime turns into time once compute
  dominates.
{noise_note}
- Torch runs with one intra-op thread throughout: with two threads on this shared 2-core
  machine (TensorFlow's pools in the same process) a torch training epoch was 10x slower.
"""
    return markdown_table, markdown


def _tf_version():
    import tensorflow as tf

    return tf.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs and runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds to average accuracy over")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args(argv)
    if torch is None or tp is None:
        print(f"benchmarks/peers.py needs torch and torch-pruning ({MISSING}). Install them with "
              "`pip install -r benchmarks/requirements-peers.txt`; skipping, RESULTS.md unchanged.")
        return 0
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.quick:
        args.seeds, args.epochs, args.finetune, args.runs, args.prune_repeats = 1, 2, 1, 30, 1
    else:
        args.epochs, args.finetune, args.runs, args.prune_repeats = 8, 3, 300, 3

    from tfcompress.datasets import load_digits

    # One intra-op thread for torch throughout: with two threads on a 2-core machine that also
    # runs TensorFlow's thread pools (and other jobs), a torch training epoch was 10x slower.
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_digits(size=16)
    results = []
    for seed in range(args.seeds):
        result, keras_pair, torch_pair, example = run_seed(
            seed, data, args.epochs, args.finetune, args.prune_repeats)
        results.append(result)
    size = sizes(keras_pair, torch_pair, example)
    print("  latency (LiteRT float .tflite vs eager torch; batches "
          f"{LATENCY_BATCHES}, 1 thread, interleaved)")
    latency = latencies(keras_pair, torch_pair, data[1][0], args.runs)
    markdown_table, markdown = report(results, size, latency, args, time.perf_counter() - start)
    print(markdown_table)
    if not args.no_write:
        from _results import write_section

        write_section("peers", markdown)
        print("wrote section 'peers' of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
