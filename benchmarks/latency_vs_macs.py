"""Does the speedup match the MACs? FPGM-pruned ImageNet models on LiteRT/XNNPACK.

Run from the repository root::

    python benchmarks/latency_vs_macs.py          # MobileNetV2 160 px, ResNet50 128 px, ~15 min
    python benchmarks/latency_vs_macs.py --quick  # one small MobileNetV2, one ratio (smoke test)
    python benchmarks/latency_vs_macs.py --workdir /tmp/latency  # keep files; reruns re-time
    python benchmarks/latency_vs_macs.py --quick --models MobileNetV2 --ratios 0.3 0.5

A ``.tflite`` file found in ``--workdir`` is reused only when the JSON sidecar beside it
(``<file>.json``) holds the same fingerprint as the file this run would export: model,
input size, ratio, ``round_to``, dtype, tfcompress and TensorFlow versions, SHA-256 of the
exported model's weights (and of the int8 calibration data) and of the masks' kept indices.
Otherwise the file is exported again. The section says how many files were reused.

For each model (``weights=None`` with random BatchNorm statistics, so the filters differ and
int8 calibration sees realistic ranges): FPGM masks at ratios 0.3/0.5/0.7 with
``round_to`` 1 and 8, :func:`~tfcompress.pruning.rebuild`, export to float32 and int8
TFLite (calibrated on random data), then the LiteRT latency of batch 1 on 1 thread: median
of interleaved rounds, every variant of one model and dtype in the same rounds
(:func:`tfcompress.export.litert.compare_latency`).

It prints one table and rewrites the ``latency_vs_macs`` section of ``benchmarks/RESULTS.md``:
MACs kept vs latency kept, their ratio (goal: latency kept / MACs kept <= 1.15 at ratio
0.5) and the ``round_to`` comparison (is a multiple of 8 faster than exact counts?).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
import tensorflow as tf  # noqa: E402
from _results import stamp, write_section  # noqa: E402

from tfcompress import __version__, export  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.pruning import count_macs, fpgm_masks, rebuild  # noqa: E402

RATIOS = (0.3, 0.5, 0.7)
ROUND_TO = (1, 8)
DTYPES = ("float32", "int8")
GOAL = 1.15
FULL = [("MobileNetV2", "MobileNetV2", 160), ("ResNet50", "ResNet50", 128)]
QUICK = [("MobileNetV2", "MobileNetV2", 96)]
FILES = {"reused": 0, "exported": 0}  # .tflite files this run reused from --workdir / exported


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
    keras.utils.set_random_seed(0)  # the same weights on every run, so --workdir files match
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(size, size, 3), classes=1000)
    randomize_batchnorm(model, rng)
    return model


def _sha256(arrays):
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(model, variant, dtype, masks=None, calibration=None):
    """What a .tflite file was exported from: equal fingerprints, interchangeable files."""
    kept = {} if masks is None else {g: [int(i) for i in idx] for g, idx in masks.kept.items()}
    return {
        **variant, "dtype": dtype, "tfcompress": __version__, "tensorflow": tf.__version__,
        "weights_sha256": _sha256(model.get_weights()),
        "masks_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(),
        "calibration_sha256": None if dtype == "float32" else _sha256([calibration]),
    }


def _reusable(path, print_):
    sidecar = path.with_name(path.name + ".json")
    return path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == print_


def export_all(model, folder, variant, calibration, masks=None):
    """Float32 and int8 files of ``model``; a file in ``folder`` whose sidecar fingerprint
    matches is reused, any other is (re-)exported and its sidecar written."""
    stem = "{model}_base".format(**variant) if masks is None else (
        "{model}_r{round_to}_{ratio}".format(**variant))
    paths = {}
    for dtype in DTYPES:
        path = paths[dtype] = folder / f"{stem}_{dtype}.tflite"
        print_ = fingerprint(model, variant, dtype, masks, calibration)
        if _reusable(path, print_):
            FILES["reused"] += 1
            continue
        path.with_name(path.name + ".json").unlink(missing_ok=True)
        if dtype == "float32":
            export.to_tflite(model, path, quantize=None)
        else:
            export.to_tflite(model, path, quantize="int8", representative_data=calibration)
        path.with_name(path.name + ".json").write_text(json.dumps(print_, indent=1))
        FILES["exported"] += 1
    return paths


def measure(name, constructor, size, ratios, runs, folder, rng):
    """Rows of (model, dtype, round_to, ratio, macs_kept, base_ms, ms) for one architecture."""
    start = time.perf_counter()
    model = build(constructor, size, rng)
    base_macs = count_macs(model)
    calibration = rng.standard_normal((2, size, size, 3)).astype("float32")
    base = {"model": name, "constructor": constructor, "size": size}
    variants = {("-", 0.0): (1.0, export_all(model, folder, base, calibration))}
    for round_to in ROUND_TO:
        for ratio in ratios:
            masks = fpgm_masks(model, ratio, round_to=round_to)
            slim = rebuild(model, masks)
            variant = dict(base, ratio=ratio, round_to=round_to)
            variants[(round_to, ratio)] = (count_macs(slim) / base_macs, export_all(
                slim, folder, variant, calibration, masks))
            del slim
            print(f"  {name}: round_to={round_to} ratio={ratio} ready "
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


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small input (96 px), ratio 0.5, few runs; RESULTS.md untouched")
    parser.add_argument("--models", nargs="+", choices=[c[0] for c in FULL], default=None,
                        help="a subset of the models (RESULTS.md untouched)")
    parser.add_argument("--ratios", nargs="+", type=float, default=None,
                        help="a subset of the ratios (RESULTS.md untouched)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds per dtype")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="keep the .tflite files (and their fingerprint sidecars) here; a "
                             "rerun re-times the files whose fingerprint still matches "
                             "instead of exporting them; default: a temporary folder")
    args = parser.parse_args(argv)
    configs, ratios = (QUICK, (0.5,)) if args.quick else (FULL, RATIOS)
    args.partial = bool(args.quick or args.models or args.ratios)
    args.configs = [c for c in configs if not args.models or c[0] in args.models]
    args.ratios = tuple(args.ratios or ratios)
    args.runs = args.runs or (5 if args.quick else 61)
    return args


def rows_table(rows):
    header = ["model", "dtype", "round_to", "ratio", "MACs kept", "median ms", "min ms",
              "latency kept", "latency kept / MACs kept", "same, from min"]
    cells = []
    for name, dtype, round_to, ratio, macs_kept, base_ms, ms, base_min, min_ms in rows:
        kept = ms / base_ms
        cells.append([name, dtype, round_to, ratio if round_to != "-" else "-",
                      f"{macs_kept:.3f}", f"{ms:.2f}", f"{min_ms:.2f}", f"{kept:.3f}",
                      "-" if round_to == "-" else f"**{kept / macs_kept:.2f}**",
                      "-" if round_to == "-" else f"{min_ms / base_min / macs_kept:.2f}"])
    return table(header, cells)


def goal_lines(rows):
    """One line per model/dtype/round_to at ratio 0.5: is the goal met, from this run's rows."""
    def status(value):
        return "met" if value <= GOAL else "not met"

    at_half = [(n, d, r, (ms / b) / mk, (low / base_low) / mk)
               for n, d, r, ratio, mk, b, ms, base_low, low in rows if ratio == 0.5]
    return [f"- {n} {d} round_to={r}: latency kept / MACs kept = {med:.2f} from medians "
            f"(**{status(med)}**), {low:.2f} from minima (**{status(low)}**)"
            for n, d, r, med, low in at_half] or ["- ratio 0.5 not measured in this run"]


