"""Keras model files: SavedModel folders, ``.keras`` and ``.h5``, saved atomically.

The format follows the path: ``.keras`` and ``.h5`` files, anything else is a
SavedModel folder (which both ``tf_keras`` and TensorFlow Serving load).
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import zipfile

from tfcompress._io import PathLike, atomic_dir, atomic_file, output_path
from tfcompress._keras import check_model, keras

__all__ = ["to_saved_model", "save_model", "load_model", "model_format"]


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
    """Saves a tf_keras model as a SavedModel folder, atomically.

    The folder has a ``serving_default`` signature for TensorFlow Serving and reloads
    with :func:`load_model` (QAT models too). An existing folder at ``path`` is replaced
    only after the save succeeded.

    Args:
      model: a built tf_keras model.
      path: the folder to write.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a Keras 3 model or a non-model.
      ValueError: if the parent folder is missing or not writable, or a file is at ``path``.

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
    with atomic_dir(path) as tmp:
        model.save(str(tmp), save_format="tf", include_optimizer=False)
    return path


def save_model(model: "keras.Model", path: PathLike) -> pathlib.Path:
    """Saves a tf_keras model in the format its path names (see :func:`model_format`).

    Atomic like every tfcompress write: a failed save leaves an existing model in place.

    Args:
      model: a built tf_keras model.
      path: ``*.keras``, ``*.h5`` or a SavedModel folder.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a Keras 3 model or a non-model.
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
        model.save(str(staged), save_format=save_format, **options)
        os.replace(staged, tmp)
    return path


def _keras3_file_version(path: pathlib.Path) -> str:
    """The Keras version that wrote a ``.keras`` zip, or "" if it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""


def load_model(path: PathLike) -> "keras.Model":
    """Loads a ``.keras``, ``.h5`` or SavedModel tf_keras model without compiling it.

    QAT models (PACT or tfmot) load too: loading happens inside the quantization scope.

    Args:
      path: a model file or SavedModel folder.

    Returns:
      The tf_keras model.

    Raises:
      FileNotFoundError: if nothing is at ``path``.
      TypeError: if the file was written by Keras 3, which tf_keras cannot read.
      ValueError: if the file cannot be read as a tf_keras model.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> copy = load_model(save_model(model, tempfile.mkdtemp() + "/dense.keras"))
      >>> x = np.ones((1, 4), "float32")
      >>> bool(np.allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0)))
      True
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No model at {str(path)!r}. Check the path.")
    if path.is_file() and path.suffix.lower() == ".keras":
        version = _keras3_file_version(path)
        if version.startswith("3"):
            raise TypeError(
                f"{str(path)!r} was saved by Keras {version} (Keras 3), which tf_keras cannot "
                "load. Rebuild the model with `import tf_keras as keras` and save it again."
            )
    from tfcompress.quantization import quantize_scope  # on use: it loads tfmot

    with quantize_scope():
        try:
            model = keras.models.load_model(str(path), compile=False)
        except (OSError, ValueError, TypeError, KeyError) as error:
            reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
            raise ValueError(
                f"Cannot load {str(path)!r} as a tf_keras model: {reason or type(error).__name__}. "
                "Pass a .keras, .h5 "
                "or SavedModel folder written by tf_keras."
            ) from error
    return check_model(model)
