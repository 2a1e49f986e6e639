"""Ask for a speed-up, get it: latency-targeted pruning measured on LiteRT (1 thread).

Run from the repository root::

    python benchmarks/latency.py            # MobileNetV2 160 px, ResNet50 128 px, digits; ~30 min
    python benchmarks/latency.py --quick    # MobileNetV2 96 px, int8, target 0.5, one seed
    python benchmarks/latency.py --skip-digits --models MobileNetV2 --dtypes int8

Part 1, ImageNet architectures (``weights=None``, random BatchNorm statistics): for each
runtime (``litert-float32``, ``litert-int8``) and target (0.7, 0.5, 0.35),
``latency_plan`` allocates kept counts (and residual branches) from the measured latency
tables; the plan's prediction is taken as it is (no measured correction beyond the latency
model's own calibration), so the error column is the latency model's; ``targeted + check``
adds ``check_latency=True``. For comparison, the uniform-ratio FPGM model of equal latency.
Every file of a model and dtype (original, targeted, uniform) is timed in the same
interleaved rounds, each round running each file 5 times back to back (warm: medians and
minima), then again with one invoke per file per round (cold: medians).

Part 2, digits (3 seeds): a residual CNN trained on digits at 32 px; the uniform-ratio slim
model (ratio 0.5) is measured, and its latency kept is the target of the latency-targeted
plans (default loss, and a sensitivity scan as the loss); each slim model is fine-tuned
with the same recipe; test accuracy of all three.

It prints the tables and rewrites the ``latency_targets`` section of
``benchmarks/RESULTS.md`` (not with --quick or a subset).
"""

from __future__ import annotations

import argparse
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
from _results import stamp, write_section  # noqa: E402

from tfcompress import export  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.latency import measure_models  # noqa: E402
from tfcompress.latency.whole import export_for  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.pruning import (  # noqa: E402
    ChannelGraph,
    count_macs,
    keep_count,
    latency_plan,
    rebuild,
    select_masks,
    sensitivity,
)
from tfcompress.pruning.latency_model import latency_model  # noqa: E402

TARGETS = (0.7, 0.5, 0.35)
RUNTIMES = {"float32": "litert-float32", "int8": "litert-int8"}
FULL = [("MobileNetV2", 160), ("ResNet50", 128)]
QUICK = [("MobileNetV2", 96)]
GOAL = 1.05
WARM = 5  # back-to-back invokes of a file per round: the steady state of a model in a loop
STATS = ("median_ms", "min_ms")
DIGITS = {"size": 32, "width": 64, "epochs": 12, "finetune": 6, "ratio": 0.5,
          "runtime": "litert-int8", "scan_images": 300}
DIGITS_METHODS = ("targeted", "sensitivity", "uniform")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def build(name, size):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # untrained BN: identical filters would make ranking moot
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])
    return model


