"""Tables 1, 3 and 4 of ``benchmarks/fpgm.py``: tool speed, criteria over seeds, tfmot contrast.

Every sentence these functions return is computed from the numbers they measured.
"""

from __future__ import annotations

import gc
import gzip
import math
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import tensorflow_model_optimization as tfmot

from tfcompress import export
from tfcompress._keras import keras
from tfcompress.models import compile_classifier, residual_cnn
from tfcompress.pruning import ChannelGraph, fpgm_masks, graph_macs, rebuild

SPEED_MODELS = ("MobileNetV2", "ResNet50", "ResNet152", "EfficientNetV2L", "ConvNeXtLarge")
SIDES = (64, 75, 96, 128, 160, 224)  # 64 px first, the next size up if a model refuses it
RATIOS = (0.3, 0.5, 0.7)
CRITERIA = ("fpgm", "l1", "l2")
MASKS_GOAL_S, REBUILD_GOAL = 2.0, 1.2


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def dirty_paths():
    """Tracked files that differ from HEAD (other engineers' edits in progress)."""
    done = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                           "--untracked-files=no"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)), check=False)
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------ 1. tool speed
def build(name):
    """``name`` with random weights, 10 classes, at the smallest side in SIDES it accepts."""
    for side in SIDES:
        try:
            return getattr(keras.applications, name)(
                weights=None, input_shape=(side, side, 3), classes=10), side
        except ValueError:
            keras.backend.clear_session()
    raise ValueError(f"{name} accepts none of the input sides {SIDES}")


def clock(function, times, kept):
    """Times one call into ``times``; its result joins ``kept`` (freed after the model's row,
    so no deallocation of an earlier result lands inside a timed call)."""
    gc.collect()
    start = time.perf_counter()
    result = function()
    times.append(time.perf_counter() - start)
    kept.append(result)
    return result


def gram_work(graph, masks):
    """Multiply-accumulates of FPGM's Gram products: ``size^2 x features`` summed over the
    groups ``masks`` prunes (the filters of all producers of a group, concatenated)."""
    work = 0
    for group in graph.groups:
        if group.id in masks.kept and len(masks.kept[group.id]) < group.size:
            work += group.size ** 2 * graph.filters(group).shape[1]
    return work


def matmul_rate(repeats=3):
    """This machine's float32 matrix-product speed now (GMAC/s, best of ``repeats``), on a
    product of the shape FPGM computes (1024 filters of 16384 features)."""
    f = np.random.default_rng(0).normal(size=(1024, 16384)).astype(np.float32)
    best = min(_timed_product(f) for _ in range(repeats))
    return 1024 * 1024 * 16384 / best / 1e9


def _timed_product(f):
    start = time.perf_counter()
    f @ f.T
    return time.perf_counter() - start


def speed_row(name, rounds):
    """Trace, masks, then rebuild and ``clone_model`` of the slim model interleaved: the order
    alternates every round (rebuild first in round 0, which gives the slim model to clone)."""
    keras.backend.clear_session()
    model, side = build(name)
    times = {key: [] for key in ("trace", "masks", "rebuild", "clone")}
    kept = []
    for _ in range(rounds):
        graph = clock(lambda: ChannelGraph(model), times["trace"], kept)
        masks = clock(lambda: fpgm_masks(model, 0.3), times["masks"], kept)
    slim = None
    for round_ in range(rounds):
        steps = ["rebuild", "clone"] if round_ % 2 == 0 else ["clone", "rebuild"]
        for step in steps:
            if step == "rebuild":
                slim = clock(lambda: rebuild(model, masks), times["rebuild"], kept)
            else:
                clock(lambda: keras.models.clone_model(slim), times["clone"], kept)
    row = {"name": name, "side": side, "params": model.count_params(),
           "macs_kept": graph_macs(graph, masks) / graph_macs(graph),
           "params_kept": slim.count_params() / model.count_params(),
           "gram": gram_work(graph, masks)}
    row.update({key: (statistics.median(values), min(values)) for key, values in times.items()})
    return row  # the models and everything in ``kept`` are freed on return


def floor_sentence(rows, rate):
    """Which models' median ``fpgm_masks`` time is at most twice the time their Gram products
    alone need at the measured matmul rate (the arithmetic floor of exact FPGM)."""
    parts = [f"{r['name']} {r['gram'] / 1e9:.0f} GMAC = {r['gram'] / 1e9 / rate:.2f} s of "
             f"{r['masks'][0]:.2f} s" for r in rows]
    bound = [r["name"] for r in rows if r["masks"][0] <= 2 * r["gram"] / 1e9 / rate]
    return (f"FPGM's Gram products (size^2 x features per scored group) at this machine's "
            f"measured float32 matmul rate ({rate:.0f} GMAC/s, best of 3 just before the table): "
            + "; ".join(parts) + ". Within 2x of that arithmetic floor: "
            + (", ".join(bound) if bound else "none") + ".")


