"""Real data that ships with the test dependencies: scikit-learn's bundled digits.

``sklearn.datasets.load_digits`` holds 1,797 real 8x8 scans of handwritten digits and
needs no download, so the demo, examples, tests and benchmarks all run offline.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

from tfcompress._validate import check_int, check_number

Split = Tuple[np.ndarray, np.ndarray]


def load_digits(size: int = 16, test_fraction: float = 0.25, seed: int = 0) -> Tuple[Split, Split]:
    """Loads sklearn's digits as NHWC float32 images in [0, 1], split train/test.

    Args:
      size: image side in pixels; the 8x8 scans are resized bilinearly.
      test_fraction: fraction of each class held out for the test split.
      seed: seed of the stratified split.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``, images of shape ``(n, size, size, 1)`` and
      integer labels.

    Raises:
      ImportError: if scikit-learn is not installed (``pip install tfcompress[test]``).
      TypeError: for a ``size`` that is not an int or a ``test_fraction`` that is not a number.
      ValueError: for a ``size`` below 8 or a ``test_fraction`` outside (0, 1).

    Example:
      >>> (x_train, y_train), (x_test, y_test) = load_digits(size=16)
      >>> x_train.shape[1:], int(y_test.max()), len(x_train) + len(x_test)
      ((16, 16, 1), 9, 1797)
      >>> load_digits(size=4)
      Traceback (most recent call last):
      ...
      ValueError: `size` must be an integer >= 8, got 4.
    """
    check_int(size, "size", 8)
    check_number(test_fraction, "test_fraction", "a number in (0, 1)",
                 valid=lambda v: 0.0 < v < 1.0, example=0.25)
    try:
        from sklearn import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The digits data set comes from scikit-learn: `pip install scikit-learn`."
        ) from err
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    if size != 8:
        images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        test_mask[index[: int(round(len(index) * test_fraction))]] = True
    train, test = ~test_mask, test_mask
    return (images[train], labels[train]), (images[test], labels[test])
