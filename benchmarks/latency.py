"""Does the speedup match the MACs? FPGM-pruned ImageNet models on LiteRT/XNNPACK.

Run from the repository root::

    python benchmarks/latency.py           # MobileNetV2 (160 px) and ResNet50 (128 px), ~15 min
    python benchmarks/latency.py --quick   # one small MobileNetV2, one ratio (smoke test)
    python benchmarks/latency.py --workdir /tmp/latency  # keep the files; a rerun only re-times

For each model (``weights=None`` with random BatchNorm statistics, so the filters differ and
int8 calibration sees realistic ranges): FPGM masks at ratios 0.3/0.5/0.7 with
``round_to`` 1 and 8, :func:`~tfcompress.pruning.rebuild`, export to float32 and int8
TFLite (calibrated on random data), then the LiteRT latency of batch 1 on 1 thread: median
of interleaved rounds, every variant of one model and dtype in the same rounds
(:func:`tfcompress.export.litert.compare_latency`).

It prints one table and rewrites the ``latency`` section of ``benchmarks/RESULTS.md``:
MACs kept vs latency kept, their ratio (goal: latency kept / MACs kept <= 1.15 at ratio
0.5) and the ``round_to`` comparison (is a multiple of 8 faster than exact counts?).
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

from _results import machine, write_section  # noqa: E402
from tfcompress import export  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.pruning import ChannelGraph, rebuild  # noqa: E402

RATIOS = (0.3, 0.5, 0.7)
ROUND_TO = (1, 8)
DTYPES = ("float32", "int8")
GOAL = 1.15
FULL = [("MobileNetV2", "MobileNetV2", 160), ("ResNet50", "ResNet50", 128)]
QUICK = [("MobileNetV2", "MobileNetV2", 96)]
REUSED: list = []  # .tflite files found in --workdir instead of exported


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def randomize_batchnorm(model, rng):
    """Random BN statistics: untrained ``weights=None`` models otherwise have identical,
    all-ones scales, which makes every filter ranking and int8 range degenerate."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])


def build(constructor, size, rng):
    keras.backend.clear_session()
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(size, size, 3), classes=1000)
    randomize_batchnorm(model, rng)
    return model


def export_all(model, folder, stem, calibration):
    """Float32 and int8 files of ``model``; files already in ``folder`` are reused."""
    paths = {dtype: folder / f"{stem}_{dtype}.tflite" for dtype in DTYPES}
    REUSED.extend(path for path in paths.values() if path.exists())
    if not paths["float32"].exists():
        export.to_tflite(model, paths["float32"], quantize=None)
    if not paths["int8"].exists():
        export.to_tflite(model, paths["int8"], quantize="int8", representative_data=calibration)
    return paths