def speed_markdown(rows, rounds, loads, rate):
    def cell(pair):
        return f"{pair[0]:.2f} ({pair[1]:.2f})"

    lines = [[f"{r['name']} ({r['side']} px)", f"{r['params'] / 1e6:.1f} M", cell(r["trace"]),
              cell(r["masks"]), cell(r["rebuild"]), cell(r["clone"]),
              f"{r['rebuild'][0] / r['clone'][0]:.2f}", f"{r['macs_kept']:.3f}",
              f"{r['params_kept']:.3f}"] for r in rows]
    header = ["model (weights=None, 10 classes)", "params", "trace s (ChannelGraph)",
              "fpgm_masks(0.3) s", "rebuild s", "clone_model(slim) s", "rebuild/clone",
              "MACs kept", "params kept"]
    slow = [f"{r['name']} ({r['masks'][0]:.2f} s)" for r in rows if r["masks"][0] > MASKS_GOAL_S]
    over = [f"{r['name']} ({r['rebuild'][0] / r['clone'][0]:.3f}x)" for r in rows
            if r["rebuild"][0] > REBUILD_GOAL * r["clone"][0]]
    verdict_masks = ("met for every model" if not slow else "NOT met for " + ", ".join(slow))
    verdict_rebuild = ("met for every model" if not over else "NOT met for " + ", ".join(over))
    return f"""Median (min) wall time of {rounds} calls each; `rebuild(model, masks)` and Keras'
own `keras.models.clone_model` of the slim model (a config round trip that builds the same
layers with fresh weights) alternate within the same rounds; `clear_session` between models.
Load average (1 min) {loads[0]:.1f} before this table and {loads[1]:.1f} after it.

{table(header, lines)}

Goal `fpgm_masks(0.3) <= {MASKS_GOAL_S:g} s` (median): {verdict_masks}.
Goal `rebuild <= {REBUILD_GOAL:g}x clone_model` (ratio of medians): {verdict_rebuild}.

{floor_sentence(rows, rate)}"""


def tool_speed(rounds, models=SPEED_MODELS):
    loads = [os.getloadavg()[0]]
    rate = matmul_rate()
    rows = []
    for name in models:
        rows.append(speed_row(name, rounds))
        keras.backend.clear_session()
        gc.collect()
        r = rows[-1]
        print(f"  {name}: masks {r['masks'][0]:.2f} s, rebuild {r['rebuild'][0]:.2f} s, "
              f"clone {r['clone'][0]:.2f} s")
    loads.append(os.getloadavg()[0])
    return speed_markdown(rows, rounds, loads, rate)


# ------------------------------------------------------------------ 3./4. accuracy
def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train_base(data, epochs, seed):
    (x, y), _ = data
    keras.utils.set_random_seed(seed)
    base = compile_classifier(residual_cnn(width=16))
    base.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return base


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return compile_classifier(clone)


def finetune(model, data, epochs, seed):
    """The one fine-tuning budget: fresh Adam (``compile_classifier``), the same data, epochs,
    batch size and shuffling seed for every variant of a base model. Returns test accuracy."""
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return accuracy(model, x_test, y_test)


def seed_run(data, seed, epochs, finetune_epochs):
    """One base model: its accuracy, the fine-tuned unpruned control and, for every ratio and
    criterion, (one-shot, fine-tuned) accuracy. Also the fine-tuned control and FPGM slim models
    (``"dense"`` and each ratio)."""
    base = train_base(data, epochs, seed)
    out = {"base": accuracy(base, *data[1])}
    graph, slims = ChannelGraph(base), {"dense": copy_of(base)}
    out["control"] = finetune(slims["dense"], data, finetune_epochs, seed)
    print(f"  seed {seed}: base {out['base']:.4f}, control {out['control']:.4f}")
    for ratio in RATIOS:
        for criterion in CRITERIA:
            masks = fpgm_masks(base, ratio, criterion=criterion)
            slim = compile_classifier(rebuild(base, masks))
            one_shot = accuracy(slim, *data[1])
            out[ratio, criterion] = (one_shot, finetune(slim, data, finetune_epochs, seed))
            print(f"  seed {seed} {criterion} {ratio}: {one_shot:.4f} -> "
                  f"{out[ratio, criterion][1]:.4f}")
            if criterion == "fpgm":
                out[ratio, "kept"] = (graph_macs(graph, masks) / graph_macs(graph),
                                      slim.count_params() / base.count_params())
                slims[ratio] = slim
    return base, out, slims


def mean_std(values):
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.mean(values), std


