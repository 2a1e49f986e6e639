import os

import numpy as np
import pytest

from tfcompress.export import load_model, model_format, save_model, to_saved_model


def check_same_outputs(a, b, x):
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-6)


def test_saved_model_round_trip_and_serving_signature(tiny_model, tiny_data, tmp_path):
    import tensorflow as tf

    path = to_saved_model(tiny_model, tmp_path / "sm")
    assert (path / "saved_model.pb").is_file()
    assert "serving_default" in tf.saved_model.load(str(path)).signatures
    check_same_outputs(tiny_model, load_model(path), tiny_data)


def test_saved_model_replaces_an_old_folder_only_on_success(
    tiny_classifier, tiny_data, tmp_path, monkeypatch
):
    old = tiny_classifier()
    to_saved_model(old, tmp_path / "sm")
    new = tiny_classifier()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(new, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        to_saved_model(new, tmp_path / "sm")
    assert os.listdir(tmp_path) == ["sm"]
    check_same_outputs(old, load_model(tmp_path / "sm"), tiny_data)
    monkeypatch.undo()
    to_saved_model(new, tmp_path / "sm")
    check_same_outputs(new, load_model(tmp_path / "sm"), tiny_data)


@pytest.mark.parametrize("name, fmt", [("m.keras", "keras"), ("m.h5", "h5"), ("m_dir", "tf")])
def test_save_model_follows_the_suffix(tiny_model, tiny_data, tmp_path, name, fmt):
    assert model_format(name) == fmt
    path = save_model(tiny_model, tmp_path / name)
    assert path.is_file() == (fmt != "tf")
    assert os.listdir(tmp_path) == [name]  # no staging leftovers
    check_same_outputs(tiny_model, load_model(path), tiny_data)


@pytest.mark.parametrize("name", ["qat.keras", "qat.h5"])
def test_pact_qat_model_round_trip(tiny_model, tiny_data, tmp_path, name):
    from tfcompress.quantization import quantize_model

    qat = quantize_model(tiny_model)
    qat(tiny_data, training=True)  # calibrate the ranges
    check_same_outputs(qat, load_model(save_model(qat, tmp_path / name)), tiny_data)


def test_load_errors(tmp_path):
    import keras as keras3

    with pytest.raises(FileNotFoundError, match="No model at"):
        load_model(tmp_path / "missing.keras")
    k3 = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    k3.save(tmp_path / "k3.keras")
    with pytest.raises(TypeError, match=r"saved by Keras 3\.\d+.*import tf_keras as keras"):
        load_model(tmp_path / "k3.keras")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="Cannot load .*junk.h5.* as a tf_keras model"):
        load_model(tmp_path / "junk.h5")


def test_saving_rejects_keras3_models(tmp_path):
    import keras as keras3

    with pytest.raises(TypeError, match="Keras 3"):
        model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
        to_saved_model(model, tmp_path / "x")
    assert os.listdir(tmp_path) == []