def uniform_counts(graph, ratio, tiles):
    """One ratio for every group, kept counts rounded up to the runtime's tile (as the
    targeted allocation's are: a count between two tiles costs the next tile)."""
    return {g.id: min(g.size, -(-keep_count(g.size, ratio) // tiles[g.id]) * tiles[g.id])
            for g in graph.groups if g.prunable}


def uniform_masks(graph, ratio, tiles):
    counts = uniform_counts(graph, ratio, tiles)
    return select_masks(graph, per_layer={g: 1 - c / graph.group(g).size
                                          for g, c in counts.items()})


class Variant:
    def __init__(self, label, model, slim, masks, predicted, removed=0):
        self.label, self.slim, self.masks = label, slim, masks
        self.macs = count_macs(slim) / count_macs(model)
        self.predicted, self.removed = predicted, removed


def uniform_candidates(graph, lm, kept, count=4):
    """The ``count`` uniform ratios (0.01 apart, one per distinct set of kept counts) whose
    predicted latency kept is nearest ``kept``."""
    configs = {}
    for ratio in np.round(np.arange(0.0, 0.96, 0.01), 2):
        configs.setdefault(tuple(sorted(uniform_counts(graph, ratio, lm.cost.tiles).items())),
                           float(ratio))
    predicted = {r: lm.predict_ms(dict(c)) / lm.full_ms for c, r in configs.items()}
    return sorted(sorted(predicted, key=lambda r: abs(predicted[r] - kept))[:count]), predicted


def equal_latency_uniform(model, graph, lm, targeted, runtime, folder):
    """The least-pruned uniform-ratio model measuring at most the targeted model's latency
    (+2 %), among the 4 whose predictions are nearest the targeted model's (else the one
    measuring closest)."""
    ratios, predicted = uniform_candidates(graph, lm, targeted.predicted)
    slims = [rebuild(model, uniform_masks(graph, r, lm.cost.tiles)) for r in ratios]
    paths = [export_for(s, runtime, folder / f"u{targeted.target}_{r}.tflite")
             for s, r in zip(slims, ratios)]
    times = measure_models([targeted.path] + paths, runtime, rounds=21)
    relative = [u / times[0] for u in times[1:]]
    fitting = [i for i, x in enumerate(relative) if x <= 1.02]
    i = fitting[0] if fitting else int(np.argmin([abs(x - 1) for x in relative]))
    variant = Variant(f"uniform r={ratios[i]:.2f}", model, slims[i], None, predicted[ratios[i]])
    variant.path = paths[i]
    return variant


def checked(model, graph, target, runtime, folder):
    """``latency_plan(..., check_latency=True)``: measured, and allocated again if slower."""
    plan = latency_plan(graph, target, runtime, check_latency=True)
    slim = rebuild(model, select_masks(graph, per_layer=plan.ratios()))
    variant = Variant("targeted + check", model, slim, None, plan.predicted_kept,
                      len([g for g, c in plan.counts.items() if c == 0]))
    variant.path = export_for(slim, runtime, folder / f"checked_{target}.tflite")
    return variant


def imagenet_rows(name, size, dtype, targets, runs, folder):
    runtime = RUNTIMES[dtype]
    model = build(name, size)
    graph = ChannelGraph(model)
    start = time.perf_counter()
    lm = latency_model(graph, runtime, progress=True)
    table_s = time.perf_counter() - start
    variants = []
    for target in targets:
        plan = latency_plan(graph, target, runtime)
        masks = select_masks(graph, per_layer=plan.ratios())
        slim = rebuild(model, masks)
        targeted = Variant("targeted", model, slim, masks, plan.predicted_kept,
                           len([g for g, c in plan.counts.items() if c == 0]))
        targeted.target = target
        targeted.path = export_for(slim, runtime, folder / f"targeted_{target}.tflite")
        uniform = equal_latency_uniform(model, graph, lm, targeted, runtime, folder)
        variants.append((target, targeted, checked(model, graph, target, runtime, folder),
                         uniform))
        print(f"  {name} {dtype} target {target}: ready", flush=True)
    paths = [export_for(model, runtime, folder / "full.tflite")]
    paths += [v.path for _, *group in variants for v in group]
    x = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    warm, cold = (export.litert.compare_latency(paths, x, threads=1, runs=runs, warmup=3,
                                                repeat=repeat) for repeat in (WARM, 1))
    rows, k = [], 1
    for target, *group in variants:
        for variant in group:
            median, low = (getattr(warm[k], a) / getattr(warm[0], a) for a in STATS)
            rows.append({"model": f"{name} {size}px", "dtype": dtype, "target": target,
                         "method": variant.label, "macs": variant.macs,
                         "predicted": variant.predicted, "median": median, "min": low,
                         "cold": cold[k].median_ms / cold[0].median_ms,
                         "error": variant.predicted / median - 1, "removed": variant.removed,
                         "full_ms": warm[0].median_ms, "table_s": table_s})
            k += 1
    return rows


def digits_targeted(model, graph, target, runtime, scan, label):
    """The latency-targeted slim model at ``target`` (checked by measurement)."""
    plan = latency_plan(graph, target, runtime, sensitivity=scan, check_latency=True)
    slim = rebuild(model, select_masks(graph, per_layer=plan.ratios()))
    return Variant(label, model, slim, None, plan.predicted_kept,
                   len([g for g, c in plan.counts.items() if c == 0]))


def digits_seed(seed, data):
    """Uniform ratio first; its measured latency kept is the targeted plans' target."""
    (x, y), (xt, yt) = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = compile_classifier(residual_cnn((DIGITS["size"],) * 2 + (1,), width=DIGITS["width"]))
    model.fit(x, y, batch_size=32, epochs=DIGITS["epochs"], verbose=0)
    graph = ChannelGraph(model)
    runtime = DIGITS["runtime"]
    lm = latency_model(graph, runtime)
    ratio = DIGITS["ratio"]
    uniform = Variant(f"uniform r={ratio:.2f}", model,
                      rebuild(model, uniform_masks(graph, ratio, lm.cost.tiles)), None, None)
    xv, yv = x[-DIGITS["scan_images"]:], y[-DIGITS["scan_images"]:]
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        full = export_for(model, runtime, folder / "full.tflite")
        uniform.path = export_for(uniform.slim, runtime, folder / "u.tflite")
        full_ms, u_ms = measure_models([full, uniform.path], runtime, rounds=31)
        target = u_ms / full_ms
        scan = sensitivity(model, lambda m: -m.evaluate(xv, yv, verbose=0)[0], progress=False)
        variants = [digits_targeted(model, graph, target, runtime, None, "targeted"),
                    digits_targeted(model, graph, target, runtime, scan,
                                    "targeted + sensitivity"), uniform]
        for i, variant in enumerate(variants[:2]):
            variant.path = export_for(variant.slim, runtime, folder / f"t{i}.tflite")
        times = measure_models([full] + [v.path for v in variants], runtime, rounds=31)
    result = {"seed": seed, "full_ms": times[0], "target": target}
    for key, variant, ms in zip(DIGITS_METHODS, variants, times[1:]):
        slim = compile_classifier(variant.slim)
        keras.utils.set_random_seed(seed + 100)
        slim.fit(x, y, batch_size=32, epochs=DIGITS["finetune"], verbose=0)
        result[key] = {"accuracy": float(slim.evaluate(xt, yt, verbose=0)[1]),
                       "kept": ms / times[0], "macs": variant.macs, "label": variant.label,
                       "removed": variant.removed}
    print(f"  digits seed {seed}: {result}", flush=True)
    return result


def imagenet_markdown(rows):
    body = table(
        ["model", "dtype", "target", "method", "MACs kept", "predicted kept",
         "measured kept (median)", "(min)", "prediction error", "cold kept (median)",
         "branches removed"],
        [[r["model"], r["dtype"], r["target"], r["method"], f"{r['macs']:.3f}",
          f"{r['predicted']:.3f}", f"**{r['median']:.3f}**", f"{r['min']:.3f}",
          f"{r['error']:+.1%}", f"{r['cold']:.3f}",
          "-" if r["method"].startswith("uniform") else r["removed"]]
         for r in rows])
    goals = []
    for method in ("targeted", "targeted + check"):
        goals.append(f"`{method}`:")
        for r in (r for r in rows if r["method"] == method):
            met = r["median"] <= r["target"] * GOAL and r["min"] <= r["target"] * GOAL
            goals.append(f"- {r['model']} {r['dtype']} target {r['target']}: measured "
                         f"{r['median']:.3f} (median) / {r['min']:.3f} (min) vs limit "
                         f"{r['target'] * GOAL:.3f}: **{'met' if met else 'not met'}**")
    errors = []
    for key in dict.fromkeys((r["model"], r["dtype"]) for r in rows):
        errs = [abs(r["error"]) for r in rows if (r["model"], r["dtype"]) == key]
        colds = [abs(r["predicted"] / r["cold"] - 1) for r in rows
                 if (r["model"], r["dtype"]) == key]
        errors.append(f"- {key[0]} {key[1]}: mean |error| {statistics.mean(errs):.1%}, max "
                      f"{max(errs):.1%} over {len(errs)} slim models: "
                      f"**{'met' if max(errs) <= 0.10 else 'not met'}** (goal <= 10%); "
                      f"against the cold protocol: mean {statistics.mean(colds):.1%}, max "
                      f"{max(colds):.1%}")
    same = list(zip(rows[::3], rows[2::3]))  # targeted (as predicted) and its uniform twin
    richer = sum(t["macs"] > u["macs"] for t, u in same)
    return "\n".join([
        body, "", "Goal: measured latency kept <= target x 1.05 (median and min):", *goals, "",
        "Latency-model prediction error (predicted / measured median - 1, every row):",
        *errors, "",
        f"Targeted vs uniform (as predicted vs its equal-latency uniform twin): the targeted "
        f"model keeps more MACs in {richer} of {len(same)} cases (MAC ratios "
        + ", ".join(f"{t['macs'] / u['macs']:.2f}x" for t, u in same) + "; latency ratios "
        + ", ".join(f"{t['median'] / u['median']:.2f}x" for t, u in same) + ")."])


def digits_markdown(results):
    names = {"targeted": "targeted", "sensitivity": "targeted + sensitivity",
             "uniform": results[0]["uniform"]["label"]}
    rows = [[r["seed"], f"{r['target']:.3f}"] + [
        f"{r[k]['accuracy']:.2%} / {r[k]['kept']:.3f} / {r[k]['macs']:.3f}"
        + ("" if k == "uniform" else f" / {r[k]['removed']}") for k in DIGITS_METHODS]
        for r in results]
    acc = {k: [r[k]["accuracy"] for r in results] for k in DIGITS_METHODS}
    lines = [table(["seed", "target (uniform measured)"]
                   + [f"{names[k]}: acc / latency kept / MACs kept"
                      + ("" if k == "uniform" else " / branches removed")
                      for k in DIGITS_METHODS], rows), "",
             "Mean test accuracy: " + ", ".join(
                 f"{names[k]} {statistics.mean(v):.2%} ± {statistics.pstdev(v):.2%}"
                 for k, v in acc.items()) + "."]
    for key in ("targeted", "sensitivity"):
        wins = sum(t >= u for t, u in zip(acc[key], acc["uniform"]))
        slower = max(r[key]["kept"] / r["uniform"]["kept"] for r in results)
        met = statistics.mean(acc[key]) >= statistics.mean(acc["uniform"])
        lines.append(
            f"- `{names[key]}` vs uniform: at least as accurate in {wins} of {len(results)} "
            f"seeds; latency at most {slower:.2f}x the uniform model's. Goal (at least as "
            f"accurate on average at equal latency): **{'met' if met else 'not met'}**.")
    return "\n".join(lines)


def report(rows, digits, runs, elapsed):
    parts = [
        "## Latency-targeted pruning on LiteRT (`benchmarks/latency.py`)",
        "",
        f"{stamp()}. Total run time {elapsed / 60:.1f} min. LiteRT (XNNPACK) batch 1, **1 "
        "thread**. Latency tables (micro-benchmarks of each layer unit over a grid of kept "
        "counts, learned channel tiles) measured by this run into a fresh cache. `targeted`: "
        "`latency_plan(graph, target, runtime)` as predicted (no measured correction); "
        "`uniform`: FPGM at one ratio for every group (kept counts rounded up to the "
        "runtime's channel tile, as the targeted ones are), the least-pruned of the 4 "
        "ratios predicted nearest the targeted model's prediction that measures at most 2% "
        "slower than it (else the closest). Every file of a model and dtype is "
        f"timed in the same {runs} interleaved rounds (`compare_latency(..., repeat={WARM})`: "
        f"each round runs each file {WARM} times back to back, the steady state of a model "
        "that runs in a loop, and the protocol the latency model is calibrated with); kept = "
        "slim / original of medians (of minima). The *cold* column repeats the rounds with "
        "one invoke per file per round, so every invoke follows another model's and starts "
        "from caches holding the previous model's data. `weights=None` models with random "
        "BatchNorm statistics; int8 files are calibrated on random data (ranges do not change "
        "which kernels run).",
        "",
    ]
    if rows:
        parts += [imagenet_markdown(rows), ""]
    if digits:
        parts += [
            f"### Digits: targeted vs uniform at equal measured latency ({len(digits)} seeds)",
            "",
            f"`residual_cnn(width={DIGITS['width']})` on digits at {DIGITS['size']} px "
            f"(1347 train / 450 test images), trained {DIGITS['epochs']} epochs (Adam 1e-3, "
            f"batch 32), on `{DIGITS['runtime']}`. The uniform-ratio model comes first (FPGM, "
            f"ratio {DIGITS['ratio']}, tile-rounded); its latency kept, measured against the "
            "original, is the target of `latency_plan(..., check_latency=True)`: with the "
            "default loss (`targeted`) and with a `sensitivity` scan (minus the loss on the "
            f"last {DIGITS['scan_images']} training images) as the loss. The three files are "
            "then timed together with the original (interleaved, 31 rounds). Each slim model "
            f"is fine-tuned {DIGITS['finetune']} epochs with the same recipe and seed; Keras "
            "float test accuracy.",
            "",
            digits_markdown(digits),
        ]
    return "\n".join(parts)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test; RESULTS.md untouched")
    parser.add_argument("--models", nargs="+", choices=[m for m, _ in FULL], default=None)
    parser.add_argument("--dtypes", nargs="+", choices=list(RUNTIMES), default=None)
    parser.add_argument("--targets", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=3, help="digits seeds (default 3)")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-imagenet", action="store_true")
    parser.add_argument("--runs", type=int, default=41, help="timed rounds per model and dtype")
    args = parser.parse_args(argv)
    args.partial = bool(args.quick or args.models or args.dtypes or args.targets
                        or args.skip_digits or args.skip_imagenet or args.seeds != 3)
    args.configs = [c for c in (QUICK if args.quick else FULL)
                    if not args.models or c[0] in args.models]
    args.dtypes = args.dtypes or (["int8"] if args.quick else list(RUNTIMES))
    args.targets = tuple(args.targets or ((0.5,) if args.quick else TARGETS))
    args.seeds = 1 if args.quick else args.seeds
    args.runs = 7 if args.quick else args.runs
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="tfcompress-latency-")
    os.environ["TFCOMPRESS_CACHE_DIR"] = cache  # a fresh cache: tables measured by this run
    rows, digits = [], []
    if not args.skip_imagenet:
        for name, size in args.configs:
            for dtype in args.dtypes:
                with tempfile.TemporaryDirectory() as folder:
                    rows += imagenet_rows(name, size, dtype, args.targets, args.runs,
                                          pathlib.Path(folder))
    if not args.skip_digits:
        data = load_digits(size=DIGITS["size"])
        digits = [digits_seed(seed, data) for seed in range(args.seeds)]
    markdown = report(rows, digits, args.runs, time.perf_counter() - started)
    print()
    print(markdown)
    if args.partial:
        print("\n(--quick or a subset: RESULTS.md not written)")
    else:
        print(f"\nwrote {write_section('latency_targets', markdown)}")


if __name__ == "__main__":
    main()