def pm(values):
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def criteria_table(runs):
    rows = []
    for ratio in RATIOS:
        macs, params = runs[0][ratio, "kept"]
        rows.append([f"{ratio:.1f}", f"{macs:.2f}", f"{params:.2f}"] + [
            f"{pm(r[ratio, c][0] for r in runs)} → {pm(r[ratio, c][1] for r in runs)}"
            for c in CRITERIA])
    header = ["ratio", "MACs kept", "params kept"] + [
        f"{c} acc, one-shot → fine-tuned" for c in CRITERIA]
    return table(header, rows)


def criteria_sentences(runs, chance):
    """Per ratio, the criterion with the best fine-tuned mean and whether its lead over the
    runner-up exceeds the larger of their two stds; then the one-shot range per ratio."""
    lines = []
    for ratio in RATIOS:
        stats = sorted(((*mean_std(r[ratio, c][1] for r in runs), c) for c in CRITERIA),
                       reverse=True)
        (m1, s1, best), (m2, s2, second) = stats[0], stats[1]
        lead, noise = m1 - m2, max(s1, s2)
        judged = (f"more than the larger std ({noise:.3f})" if lead > noise
                  else f"within noise (larger std {noise:.3f})")
        lines.append(f"- ratio {ratio:.1f}: {best} has the best fine-tuned mean ({m1:.3f}), "
                     f"{lead:.3f} ahead of {second} ({m2:.3f}): {judged}.")
    shots = {ratio: [r[ratio, c][0] for r in runs for c in CRITERIA] for ratio in RATIOS}
    near = sum(abs(v - chance) <= 0.05 for values in shots.values() for v in values)
    total = sum(len(values) for values in shots.values())
    ranges = "; ".join(f"{min(v):.3f}-{max(v):.3f} at ratio {ratio:.1f}"
                       for ratio, v in shots.items())
    lines.append(f"- One-shot (before fine-tuning), accuracy over all criteria and seeds spans "
                 f"{ranges}; {near} of {total} one-shot models are within 0.05 of chance "
                 f"({chance:.3f}).")
    return "\n".join(lines)


def tflite_stats(model, folder, name):
    path = export.to_tflite(model, os.path.join(folder, f"{name}.tflite"), quantize=None)
    return str(path), len(gzip.compress(path.read_bytes(), 9))


def tfmot_contrast(data, base, out, slims, finetune_epochs, latency_runs):
    """Table 4 (one base model, seed 0): tfmot ``prune_low_magnitude`` under the same
    fine-tuning, next to :func:`seed_run`'s fine-tuned control and FPGM slim models."""
    folder = tempfile.mkdtemp(prefix="fpgm_bench_")
    entries = [("dense (fine-tuned)", out["control"], 1.0,
                *tflite_stats(slims["dense"], folder, "dense"))]
    for ratio in RATIOS:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(
            copy_of(base), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(
                ratio, begin_step=0, frequency=10))
        compile_classifier(pruned)
        keras.utils.set_random_seed(0)
        pruned.fit(*data[0], batch_size=32, epochs=finetune_epochs, verbose=0,
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        entries.append((f"tfmot prune_low_magnitude {ratio:.1f}", accuracy(stripped, *data[1]),
                        1.0, *tflite_stats(stripped, folder, f"tfmot_{ratio}")))
        entries.append((f"FPGM {ratio:.1f} (slim)", out[ratio, "fpgm"][1], out[ratio, "kept"][1],
                        *tflite_stats(slims[ratio], folder, f"fpgm_{ratio}")))
    latencies = export.litert.compare_latency([e[3] for e in entries], data[1][0][:1],
                                              threads=1, runs=latency_runs)
    micros = [lat.median_ms * 1e3 for lat in latencies]
    rows = [[name, f"{acc:.3f}", f"{params:.2f}", f"{gz / 1024:.1f}", f"{us:.0f}"]
            for (name, acc, params, _, gz), us in zip(entries, micros)]
    header = ["model (seed 0, same fine-tuning)", "test acc", "params kept (dense storage)",
              "gzipped .tflite KiB", "LiteRT latency µs (median, batch 1, 1 thread)"]
    return table(header, rows) + "\n\n" + tfmot_sentence(entries, micros)


def tfmot_sentence(entries, micros):
    def ratios(prefix, column):
        values = [column[i] / column[0] for i, e in enumerate(entries) if e[0].startswith(prefix)]
        return ", ".join(f"{v:.2f}x" for v in values)

    sizes = [e[4] for e in entries]
    return (f"Relative to the dense model (ratios 0.3, 0.5, 0.7): tfmot's stripped float "
            f"`.tflite` files take {ratios('tfmot', micros)} of its latency and "
            f"{ratios('tfmot', sizes)} of its gzipped size; FPGM's slim ones take "
            f"{ratios('FPGM', micros)} of its latency and {ratios('FPGM', sizes)} of its "
            f"gzipped size.")
