"""Bad input across the public API: a ValueError/TypeError that names the problem and the fix.

One table, one row per mistake a user makes; each row calls the public API the way a user
would and lists fragments the message must contain (the problem, then the fix).
"""

import json
import os
import pathlib
import types

import numpy as np
import pytest

from tfcompress import export, pruning, quantization
from tfcompress._keras import keras
from tfcompress.models import residual_cnn


def _subclassed(module) -> "keras.Model":
    """A called subclassed model of the Keras ``module``."""

    class Subclassed(module.Model):
        def __init__(self):
            super().__init__()
            self.dense = module.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    return model


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import keras as keras3  # Keras 3, what `tf.keras` gives since TF 2.16

    keras.utils.set_random_seed(0)
    model = residual_cnn((8, 8, 1), width=4)
    other = residual_cnn((8, 8, 1), width=8)
    folder = tmp_path_factory.mktemp("bad_input")
    (folder / "a_file").write_text("not a folder")
    k3_model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    k3_model.save(folder / "k3.keras")
    content = (folder / "k3.keras").read_bytes()
    (folder / "k3_truncated.keras").write_bytes(content[: len(content) // 2])
    k3_model.export(str(folder / "k3_savedmodel"), verbose=False)
    return types.SimpleNamespace(
        model=model,
        masks=pruning.fpgm_masks(model, 0.5),
        other_masks=pruning.fpgm_masks(other, 0.5),
        subclassed=_subclassed(keras),
        keras3_subclassed=_subclassed(keras3),
        unbuilt=keras.Sequential([keras.layers.Dense(2)]),
        keras3_unbuilt=keras3.Sequential([keras3.layers.Dense(2)]),
        data=np.random.default_rng(0).random((4, 8, 8, 1), np.float32),
        folder=folder,
        under_file=folder / "a_file" / "out",
        missing=folder / "missing" / "out",
    )


_MODEL_ENTRY_POINTS = {
    "fpgm_masks": lambda m, c: pruning.fpgm_masks(m, 0.5),
    "apply_masks": lambda m, c: pruning.apply_masks(m, c.masks),
    "rebuild": lambda m, c: pruning.rebuild(m, c.masks),
    "count_macs": lambda m, c: pruning.count_macs(m),
    "ChannelGraph": lambda m, c: pruning.ChannelGraph(m),
    "quantize_model": lambda m, c: quantization.quantize_model(m),
    "clip_ranges": lambda m, c: quantization.clip_ranges(m),
    "to_tflite": lambda m, c: export.to_tflite(m, c.folder / "m.tflite"),
    "save_model": lambda m, c: export.save_model(m, c.folder / "m.keras"),
    "verify": lambda m, c: export.verify(m, c.folder / "m.tflite", c.data),
}
# (model attribute, exception, fragments of the message: the problem and the fix)
_BAD_MODELS = {
    "unbuilt": (ValueError, ["not built", "model.build(input_shape)"]),
    "keras3_unbuilt": (ValueError, ["not built", "model.build(input_shape)"]),
    "subclassed": (ValueError, ["subclassed", "Functional", "keras.Input"]),
    "keras3_subclassed": (ValueError, ["subclassed", "Functional", "keras.Input"]),
}
# Export and saving accept tf_keras subclassed models (TFLite and SavedModel trace `call`
# with the shapes tf_keras recorded); a Keras 3 one can be saved as .keras.
_VALID = {("subclassed", "to_tflite"), ("subclassed", "save_model"),
          ("keras3_subclassed", "save_model")}
# Keras 3 PACT QAT is another part of the work (issue 9): not checked here yet.
_NOT_HERE = {"quantize_model", "clip_ranges"}


@pytest.mark.parametrize("bad", sorted(_BAD_MODELS))
@pytest.mark.parametrize("entry", sorted(_MODEL_ENTRY_POINTS))
def test_every_model_entry_point_rejects_bad_models(ctx, entry, bad):
    if (bad, entry) in _VALID:
        pytest.skip("valid input here")
    if bad.startswith("keras3") and entry in _NOT_HERE:
        pytest.skip("Keras 3 quantization is checked with the quantization package")
    error, fragments = _BAD_MODELS[bad]
    with pytest.raises(error) as info:
        _MODEL_ENTRY_POINTS[entry](getattr(ctx, bad), ctx)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_non_model_names_the_type_and_the_fix(ctx):
    for entry in _MODEL_ENTRY_POINTS.values():
        with pytest.raises(TypeError, match=r"Keras model .*Keras 3.*tf_keras.*got builtins.str"):
            entry("model.h5", ctx)


# id -> (call, exception, regex the message must match)
_CASES = {
    "ratio 1": (lambda c: pruning.fpgm_masks(c.model, 1.0), ValueError, r"\[0, 1\).*got 1.0"),
    "ratio negative": (lambda c: pruning.fpgm_masks(c.model, -0.1), ValueError, r"\[0, 1\)"),
    "ratio nan": (lambda c: pruning.fpgm_masks(c.model, float("nan")), ValueError, r"\[0, 1\)"),
    "ratio string": (lambda c: pruning.fpgm_masks(c.model, "0.5"), TypeError,
                     r"\[0, 1\).*'0.5' \(str\).*ratio=0.5"),
    "schedule ratio string": (lambda c: pruning.ConstantRatio("0.5"), TypeError,
                              r"\[0, 1\).*'0.5' \(str\)"),
    "per_layer ratio": (lambda c: pruning.fpgm_masks(c.model, 0.5, per_layer={"stem_conv": 1.5}),
                        ValueError, r"per_layer\['stem_conv'\].*\[0, 1\]"),
    "per_layer unknown layer": (lambda c: pruning.fpgm_masks(c.model, 0.5, per_layer={"nope": 0.5}),
                                ValueError, r"'nope'.*Valid names include"),
    "schedule ratio": (lambda c: pruning.PolynomialRatio(0.0, 1.0, begin_step=0, end_step=9),
                       ValueError, r"\[0, 1\).*use e.g. 0.5"),
    "callback ratio": (lambda c: pruning.FPGMPruning(1.5), ValueError, r"\[0, 1\)"),
    "callback schedule type": (lambda c: pruning.FPGMPruning("half"), TypeError,
                               r"PruningSchedule.*Pass e.g."),
    "unknown criterion": (lambda c: pruning.fpgm_masks(c.model, 0.5, criterion="l3"), ValueError,
                          r"'l3'.*'fpgm', 'l1', 'l2'"),
    "callback criterion": (lambda c: pruning.FPGMPruning(0.5, criterion="median"), ValueError,
                           r"'median'.*'fpgm'"),
    "callback mode": (lambda c: pruning.FPGMPruning(0.5, mode="medium"), ValueError,
                      r"'soft' or 'hard', got 'medium'"),
    "round_to": (lambda c: pruning.fpgm_masks(c.model, 0.5, round_to=0), ValueError,
                 r"round_to.*integer >= 1, got 0"),
    "pact mode": (lambda c: quantization.quantize_model(c.model, mode="signed"), ValueError,
                  r"'asymmetric', 'symmetric', 'relu'.*'signed'"),
    "pact option": (lambda c: quantization.quantize_model(c.model, alpha=2.0), TypeError,
                    r"Unknown PACT option.*Valid options"),
    "pact bits": (lambda c: quantization.quantize_model(c.model, activation_bits=16), ValueError,
                  r"2 to 8.*got 16"),
    "pact exclude": (lambda c: quantization.quantize_model(c.model, exclude=["nope"]), ValueError,
                     r"not in the model.*nope"),
    "tflite option": (lambda c: export.to_tflite(c.model, c.folder / "x.tflite", quantize="int4"),
                      ValueError, r"'int4'.*Choose one of"),
    "weight storage": (lambda c: export.to_tflite(c.model, c.folder / "x.tflite",
                                                  weight_storage="int2"),
                       ValueError, r"Unknown weight_storage='int2'. Choose 'int8'"),
    "int4 of a float model": (lambda c: export.to_tflite(c.model, c.folder / "x.tflite",
                                                         weight_storage="int4"),
                              ValueError, r"not quantization-aware.*weight_bits=4"),
    "repack a missing file": (
        lambda c: export.repack_int4(c.folder / "missing.tflite", c.folder / "y.tflite"),
        FileNotFoundError, r"No TFLite file.*Check the path"),
    "int8 without data": (lambda c: export.to_tflite(c.model, c.folder / "x.tflite", "int8"),
                          ValueError, r"needs `representative_data`.*quantize_model"),
    "io_dtype without int8": (lambda c: export.to_tflite(c.model, c.folder / "x.tflite", None,
                                                         io_dtype="int8"),
                              ValueError, r"needs an int8 model.*quantize='int8'"),
    "masks of another model (apply)": (lambda c: pruning.apply_masks(c.model, c.other_masks),
                                       ValueError, r"do not match.*4 channels.*8.*another"),
    "masks of another model (rebuild)": (lambda c: pruning.rebuild(c.model, c.other_masks),
                                         ValueError, r"do not match.*another"),
    "masks as a dict": (lambda c: pruning.rebuild(c.model, {"stem_conv": [0]}), TypeError,
                        r"must be a tfcompress.pruning.Masks.*fpgm_masks"),
    "masks out of range": (lambda c: pruning.Masks({"g": [0, 9]}, sizes={"g": 4}), ValueError,
                           r"in 0..3"),
    "masks float indices": (lambda c: pruning.Masks({"g": [0.5]}, sizes={"g": 4}), ValueError,
                            r"integer channel indices"),
    "parent is a file (tflite)": (lambda c: export.to_tflite(c.model, c.under_file, None),
                                  ValueError, r"does not exist. Create it first"),
    "parent missing (tflite)": (lambda c: export.to_tflite(c.model, c.missing, None), ValueError,
                                r"does not exist. Create it first"),
    "parent missing (saved model)": (lambda c: export.to_saved_model(c.model, c.missing),
                                     ValueError, r"does not exist"),
    "parent is a file (masks)": (lambda c: c.masks.save(c.under_file), ValueError,
                                 r"does not exist"),
    "parent missing (keras file)": (lambda c: export.save_model(c.model, c.missing.with_suffix(
        ".keras")), ValueError, r"does not exist"),
    "tflite path is a folder": (lambda c: export.to_tflite(c.model, c.folder, None), ValueError,
                                r"is a folder.*model.tflite"),
    "verify data shape": (lambda c: export.verify(c.model, c.folder / "m.tflite",
                                                  np.zeros((2, 4, 4, 1))),
                          ValueError, r"does not fit the input.*Pass samples"),
    "truncated Keras 3 file": (lambda c: export.load_model(c.folder / "k3_truncated.keras"),
                               ValueError, r"Cannot load .*k3_truncated.keras.*as a Keras model"),
    "Keras 3 SavedModel folder": (lambda c: export.load_model(c.folder / "k3_savedmodel"),
                                  ValueError, r"without Keras metadata.*Load the .keras file"),
    "verify tolerance": (lambda c: export.verify(c.model, c.folder / "m.tflite", c.data,
                                                 min_agreement=2.0), ValueError, r"\[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_bad_arguments_name_the_problem_and_the_fix(ctx, case):
    call, error, pattern = _CASES[case]
    with pytest.raises(error, match=pattern) as info:
        call(ctx)
    assert type(info.value) is error or issubclass(type(info.value), error)
    assert not isinstance(info.value, (KeyError, IndexError, AttributeError))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder(ctx, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable. Choose another output path"):
            export.to_tflite(ctx.model, locked / "m.tflite", None)
        with pytest.raises(ValueError, match="not writable"):
            ctx.masks.save(locked / "masks.json")
    finally:
        locked.chmod(0o700)


_MALFORMED_MASKS = [
    ("not json", "{format", r"could not be parsed"),
    ("a list", "[1, 2]", r"Not a tfcompress masks document"),
    ("other format", json.dumps({"format": "x", "version": 1}), r"Not a tfcompress masks"),
    ("future version", json.dumps({"format": "tfcompress.pruning.Masks", "version": 99}),
     r"version 99 is not supported"),
    ("no groups", json.dumps({"format": "tfcompress.pruning.Masks", "version": 1}),
     r"no 'groups' list.*masks.save"),
    ("group not an object", None, r"group #0: expected an object"),
    ("size missing", {"id": "g"}, r"'size' must be a positive integer"),
    ("size text", {"id": "g", "size": "4"}, r"'size' must be a positive integer"),
    ("id missing", {"size": 4}, r"'id' must be a string"),
    ("kept floats", {"id": "g", "size": 4, "kept": [0.0, 1.5]}, r"'kept' must be a list of int"),
    ("kept nested", {"id": "g", "size": 4, "kept": [[0]]}, r"'kept' must be a list of int"),
    ("kept out of range", {"id": "g", "size": 4, "kept": [1, 4]}, r"in 0\.\.3"),
    ("kept unsorted", {"id": "g", "size": 4, "kept": [2, 1]}, r"sorted, unique"),
    ("layers", {"id": "g", "size": 4, "layers": "conv"}, r"'layers' must be a list"),
    ("barriers", {"id": "g", "size": 4, "barriers": [["a"]]}, r"\[layer, reason\] pairs"),
]


@pytest.mark.parametrize("name,document,pattern", _MALFORMED_MASKS,
                         ids=[row[0] for row in _MALFORMED_MASKS])
def test_malformed_masks_json_is_rejected_with_a_value_error(tmp_path, name, document, pattern):
    if not isinstance(document, str):
        document = json.dumps({"format": "tfcompress.pruning.Masks", "version": 1,
                               "groups": [document]})
    path = tmp_path / "masks.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=pattern):
        pruning.Masks.load(path)


# ----------------------------------------------------------------- nothing half-written
def _failing_exports(ctx):
    """Exports that fail after validation started, each with the reason it fails."""
    return {
        "int8 without data": lambda p: export.to_tflite(ctx.model, p, "int8"),
        "wrong representative data": lambda p: export.to_tflite(
            ctx.model, p, "int8", representative_data=np.zeros((3, 5, 5, 1))),
        "unknown option": lambda p: export.to_tflite(ctx.model, p, "int4"),
    }


def test_an_existing_file_survives_every_failed_export(ctx, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous export")
    for name, failing in _failing_exports(ctx).items():
        with pytest.raises(ValueError):
            failing(path)
        assert path.read_bytes() == b"previous export", name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]  # no temp files


def test_an_interrupted_write_leaves_the_old_files(ctx, tmp_path, monkeypatch):
    """A crash in the middle of writing (disk full, kill) keeps the previous masks and model."""
    masks_path, tflite_path = tmp_path / "masks.json", tmp_path / "m.tflite"
    ctx.masks.save(masks_path)
    export.to_tflite(ctx.model, tflite_path, None)
    before = masks_path.read_text(), tflite_path.read_bytes()

    def half_write(self, data, *args, **kwargs):
        with open(self, "wb" if isinstance(data, bytes) else "w") as file:
            file.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half_write)
    monkeypatch.setattr(pathlib.Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="No space left"):
        pruning.fpgm_masks(ctx.model, 0.25).save(masks_path)
    with pytest.raises(OSError, match="No space left"):
        export.to_tflite(ctx.model, tflite_path, "float16")
    monkeypatch.undo()
    assert (masks_path.read_text(), tflite_path.read_bytes()) == before
    assert pruning.Masks.load(masks_path) == ctx.masks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "masks.json"]
