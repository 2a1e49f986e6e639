"""Latency tables: runtimes, the on-disk cache, micro-benchmarks and learned tile sizes.

Expected values come from outside the code under test: staircases built by hand, the
cache file read back as JSON, and the ordering of work (a 1024x1024 Dense does 4096 times
the multiply-adds of a 16x16 one).
"""

import json

import numpy as np
import pytest

from tfcompress._keras import keras
from tfcompress.latency import LatencyTable, Runtime, make_unit, preferred_multiples
from tfcompress.latency.micro import convert_unit, time_models
from tfcompress.latency.tiles import staircase_period


def dense(units, features=32):
    return make_unit([(keras.layers.Dense, {"units": units, "name": f"d{units}"})], [(features,)])


@pytest.mark.parametrize("bad, match", [("tflite", "Unknown runtime"), ("litert-int4", "choose")])
def test_unknown_runtime_names_the_choices(bad, match):
    with pytest.raises(ValueError, match=match):
        Runtime.resolve(bad)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_count_is_refused(threads):
    with pytest.raises(ValueError, match="threads"):
        Runtime.resolve("litert-int8", threads)


def test_cache_file_is_keyed_by_runtime_and_threads():
    names = {Runtime.resolve(r, t).file_name for r in ("litert-int8", "litert-float32")
             for t in (1, 2)}
    assert len(names) == 4
    fingerprint = Runtime.resolve("litert-float32", 2).fingerprint()
    assert {"litert", "tensorflow", "cpu", "threads"} <= set(fingerprint)
    assert fingerprint["threads"] == 2


def test_unit_key_ignores_layer_names_but_not_shapes_or_configs():
    a = make_unit([(keras.layers.Dense, {"units": 4, "name": "a"})], [(8,)])
    b = make_unit([(keras.layers.Dense, {"units": 4, "name": "b"})], [(8,)])
    assert a.key == b.key
    assert a.key != make_unit([(keras.layers.Dense, {"units": 4})], [(9,)]).key
    assert a.key != make_unit([(keras.layers.Dense, {"units": 5})], [(8,)]).key


def test_unknown_dimension_is_refused():
    with pytest.raises(ValueError, match="known and positive"):
        make_unit([(keras.layers.Dense, {"units": 4})], [(None,)])


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_more_work_takes_longer(dtype):
    small, large = (convert_unit(dense(n, n), dtype) for n in (16, 1024))
    t_small, t_large = time_models([small, large], rounds=5)
    assert 0 < t_small < t_large


def test_table_is_cached_on_disk_and_reused(tmp_path):
    path = tmp_path / "table.json"
    first = LatencyTable("litert-float32", path=path, rounds=2)
    values = first.lookup([dense(8), dense(64)])
    assert first.measured == 2 and all(v > 0 for v in values)
    document = json.loads(path.read_text())
    assert document["fingerprint"] == Runtime.resolve("litert-float32").fingerprint()
    assert sorted(document["entries"].values()) == sorted(values)
    again = LatencyTable("litert-float32", path=path)
    assert again.lookup([dense(64), dense(8)]) == values[::-1]
    assert again.measured == 0


def test_table_of_another_setup_or_corrupt_file_is_measured_again(tmp_path):
    path = tmp_path / "table.json"
    LatencyTable("litert-float32", path=path, rounds=2).lookup([dense(8)])
    document = json.loads(path.read_text())
    document["fingerprint"]["cpu"] = "another CPU"
    path.write_text(json.dumps(document))
    other = LatencyTable("litert-float32", path=path, rounds=2)
    assert len(other) == 0
    other.lookup([dense(8)])
    assert other.measured == 1
    path.write_text("{not json")
    assert len(LatencyTable("litert-float32", path=path)) == 0


def test_unit_that_does_not_convert_costs_none_with_a_reason(tmp_path):
    table = LatencyTable("litert-int8", path=tmp_path / "t.json", rounds=2)
    broken = make_unit([(keras.layers.Dense, {"units": 4, "activation": "no_such_fn"})], [(8,)])
    assert table.lookup([broken]) == [None]
    assert "no_such_fn" in table.failure(broken)


@pytest.mark.parametrize("period", [1, 4, 8, 16])
def test_staircase_period_recovers_a_hand_built_staircase(period):
    counts = np.arange(1, 41)
    times = 0.3 + 0.01 * np.ceil(counts / period) * period
    noise = np.random.default_rng(period).normal(0, 1e-4, len(counts))
    assert staircase_period(counts, times + noise) == period


def test_preferred_multiples_are_cached_in_the_table(tmp_path, monkeypatch):
    table = LatencyTable("litert-float32", path=tmp_path / "t.json", rounds=2)
    table.set_extra("multiples", {"out": 8, "in": 4, "depthwise": 16})
    monkeypatch.setattr(LatencyTable, "lookup", lambda *a, **k: pytest.fail("measured"))
    assert preferred_multiples(LatencyTable("litert-float32", path=tmp_path / "t.json")) == {
        "out": 8, "in": 4, "depthwise": 16}