def conclusion(pairs):
    """The round_to verdict, computed from this run's (8 vs 1) pairs."""
    if not pairs:
        return "no comparison made."
    mean_median = statistics.geometric_mean([p[3] for p in pairs])
    mean_min = statistics.geometric_mean([p[4] for p in pairs])
    faster = sum(p[4] < 1.0 for p in pairs)
    verdict = (f"at equal ratio, round_to=8 keeps {statistics.mean(p[5] for p in pairs):.2f}x "
               f"the MACs of round_to=1 but its latency is {mean_median:.3f}x (geometric mean "
               f"of medians) / {mean_min:.3f}x (of minima); it was faster in {faster} of "
               f"{len(pairs)} comparisons by the minimum. ")
    if max(abs(mean_median - 1), abs(mean_min - 1)) < 0.03:
        return verdict + ("Same latency within noise: multiples of 8 are not faster on "
                          "XNNPACK, but the channels they keep beyond the ratio cost no "
                          "latency either.")
    if mean_median < 1 and mean_min < 1:
        return verdict + ("Multiples of 8 are faster on XNNPACK: `round_to=8` is the better "
                          "default.")
    if mean_median > 1 and mean_min > 1:
        return verdict + ("Multiples of 8 are slower here (they keep more MACs): prefer "
                          "`round_to=1`.")
    return verdict + "Median and minimum disagree: inconclusive on this shared machine."


