import os

import numpy as np
import pytest

from tfcompress._keras import flavour_of
from tfcompress.export import file_flavour, load_model, model_format, save_model, to_saved_model


def check_same_outputs(a, b, x):
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-6)


def serve(path, x):
    """What TensorFlow Serving computes: the folder's serving_default signature, by hand."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    (output,) = signature(**{name: tf.constant(x)}).values()
    return output.numpy()


def test_saved_model_round_trip_and_serving_signature(any_tiny_model, flavour, tiny_data,
                                                      tmp_path):
    path = to_saved_model(any_tiny_model, tmp_path / "sm")
    assert (path / "saved_model.pb").is_file() and os.listdir(tmp_path) == ["sm"]
    expected = any_tiny_model.predict(tiny_data, verbose=0)
    np.testing.assert_allclose(serve(path, tiny_data), expected, atol=1e-6)
    if flavour.is_keras3:  # an inference graph for serving; Keras 3 cannot reload it
        with pytest.raises(ValueError, match="SavedModel without Keras metadata.*.keras file"):
            load_model(path)
    else:
        check_same_outputs(any_tiny_model, load_model(path), tiny_data)


def test_keras3_saved_model_runs_in_inference_mode(tiny_data, tmp_path):
    from tfcompress._keras import keras3

    keras3.utils.set_random_seed(0)
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(),
                               keras3.layers.Dropout(0.9), keras3.layers.Dense(2)])
    path = to_saved_model(model, tmp_path / "sm")
    # Dropout in training mode would zero 90% of the features at random.
    np.testing.assert_allclose(serve(path, tiny_data), model(tiny_data, training=False),
                               atol=1e-6)


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
def test_save_model_follows_the_suffix(any_tiny_model, flavour, tiny_data, tmp_path, name, fmt):
    assert model_format(name) == fmt
    path = save_model(any_tiny_model, tmp_path / name)
    assert path.is_file() == (fmt != "tf")
    assert os.listdir(tmp_path) == [name]  # no staging leftovers
    if flavour.is_keras3 and fmt == "tf":
        np.testing.assert_allclose(serve(path, tiny_data),
                                   any_tiny_model.predict(tiny_data, verbose=0), atol=1e-6)
        return
    loaded = load_model(path)
    assert flavour_of(loaded) is flavour and file_flavour(path) is flavour
    assert isinstance(loaded, flavour.module.Model)  # the Keras that wrote the file
    check_same_outputs(any_tiny_model, loaded, tiny_data)


def test_keras_files_written_by_each_keras_itself_load_as_that_keras(flavour, tmp_path):
    """Files saved with the Keras API directly, not through tfcompress."""
    keras = flavour.module
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    for name in ("direct.keras", "direct.h5"):
        model.save(tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert isinstance(loaded, keras.Model) and flavour_of(loaded) is flavour
        np.testing.assert_array_equal(loaded.get_layer("out").get_weights()[0],
                                      model.get_layer("out").get_weights()[0])


@pytest.mark.parametrize("name", ["qat.keras", "qat.h5"])
def test_pact_qat_model_round_trip(any_tiny_model, flavour, tiny_data, tmp_path, name):
    from tfcompress.export import is_qat_model
    from tfcompress.quantization import quantize_model

    if flavour.is_keras3 and name == "qat.h5":
        pytest.skip("Keras 3 QAT models are saved as .keras")
    qat = quantize_model(any_tiny_model)
    qat(tiny_data, training=True)  # calibrate the ranges
    loaded = load_model(save_model(qat, tmp_path / name))
    assert flavour_of(loaded) is flavour and is_qat_model(loaded)
    check_same_outputs(qat, loaded, tiny_data)


def test_load_errors(tmp_path):
    import zipfile

    with pytest.raises(FileNotFoundError, match="No model at"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="Cannot load .*junk.h5.* as a Keras model"):
        load_model(tmp_path / "junk.h5")
    # A Keras 3 .keras zip whose weights are missing: read as Keras 3, refused in one line.
    with zipfile.ZipFile(tmp_path / "broken.keras", "w") as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        archive.writestr("config.json", "{not json")
    with pytest.raises(ValueError, match="Cannot load .*broken.keras.* as a Keras 3 model"):
        load_model(tmp_path / "broken.keras")


def test_saving_a_keras3_subclassed_model_as_saved_model_is_refused(keras3_subclassed, tmp_path):
    with pytest.raises(ValueError, match=r"subclassed Keras 3 model.*keras.Input"):
        to_saved_model(keras3_subclassed, tmp_path / "x")
    assert os.listdir(tmp_path) == []
