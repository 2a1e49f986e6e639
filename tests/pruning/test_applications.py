"""Exactness, shrinkage and TFLite parity on tf_keras.applications and keras.applications.

The default suite runs a cheap member of most families in each Keras (``pytest -m slow``
runs the rest); ``pytest -m zoo`` runs all 71 tf_keras and all 40 Keras 3 constructors and
writes the per-model tables into the "zoo" and "zoo_keras3" sections of
``benchmarks/RESULTS.md``.
"""

import json
import os
import time

import pytest
from _benchmarks import BENCHMARKS, results_writer
from _exactness import application_names, build_application, check_pruned

from tfcompress._keras import FLAVOURS, KERAS3

#: One member per applications module of each Keras, and how the default suite runs it:
#: "tflite" (pruned, rebuilt and converted: TFLite parity), "prune" (pruned and rebuilt) or
#: "slow" (only under ``pytest -m slow``: families whose code paths the cheaper rows already
#: cover, or whose conversion alone takes minutes on 2 cores). ``pytest -m zoo`` runs every
#: constructor of both Kerases, converted, and writes the RESULTS.md tables.
FAMILIES = {
    "ResNet50": "tflite", "ResNet50V2": "prune", "ResNetRS50": "prune", "VGG16": "prune",
    "InceptionV3": "slow", "InceptionResNetV2": "slow", "Xception": "prune",
    "ConvNeXtTiny": "prune", "MobileNet": "prune", "MobileNetV2": "prune",
    "MobileNetV3Small": "prune", "DenseNet121": "prune", "NASNetMobile": "slow",
    "EfficientNetB0": "prune", "EfficientNetV2B0": "slow", "RegNetX002": "prune",
    "RegNetY002": "slow",
}
#: The same for keras.applications (Keras 3 has no ResNetRS or RegNet).
FAMILIES_KERAS3 = {
    "ResNet50": "prune", "ResNet50V2": "slow", "VGG16": "slow", "InceptionV3": "slow",
    "InceptionResNetV2": "slow", "Xception": "slow", "ConvNeXtTiny": "prune",
    "MobileNet": "slow", "MobileNetV2": "tflite", "MobileNetV3Small": "prune",
    "DenseNet121": "prune", "NASNetMobile": "slow", "EfficientNetB0": "prune",
    "EfficientNetV2B0": "slow",
}


def _representatives():
    for flavour, families in ((FLAVOURS[0], FAMILIES), (KERAS3, FAMILIES_KERAS3)):
        for name, how in sorted(families.items()):
            marks = [pytest.mark.slow] if how == "slow" else []
            yield pytest.param(flavour, name, how == "tflite", marks=marks,
                               id=f"{flavour.name}-{name}")


@pytest.mark.parametrize("flavour, name, tflite", list(_representatives()))
def test_family_representative(flavour, name, tflite):
    model = build_application(name, K=flavour.module)
    stats = check_pruned(model, ratio=0.3, tflite=tflite)
    assert stats["pruned_groups"] > 0
    assert stats["macs_kept"] < 0.95 and stats["params_kept"] < 0.95


def test_application_counts():
    names = application_names()
    assert len(names) == 71, names
    assert set(FAMILIES) <= set(names)
    names = application_names(KERAS3.module)
    assert len(names) == 40, names
    assert set(FAMILIES_KERAS3) <= set(names)


#: Per flavour: its RESULTS.md section, its JSON file of raw per-model results (so an
#: interrupted zoo run can resume with TFCOMPRESS_ZOO_RESUME=1), the title of its table.
_BENCH = BENCHMARKS
_ZOOS = {
    "tf_keras": ("zoo", _BENCH / "zoo.json", "tf_keras.applications"),
    "keras3": ("zoo_keras3", _BENCH / "zoo_keras3.json", "keras.applications (Keras 3)"),
}
_ZOO = {name: {} for name in _ZOOS}
_RESUME = os.environ.get("TFCOMPRESS_ZOO_RESUME") == "1"
_THIS_RUN = {name: set() for name in _ZOOS}  # rows measured by this run (others: carried)


#: Converting to TFLite takes ~3 s per million parameters on 2 cores; this optional limit
#: (millions of parameters of the slim model) skips the conversion of the largest models
#: so the zoo fits a time budget. Unset: every model is converted.
_TFLITE_LIMIT = os.environ.get("TFCOMPRESS_ZOO_TFLITE_MAX_MPARAMS")


def _write_zoo_table(flavour):
    from tfcompress._io import write_text

    section, path, title = _ZOOS[flavour]
    zoo = _ZOO[flavour]
    write_text(path, json.dumps(zoo, indent=1, sort_keys=True))
    results = results_writer()
    markdown = _zoo_markdown(zoo, set(zoo) - _THIS_RUN[flavour], title, path.name)
    results.write_section(section, "\n".join(markdown))


def _measured(row):
    """(commit, date, machine) a row was measured on ("unrecorded" in older rows)."""
    return tuple(row.get(key, "unrecorded") for key in ("commit", "date", "machine"))


