"""Representative data for int8 calibration: the converter's ``representative_dataset``.

Example:
  >>> import numpy as np
  >>> x = np.zeros((5, 3), np.float32)
  >>> [batch[0].shape for batch in sample_batches(x, (3,), batch=2)]  # the 5th is left out
  [(2, 3), (2, 3)]
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np

__all__ = ["RepresentativeData", "sample_batches", "representative_dataset"]

RepresentativeData = Union[np.ndarray, Iterable, Callable[[], Iterable]]


def _samples(data: RepresentativeData, sample_shape: tuple) -> Iterator[np.ndarray]:
    """Single samples from an array, an iterable of batches or a callable returning one."""
    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    elements = [data] if isinstance(data, np.ndarray) else data
    try:
        iterator = iter(elements)
    except TypeError:
        raise TypeError(
            "`representative_data` must be an array of samples, an iterable of batches "
            f"or a function returning one, got {type(data).__name__}."
        ) from None
    for element in iterator:
        if isinstance(element, tuple) and element:
            element = element[0]  # (x, y) pairs, e.g. from a tf.data.Dataset or a generator
        batch = np.asarray(element, dtype=np.float32)
        if batch.ndim == len(sample_shape):
            batch = batch[None]
        if batch.ndim != len(sample_shape) + 1 or any(
            want is not None and want != got for want, got in zip(sample_shape, batch.shape[1:])
        ):
            raise ValueError(
                f"Representative data of shape {batch.shape} does not fit the model input "
                f"(None, {', '.join(map(str, sample_shape))}). Pass samples with the model's "
                "input shape."
            )
        yield from batch


def sample_batches(data: RepresentativeData, sample_shape: tuple, batch: int = 1
                   ) -> Iterator[list]:
    """Yields ``[array of batch samples]`` lists, as the converter's representative dataset
    wants them; a last incomplete batch is left out (a static-batch file takes exactly
    ``batch`` samples).

    Raises:
      ValueError: for samples of another shape, or fewer than ``batch`` samples.
    """
    pending, count = [], 0
    for sample in _samples(data, sample_shape):
        pending.append(sample)
        if len(pending) == batch:
            count += 1
            yield [np.stack(pending)]
            pending = []
    if count == 0:
        few = "no samples" if batch == 1 else f"fewer than {batch} samples (the static batch)"
        raise ValueError(
            f"`representative_data` yielded {few}, so int8 ranges cannot be calibrated. "
            "Pass ~100 training samples."
        )


def representative_dataset(model, data: Optional[RepresentativeData], needed: bool,
                           batch: Optional[int] = None) -> Optional[Callable]:
    """The converter's ``representative_dataset`` (validated) for a file whose batch is
    ``batch`` (``None``: dynamic, calibrated one sample at a time), or None if not
    ``needed``.

    Raises:
      ValueError: if calibration is needed and ``data`` is missing, does not fit, or the
        model has several inputs.
    """
    if not needed:
        return None
    if data is None:
        raise ValueError(
            "quantize='int8' for a float model needs `representative_data` to calibrate "
            "activation ranges: pass ~100 training samples (an array, an iterable of "
            "batches or a function returning one), or train the model with "
            "tfcompress.quantization.quantize_model, whose ranges come from training."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"int8 calibration supports single-input models; {model.name!r} has "
            f"{len(model.inputs)} inputs. Quantize it with tfcompress.quantization (QAT), "
            "whose int8 export needs no representative data."
        )
    sample_shape = tuple(model.inputs[0].shape[1:])
    size = batch or 1
    if isinstance(data, np.ndarray):
        next(sample_batches(data, sample_shape, size))  # validate the array before converting
    return lambda: sample_batches(data, sample_shape, size)
