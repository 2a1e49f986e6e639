import numpy as np
import pytest

from tfcompress.export import litert, to_tflite


@pytest.fixture
def float_file(tiny_model, tmp_path):
    return to_tflite(tiny_model, tmp_path / "m.tflite", None)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_run_in_chunks_equals_predict(tiny_model, tiny_data, float_file, batch_size):
    expected = tiny_model.predict(tiny_data[:10], verbose=0)
    actual = litert.run(float_file, tiny_data[:10], batch_size)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_run_rejects_bad_input(float_file, tiny_data):
    with pytest.raises(ValueError, match=r"expects \(None, 8, 8, 1\)"):
        litert.run(float_file, np.zeros((2, 9, 9, 1), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        litert.run(float_file, tiny_data, batch_size=0)
    with pytest.raises(ValueError, match="is empty"):
        litert.run(float_file, tiny_data[:0])
    with pytest.raises(FileNotFoundError, match="No TFLite file"):
        litert.run(float_file.with_name("missing.tflite"), tiny_data)
    float_file.with_name("x.npy").write_bytes(b"\x93NUMPY" + bytes(64))
    with pytest.raises(ValueError, match="is not a TFLite flatbuffer"):
        litert.run(float_file.with_name("x.npy"), tiny_data)


def test_compare_latency_interleaves_every_model(tiny_model, tiny_data, float_file):
    int8 = to_tflite(tiny_model, float_file.with_name("q.tflite"), "int8", tiny_data)
    results = litert.compare_latency([float_file, int8], runs=7, warmup=1)
    assert [r.path for r in results] == [str(float_file), str(int8)]
    for r in results:
        assert r.runs == 7 and r.threads == 1 and 0 < r.min_ms <= r.median_ms
    single = litert.latency(float_file, tiny_data[:1], runs=3, threads=2)
    assert single.runs == 3 and single.threads == 2


def test_compare_latency_repeat_invokes_back_to_back(float_file, monkeypatch):
    calls = []
    original = litert._Runner.invoke
    monkeypatch.setattr(litert._Runner, "invoke",
                        lambda self: calls.append(self.path) or original(self))
    copy = float_file.with_name("copy.tflite")
    copy.write_bytes(float_file.read_bytes())
    results = litert.compare_latency([float_file, copy], runs=3, warmup=1, repeat=4)
    assert len(calls) == 2 * (3 + 1) * 4 and [r.runs for r in results] == [3, 3]
    # each round runs one model 4 times, then the other 4 times
    blocks = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert [b[0] for b in blocks[:4]] == [float_file, copy, copy, float_file]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads"),
     ({"repeat": 0}, "repeat")],
)
def test_compare_latency_rejects_bad_arguments(float_file, kwargs, message):
    with pytest.raises(ValueError, match=message):
        litert.compare_latency([float_file], **kwargs)
    with pytest.raises(ValueError, match="paths. is empty"):
        litert.compare_latency([])


def test_variable_input_sizes(tmp_path):
    from tfcompress._keras import keras

    layers = [keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3)]
    model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D()])
    path = to_tflite(model, tmp_path / "m.tflite", None)
    for shape in [(2, 8, 8, 1), (3, 12, 10, 1)]:
        x = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
        np.testing.assert_allclose(litert.run(path, x), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="LiteRT cannot run m.tflite on inputs of shape"):
        litert.run(path, np.zeros((1, 2, 2, 1), np.float32))  # smaller than the kernel
    with pytest.raises(ValueError, match="no stand-in input can be made. Pass `x`"):
        litert.latency(path)
    assert litert.latency(path, np.zeros((1, 8, 8, 1), np.float32), runs=2).runs == 2