def _zoo_markdown(zoo, carried, title, json_name):
    """The zoo section, every count and verdict computed from the rows."""
    runs = sorted({_measured(row) for row in zoo.values()})
    passed = sum(row["status"] == "ok" for row in zoo.values())
    f64 = sorted(name for name, row in zoo.items()
                 if row["status"] == "ok" and row.get("error_float64") is not None)
    commits = ", ".join(sorted({f"`{c}`" for c, _, _ in runs}))
    lines = [
        f"## FPGM pruning on {title} (ratio 0.3)",
        "",
        f"Produced by `pytest -m zoo tests/pruning/test_applications.py` at commit {commits}"
        f" ({_rows(len(zoo) - len(carried))} measured by the last run, {_rows(len(carried))}"
        " carried over from earlier runs by `TFCOMPRESS_ZOO_RESUME=1`; raw values in"
        f" `benchmarks/{json_name}`).",
    ]
    if len(runs) == 1:
        lines.append("All rows measured {1} on commit `{0}`, {2}.".format(*runs[0]))
    lines += [
        "Each model: `weights=None`, 10 classes, smallest input side it accepts (32, 71 or 75 px),",
        "random BatchNorm statistics, biases and scales. Checks: masked == rebuilt within 1e-4",
        "relative, fewer MACs and params, float TFLite of the slim model within 1e-4 relative",
        "(a - in the TFLite column: the conversion was skipped to fit the run's time budget,",
        "see `TFCOMPRESS_ZOO_TFLITE_MAX_MPARAMS` in the test).",
        "When float32 misses 1e-4 on a model so ill-conditioned that one-ulp weight noise moves",
        "its output by more than 1e-5 (float32 cannot resolve the check: see the `resnetrs`",
        "section), masked == rebuilt is checked in float64 instead, and TFLite parity is",
        "reported but not checked; the error column then reads `float32 -> float64`.",
        f"**{passed} of {len(zoo)} pass**"
        + (f" ({len(f64)} of them in float64: {', '.join(f64)})." if f64 else ".")
        + " Barriers list the reasons that kept channel groups",
        "unpruned (model inputs and outputs are never pruned and are not listed).",
        "",
    ]
    if len(runs) > 1:
        lines += [f"Rows were measured in {len(runs)} runs: " + "; ".join(
            "({}) {} on `{}`".format(i + 1, d, c) for i, (c, d, _) in enumerate(runs)) + ".", ""]
    columns = ["model", "MACs (M)", "MACs kept", "params kept", "groups", "pruned groups",
               "barriers", "max rel. error (rebuilt / TFLite)", "time (s)", "status"]
    columns += ["run"] if len(runs) > 1 else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in sorted(zoo):
        cells = _zoo_cells(name, zoo[name])
        if len(runs) > 1:
            cells.append(str(runs.index(_measured(zoo[name])) + 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rows(count):
    return f"{count} row" + ("" if count == 1 else "s")


def _zoo_cells(name, row):
    if row["status"] != "ok":
        return [name, "", "", "", "", "", "", "", f"{row['time']:.0f}", row["status"]]
    return [name, f"{row['macs'] / 1e6:.1f}", f"{row['macs_kept']:.1%}",
            f"{row['params_kept']:.1%}", str(row["groups"]), str(row["pruned_groups"]),
            "; ".join(row["barriers"]) or "-",
            f"{_error(row)} / {_fmt(row.get('tflite_error'))}", f"{row['time']:.0f}", "ok"]


def _error(row):
    if row.get("error_float64") is None:
        return f"{row['error']:.1e}"
    return f"{row['error']:.1e} -> {row['error_float64']:.1e}"


def _fmt(value):
    return "-" if value is None else f"{value:.1e}"


@pytest.fixture(scope="module")
def zoo_tables():
    for flavour, (_, path, _) in _ZOOS.items():
        if _RESUME and path.exists():
            _ZOO[flavour].update(json.loads(path.read_text()))
    return _ZOO


_ZOO_CASES = [(f, name) for f in FLAVOURS for name in application_names(f.module)]


@pytest.mark.zoo
@pytest.mark.parametrize("flavour, name", _ZOO_CASES,
                         ids=[f"{f.name}-{n}" for f, n in _ZOO_CASES])
def test_zoo(flavour, name, zoo_tables):
    zoo_table = zoo_tables[flavour.name]
    if _RESUME and zoo_table.get(name, {}).get("status") == "ok":
        _write_zoo_table(flavour.name)
        pytest.skip("measured by an earlier run (TFCOMPRESS_ZOO_RESUME=1)")
    start = time.perf_counter()
    results = results_writer()
    measured = {"commit": results.commit(), "date": results.today(), "machine": results.host()}
    _THIS_RUN[flavour.name].add(name)
    try:
        model = build_application(name, K=flavour.module)
        limit = None if _TFLITE_LIMIT is None else float(_TFLITE_LIMIT) * 1e6
        tflite = limit is None or model.count_params() * 0.75 <= limit  # slim model estimate
        stats = check_pruned(model, ratio=0.3, tflite=tflite)
        assert stats["pruned_groups"] > 0
        zoo_table[name] = dict(stats, status="ok", time=time.perf_counter() - start, **measured)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}".splitlines()[0][:120].replace("|", "/")
        zoo_table[name] = {"status": f"FAIL {message}", "time": time.perf_counter() - start,
                           **measured}
        raise
    finally:  # the table is rewritten after every model, so a partial run still reports
        _write_zoo_table(flavour.name)
