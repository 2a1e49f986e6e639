"""Models written the way people publish them: pruned at 0.3 exactly, exported to TFLite,
and the TFLite file equal to the slim Keras model.

The default suite runs the ten models issue 10 names (``Pattern.must_show``) in both
Kerases; ``pytest -m zoo tests/pruning/test_patterns.py`` runs every pattern and writes the
"zoo_patterns" section of ``benchmarks/RESULTS.md``.
"""

import json
import pathlib
import time
import warnings

import numpy as np
import pytest
from _benchmarks import BENCHMARKS, results_writer
from _exactness import TOLERANCE, check_pruned, relative_error
from _patterns import PATTERNS, sample_input

from tfcompress._keras import FLAVOURS
from tfcompress.export import StaticBatchWarning, input_shapes, litert, tflite_ops, to_tflite

MUST_SHOW = sorted(name for name, pattern in PATTERNS.items() if pattern.must_show)


def prune_and_export(flavour, name, folder) -> dict:
    """Prunes pattern ``name`` at 0.3, checks what its :class:`Pattern` promises, exports the
    slim model and compares LiteRT with Keras; returns the stats (TFLite status included)."""
    pattern = PATTERNS[name]
    model = pattern.build(flavour.module)
    x = sample_input(model)
    kept = {}
    stats = check_pruned(model, 0.3, tflite=False, x=x, keep=kept)
    if pattern.max_macs_kept is not None:
        assert stats["macs_kept"] <= pattern.max_macs_kept, stats
    if pattern.barrier is not None:
        assert not kept["graph"].group(pattern.barrier).prunable
        layer = model.get_layer(pattern.barrier)
        assert kept["slim"].get_layer(pattern.barrier).filters == layer.filters
    slim = kept["slim"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StaticBatchWarning)
        path = to_tflite(slim, pathlib.Path(folder) / f"{name}.tflite", quantize=None,
                         select_tf_ops=pattern.select_tf_ops)
    batch = input_shapes(path)[0][0]
    stats["tflite_batch"] = "dynamic" if batch is None else f"static {batch}"
    # batch_size="auto" says why it wrote a static batch, and only then
    assert (batch is not None) == any(w.category is StaticBatchWarning for w in caught)
    ops = {op.name for op in tflite_ops(path)}
    stats["tflite_ops"] = sorted(ops)
    if pattern.fused_ops:
        assert ops & set(pattern.fused_ops), f"no fused kernel of {pattern.fused_ops} in {ops}"
    expected = np.asarray(slim(x, training=False))
    try:
        lite = litert.run(path, x)
    except litert.FlexRuntimeError as error:
        assert pattern.select_tf_ops, error
        stats["tflite"] = (f"written (batch {stats['tflite_batch']}, TF Select); not run: no "
                           "flex delegate in this Python")
        stats["skip"] = str(error)
        return stats
    stats["tflite_error"] = relative_error(expected, lite)
    assert stats["tflite_error"] <= TOLERANCE, stats["tflite_error"]
    stats["tflite"] = f"ok, batch {stats['tflite_batch']}" + (
        ", TF Select" if pattern.select_tf_ops else "")
    return stats


@pytest.mark.parametrize("name", MUST_SHOW)
def test_pattern_is_pruned_exactly_and_exported(flavour, name, tmp_path):
    stats = prune_and_export(flavour, name, tmp_path)
    assert stats["error"] <= TOLERANCE  # masked == rebuilt (also asserted on the way)
    if "skip" in stats:
        pytest.skip(stats["skip"])
    assert stats["tflite_error"] <= TOLERANCE


# ----- the zoo section --------------------------------------------------------------------
_JSON = BENCHMARKS / "zoo_patterns.json"
_ROWS = {}


def _markdown(rows, results):
    passed = sum(row["status"] == "ok" for row in rows.values())
    lines = [
        "## FPGM pruning on published-pattern models (ratio 0.3)",
        "",
        f"{results.stamp()}. Produced by `pytest -m zoo tests/pruning/test_patterns.py`",
        "(raw values in `benchmarks/zoo_patterns.json`). Models: `tests/pruning/_patterns.py`,",
        "small versions of Keras examples (3-D CNN, ViT patches, CRNN, CycleGAN generator,",
        "ConvMixer, RNN text models, custom layers, U-Net, ESPCN, text/audio CNNs, DCGAN,",
        "conv + attention), random weights and BatchNorm statistics. Checks: masked == rebuilt",
        "within 1e-4 relative, each pattern's pruning promise (MACs kept, barriers), float TFLite",
        "of the slim model (TF Select where marked) within 1e-4 relative of Keras.",
        f"**{passed} of {len(rows)} pass.**",
        "",
        "| Keras | model | MACs kept | params kept | pruned groups / groups | max rel. error "
        "(rebuilt / TFLite) | TFLite | barriers | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(rows):
        row = rows[key]
        flavour, name = key.split("/")
        if row["status"] != "ok":
            lines.append(f"| {flavour} | {name} | | | | | | | {row['status']} |")
            continue
        error = row.get("tflite_error")
        lines.append(
            f"| {flavour} | {name} | {row['macs_kept']:.1%} | {row['params_kept']:.1%} | "
            f"{row['pruned_groups']} / {row['groups']} | {row['error']:.1e} / "
            f"{'-' if error is None else f'{error:.1e}'} | {row['tflite']} | "
            f"{'; '.join(row['barriers']) or '-'} | ok |")
    return "\n".join(lines)


_ZOO_CASES = [(f, name) for f in FLAVOURS for name in sorted(PATTERNS)]


@pytest.mark.zoo
@pytest.mark.parametrize("flavour, name", _ZOO_CASES,
                         ids=[f"{f.name}-{n}" for f, n in _ZOO_CASES])
def test_zoo_patterns(flavour, name, tmp_path):
    results = results_writer()
    start = time.perf_counter()
    key = f"{flavour.name}/{name}"
    try:
        stats = prune_and_export(flavour, name, tmp_path)
        assert stats["error"] <= TOLERANCE and stats.get("tflite_error", 0.0) <= TOLERANCE
        _ROWS[key] = dict(stats, status="ok", time=time.perf_counter() - start)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}".splitlines()[0][:120].replace("|", "/")
        _ROWS[key] = {"status": f"FAIL {message}", "time": time.perf_counter() - start}
        raise
    finally:  # rewritten after every model, so a partial run still reports
        from tfcompress._io import write_text

        write_text(_JSON, json.dumps(_ROWS, indent=1, sort_keys=True))
        results.write_section("zoo_patterns", _markdown(_ROWS, results))