def measure(name, constructor, size, ratios, runs, folder, rng):
    """Rows of (model, dtype, round_to, ratio, macs_kept, base_ms, ms) for one architecture."""
    start = time.perf_counter()
    model = build(constructor, size, rng)
    graph = ChannelGraph(model)
    base_macs = graph.macs()
    calibration = rng.standard_normal((2, size, size, 3)).astype("float32")
    variants = {("-", 0.0): (1.0, export_all(model, folder, f"{name}_base", calibration))}
    for round_to in ROUND_TO:
        for ratio in ratios:
            masks = graph.compute_masks(ratio, round_to=round_to)
            slim = rebuild(model, masks)
            variants[(round_to, ratio)] = (graph.macs(masks) / base_macs, export_all(
                slim, folder, f"{name}_r{round_to}_{ratio}", calibration))
            del slim
            print(f"  {name}: round_to={round_to} ratio={ratio} exported "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    x = rng.standard_normal((1, size, size, 3)).astype("float32")
    rows = []
    for dtype in DTYPES:
        keys = list(variants)
        timings = export.litert.compare_latency(
            [variants[k][1][dtype] for k in keys], x, threads=1, runs=runs, warmup=3,
            progress=True)
        base_ms = timings[0].median_ms
        for (round_to, ratio), timing in zip(keys, timings):
            rows.append((name, dtype, round_to, ratio, variants[(round_to, ratio)][0], base_ms,
                         timing.median_ms, timings[0].min_ms, timing.min_ms))
    print(f"  {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows, base_macs


def round_to_pairs(rows):
    """(model, dtype, ratio, median latency 8/1, min latency 8/1, MACs 8/1) per ratio."""
    by_key = {(m, d, r, ratio): (ms, low, mk) for m, d, r, ratio, mk, _, ms, _, low in rows}
    pairs = []
    for (m, d, r, ratio), (ms, low, mk) in by_key.items():
        if r == 8:
            ms1, low1, mk1 = by_key[(m, d, 1, ratio)]
            pairs.append((m, d, ratio, ms / ms1, low / low1, mk / mk1))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one small MobileNetV2, ratio 0.5, few runs; RESULTS.md untouched")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds per dtype")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="keep the .tflite files here and reuse them on the next run "
                             "(to re-time without re-exporting); default: a temporary folder")
    args = parser.parse_args(argv)
    configs, ratios = (QUICK, (0.5,)) if args.quick else (FULL, RATIOS)
    runs = args.runs or (5 if args.quick else 61)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    rows, macs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or pathlib.Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, constructor, size in configs:
            model_rows, macs[name] = measure(name, constructor, size, ratios, runs, folder, rng)
            rows += model_rows
    elapsed = time.perf_counter() - started

    header = ["model", "dtype", "round_to", "ratio", "MACs kept", "median ms", "min ms",
              "latency kept", "latency kept / MACs kept", "same, from min"]
    cells = []
    for name, dtype, round_to, ratio, macs_kept, base_ms, ms, base_min, min_ms in rows:
        kept = ms / base_ms
        cells.append([name, dtype, round_to, ratio if round_to != "-" else "-",
                      f"{macs_kept:.3f}", f"{ms:.2f}", f"{min_ms:.2f}", f"{kept:.3f}",
                      "-" if round_to == "-" else f"**{kept / macs_kept:.2f}**",
                      "-" if round_to == "-" else f"{min_ms / base_min / macs_kept:.2f}"])
    at_half = [(n, d, r, (ms / b) / mk, (low / base_low) / mk)
               for n, d, r, ratio, mk, b, ms, base_low, low in rows if ratio == 0.5]
    pairs = round_to_pairs(rows)
    mean_median = statistics.geometric_mean([p[3] for p in pairs]) if pairs else float("nan")
    mean_min = statistics.geometric_mean([p[4] for p in pairs]) if pairs else float("nan")
    faster = sum(p[4] < 1.0 for p in pairs)

    def status(value):
        return "met" if value <= GOAL else "not met"

    goal_lines = [f"- {n} {d} round_to={r}: latency kept / MACs kept = {med:.2f} from medians "
                  f"(**{status(med)}**), {low:.2f} from minima (**{status(low)}**)"
                  for n, d, r, med, low in at_half]
    pair_table = table(
        ["model", "dtype", "ratio", "MACs 8/1", "latency 8/1 (median)", "latency 8/1 (min)"],
        [[m, d, ratio, f"{mk:.3f}", f"{med:.3f}", f"{low:.3f}"]
         for m, d, ratio, med, low, mk in pairs])
    verdict = (f"at equal ratio, round_to=8 keeps {statistics.mean(p[5] for p in pairs):.2f}x "
               f"the MACs of round_to=1 but its latency is {mean_median:.3f}x (geometric mean "
               f"of medians) / {mean_min:.3f}x (of minima); it was faster in {faster} of "
               f"{len(pairs)} comparisons by the minimum. ") if pairs else "no comparison made. "
    if pairs and max(abs(mean_median - 1), abs(mean_min - 1)) < 0.03:
        verdict += ("Same latency within noise: multiples of 8 are not faster on XNNPACK, but "
                    "the channels they keep beyond the ratio cost no latency either.")
    elif pairs and mean_median < 1 and mean_min < 1:
        verdict += "Multiples of 8 are faster on XNNPACK: `round_to=8` is the better default."
    elif pairs and mean_median > 1 and mean_min > 1:
        verdict += "Multiples of 8 are slower here (they keep more MACs): prefer `round_to=1`."
    else:
        verdict += "Median and minimum disagree: inconclusive on this shared machine."
    macs_line = ", ".join(f"{n} {m / 1e6:.0f} M" for n, m in macs.items())
    markdown = "\n".join([
        "## Latency kept vs MACs kept (`benchmarks/latency.py`)",
        "",
        f"`keras.applications` models with `weights=None` and random BatchNorm statistics "
        f"({macs_line} MACs), FPGM one-shot masks, `rebuild`, TFLite float32 and int8 (random "
        "calibration data), LiteRT batch 1 on **1 thread** (XNNPACK delegate by default). "
        f"Median of {runs} interleaved rounds per model and dtype (all variants timed in the "
        "same rounds, order rotated). The machine is shared with other jobs (2 cores, other "
        "processes running), so single numbers jitter by several percent; interleaving and "
        f"medians keep the comparisons fair; the last column uses the minimum over rounds, the "
        f"least contention-sensitive statistic. {machine()}. Total run time "
        f"{elapsed / 60:.1f} min"
        + (f" ({len(REUSED)} .tflite files reused from an earlier run's --workdir: re-timed, "
           "not re-exported)." if REUSED else "."),
        "",
        table(header, cells),
        "",
        "Goal at ratio 0.5 (the unpruned model's median suffers most from the other jobs: "
        "when the two statistics disagree, trust the minima):",
        *goal_lines,
        "",
        "`round_to` (multiples of 8 vs exact channel counts, same ratio):",
        "",
        pair_table,
        "",
        f"**Conclusion:** {verdict}",
    ])
    print()
    print(markdown)
    if args.quick:
        print("\n(--quick: RESULTS.md not written)")
    else:
        print(f"\nwrote {write_section('latency', markdown)}")


if __name__ == "__main__":
    main()
