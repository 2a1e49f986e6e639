"""Keras model files: SavedModel folders, ``.keras`` and ``.h5``, saved atomically.

The format follows the path: ``.keras`` and ``.h5`` files, anything else is a
SavedModel folder. Both Kerases are handled: a model is saved by its own Keras, and a
file loads as the Keras that wrote it (``keras_version`` in the file: 3.x is Keras 3).
A tf_keras SavedModel folder reloads as a tf_keras model; a Keras 3 one is a serving
artifact (TensorFlow Serving, TFLite) that Keras 3 itself cannot reload as a model.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any

from tfcompress._io import PathLike, atomic_dir, atomic_file, output_path
from tfcompress._keras import KERAS3, TF_KERAS, Flavour, check_model, flavour_of, keras, keras3
from tfcompress.export import serving

__all__ = ["to_saved_model", "save_model", "load_model", "model_format", "file_flavour"]


#: File suffix -> tf_keras ``save_format``; any other path is a SavedModel folder.
_FILE_FORMATS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}


def model_format(path: PathLike) -> str:
    """The format a path saves to: ``"keras"``, ``"h5"`` or ``"tf"`` (SavedModel folder).

    Example:
      >>> model_format("slim.keras"), model_format("slim.H5"), model_format("slim_savedmodel")
      ('keras', 'h5', 'tf')
    """
    return _FILE_FORMATS.get(pathlib.Path(path).suffix.lower(), "tf")


def to_saved_model(model: "keras.Model", path: PathLike) -> pathlib.Path:
    """Saves a tf_keras or Keras 3 model as a SavedModel folder, atomically.

    The folder has a ``serving_default`` signature for TensorFlow Serving. A tf_keras
    folder reloads with :func:`load_model` (QAT models too); a Keras 3 one holds the
    inference graph (``training=False``), which Keras 3 cannot reload as a model: run it
    with ``tf.saved_model.load`` or convert it. An existing folder at ``path`` is replaced
    only after the save succeeded.

    Args:
      model: a built tf_keras model, or a Functional or Sequential Keras 3 model.
      path: the folder to write.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a non-model.
      ValueError: if the parent folder is missing or not writable, a file is at ``path``,
        or for a subclassed Keras 3 model.
      RuntimeError: for a Keras 3 model on a backend other than TensorFlow.

    Example:
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> import tempfile
      >>> path = to_saved_model(model, tempfile.mkdtemp() + "/dense_savedmodel")
      >>> path.is_dir(), (path / "saved_model.pb").is_file()
      (True, True)
    """
    check_model(model)
    path = output_path(path)
    keras3_model = flavour_of(model) is KERAS3
    if keras3_model:
        serving.input_signature(model, "SavedModel export")  # fail before staging anything
    with atomic_dir(path) as tmp:
        if keras3_model:
            serving.write_saved_model(model, tmp)
        else:
            model.save(str(tmp), save_format="tf", include_optimizer=False)
    return path


def save_model(model: "keras.Model", path: PathLike) -> pathlib.Path:
    """Saves a tf_keras or Keras 3 model in the format its path names (see
    :func:`model_format`), with the model's own Keras.

    Atomic like every tfcompress write: a failed save leaves an existing model in place.

    Args:
      model: a built tf_keras or Keras 3 model.
      path: ``*.keras``, ``*.h5`` or a SavedModel folder.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a non-model.
      ValueError: if the parent folder is missing or not writable.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> path = save_model(model, tempfile.mkdtemp() + "/dense.h5")
      >>> path.name, path.is_file()
      ('dense.h5', True)
    """
    check_model(model)
    save_format = model_format(path)
    if save_format == "tf":
        return to_saved_model(model, path)
    path = output_path(path)
    # tf_keras picks the format from the suffix, so save under the real name in a
    # staging folder next to the target, then move the file into the atomic slot.
    with atomic_file(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as staging:
        staged = pathlib.Path(staging) / path.name
        # The .keras format has no include_optimizer switch; it saves what the model has.
        options = {} if save_format == "keras" else {"include_optimizer": False}
        if flavour_of(model) is TF_KERAS:
            options["save_format"] = save_format  # Keras 3 knows the format by the suffix
        model.save(str(staged), **options)
        os.replace(staged, tmp)
    return path


def _keras3_file_version(path: pathlib.Path) -> str:
    """The Keras version that wrote a ``.keras`` zip or an ``.h5`` file, or "" if it cannot
    be read (then the file is left to tf_keras, whose error names the problem)."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
        import h5py  # on use: only .h5 files need it (both Kerases depend on it)

        with h5py.File(path, "r") as h5:
            version = h5.attrs.get("keras_version", "")
        return version.decode() if isinstance(version, bytes) else str(version)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""