def report(rows, macs, runs, elapsed):
    """The RESULTS.md section, every number and verdict from this run."""
    pairs = round_to_pairs(rows)
    pair_table = table(
        ["model", "dtype", "ratio", "MACs 8/1", "latency 8/1 (median)", "latency 8/1 (min)"],
        [[m, d, ratio, f"{mk:.3f}", f"{med:.3f}", f"{low:.3f}"]
         for m, d, ratio, med, low, mk in pairs])
    macs_line = ", ".join(f"{n} {m / 1e6:.0f} M" for n, m in macs.items())
    files = (f"{FILES['exported']} .tflite files exported by this run, {FILES['reused']} reused "
             "from --workdir (same fingerprint: model, ratio, round_to, dtype, versions, "
             "weights, masks and calibration data hashes)")
    return "\n".join([
        "## Latency kept vs MACs kept (`benchmarks/latency_vs_macs.py`)",
        "",
        f"`keras.applications` models with `weights=None` and random BatchNorm statistics "
        f"({macs_line} MACs), FPGM one-shot masks, `rebuild`, TFLite float32 and int8 (random "
        "calibration data), LiteRT batch 1 on **1 thread** (XNNPACK delegate by default). "
        f"Median of {runs} interleaved rounds per model and dtype (all variants timed in the "
        "same rounds, order rotated). The machine is shared with other jobs (2 cores, other "
        "processes running), so single numbers jitter by several percent; interleaving and "
        "medians keep the comparisons fair; the last column uses the minimum over rounds, the "
        f"least contention-sensitive statistic. {stamp()}. Total run time "
        f"{elapsed / 60:.1f} min; {files}.",
        "",
        rows_table(rows),
        "",
        "Goal at ratio 0.5 (the unpruned model's median suffers most from the other jobs: "
        "when the two statistics disagree, trust the minima):",
        *goal_lines(rows),
        "",
        "`round_to` (multiples of 8 vs exact channel counts, same ratio):",
        "",
        pair_table,
        "",
        f"**Conclusion:** {conclusion(pairs)}",
    ])


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    rows, macs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or pathlib.Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, constructor, size in args.configs:
            model_rows, macs[name] = measure(name, constructor, size, args.ratios, args.runs,
                                             folder, rng)
            rows += model_rows
    markdown = report(rows, macs, args.runs, time.perf_counter() - started)
    print()
    print(markdown)
    if args.partial:
        print("\n(--quick, --models or --ratios: RESULTS.md not written)")
    else:
        print(f"\nwrote {write_section('latency_vs_macs', markdown)}")
    return FILES


if __name__ == "__main__":
    main()