def file_flavour(path: PathLike) -> Flavour:
    """The Keras that wrote a model file or folder: Keras 3 for a ``.keras``/``.h5`` file
    whose ``keras_version`` is 3.x, else tf_keras.

    Example:
      >>> import tempfile
      >>> from tfcompress._keras import keras3
      >>> path = tempfile.mkdtemp() + "/k3.keras"
      >>> keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)]).save(path)
      >>> file_flavour(path).name
      'keras3'
    """
    path = pathlib.Path(path).expanduser()
    if path.is_file() and model_format(path) != "tf":
        if _keras3_file_version(path).startswith("3"):
            return KERAS3
    return TF_KERAS


def _check_saved_model_folder(path: pathlib.Path) -> None:
    """Refuses a SavedModel folder without Keras metadata (e.g. a Keras 3 export), which
    tf_keras would load as a bare TensorFlow object, not a model."""
    if (path / "saved_model.pb").is_file() and not (path / "keras_metadata.pb").is_file():
        raise ValueError(
            f"{str(path)!r} is a SavedModel without Keras metadata (written by Keras 3's "
            "`model.export`, tfcompress.export.to_saved_model of a Keras 3 model, or plain "
            "TensorFlow): it serves and converts to TFLite, but does not load as a Keras "
            "model. Load the .keras file it was exported from instead."
        )


def _load(flavour: Flavour, path: pathlib.Path) -> Any:
    if flavour is KERAS3:
        import tfcompress.quantization  # noqa: F401  registers tfcompress's QAT layers

        return keras3.saving.load_model(str(path), compile=False)
    from tfcompress.quantization import quantize_scope  # on use: it loads tfmot

    with quantize_scope():
        return keras.models.load_model(str(path), compile=False)


def load_model(path: PathLike) -> "keras.Model":
    """Loads a ``.keras``, ``.h5`` or SavedModel model without compiling it, with the Keras
    that wrote it: a file saved by Keras 3 loads as a Keras 3 model, one saved by tf_keras
    (or a tf_keras SavedModel folder) as a tf_keras model.

    QAT models load too: tfcompress's quantization layers are registered first (tf_keras
    files load inside the tfmot quantization scope).

    Args:
      path: a model file or SavedModel folder.

    Returns:
      The tf_keras or Keras 3 model.

    Raises:
      FileNotFoundError: if nothing is at ``path``.
      ValueError: if the file cannot be read as a Keras model, or is a SavedModel folder
        without Keras metadata (a Keras 3 export).

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> copy = load_model(save_model(model, tempfile.mkdtemp() + "/dense.keras"))
      >>> x = np.ones((1, 4), "float32")
      >>> bool(np.allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0)))
      True
      >>> import keras  # Keras 3
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> type(load_model(save_model(model, tempfile.mkdtemp() + "/k3.keras"))).__module__
      'keras.src.models.sequential'
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No model at {str(path)!r}. Check the path.")
    if path.is_dir():
        _check_saved_model_folder(path)
    flavour = file_flavour(path)
    # A file whose Keras version cannot be read is tried with tf_keras, but may be anything.
    known = path.is_dir() or bool(_keras3_file_version(path))
    what = "Keras 3" if flavour is KERAS3 else "tf_keras" if known else "Keras"
    try:
        model = _load(flavour, path)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
        raise ValueError(
            f"Cannot load {str(path)!r} as a {what} model: "
            f"{reason or type(error).__name__}. Pass a .keras, .h5 or SavedModel folder "
            "written by tf_keras, or a .keras or .h5 file written by Keras 3."
        ) from error
    return check_model(model)
