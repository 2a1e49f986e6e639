"""Distillation targets and loss (``tfcompress.quantization.distill``)."""

import numpy as np
import pytest

from tfcompress.models import residual_cnn
from tfcompress.quantization import (
    distillation_loss,
    distillation_targets,
    label_accuracy,
    quantize_model,
)

RNG = np.random.default_rng(0)
LABELS = np.array([0, 2, 1, 2])
TEACHER = RNG.normal(size=(4, 3)).astype(np.float32)
STUDENT = RNG.normal(size=(4, 3)).astype(np.float32)
TARGETS = np.concatenate([LABELS[:, None].astype(np.float32), TEACHER], axis=1)


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_without_the_soft_term_it_is_keras_sparse_cross_entropy(flavour):
    keras_loss = flavour.module.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="none")
    expected = np.asarray(keras_loss(LABELS, STUDENT))
    got = np.asarray(distillation_loss(weight=0.0)(TARGETS, STUDENT))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_the_soft_term_is_t_squared_times_the_kl_divergence():
    t = 3.0
    teacher, student = _log_softmax(TEACHER / t), _log_softmax(STUDENT / t)
    kl = (np.exp(teacher) * (teacher - student)).sum(axis=1)  # by hand
    got = np.asarray(distillation_loss(temperature=t, weight=1.0)(TARGETS, STUDENT))
    np.testing.assert_allclose(got, t * t * kl, rtol=1e-4)
    same = distillation_loss(temperature=t, weight=1.0)(TARGETS, TEACHER)
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)
    assert label_accuracy(TARGETS, TEACHER).numpy().tolist() == [
        float(a == b) for a, b in zip(LABELS, TEACHER.argmax(1))]


def test_targets_put_the_teacher_logits_beside_the_labels(flavour):
    teacher = residual_cnn(width=4, flavour=flavour.name)
    x = RNG.random((8, 16, 16, 1), dtype=np.float32)
    targets = distillation_targets(teacher, x, np.arange(8) % 10)
    assert targets.shape == (8, 11) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[:, 0], np.arange(8) % 10)
    np.testing.assert_allclose(targets[:, 1:], teacher.predict(x, verbose=0), rtol=1e-5)
    with pytest.raises(ValueError, match="one integer class id per input"):
        distillation_targets(teacher, x, np.eye(10)[np.arange(8)])
    with pytest.raises(ValueError, match="integer class ids"):
        distillation_targets(teacher, x, np.full(8, 0.5))


@pytest.mark.parametrize("kwargs, error", [({"temperature": 0}, ValueError),
                                           ({"weight": 1.5}, ValueError),
                                           ({"weight": "half"}, TypeError)])
def test_bad_loss_options_are_refused(kwargs, error):
    with pytest.raises(error):
        distillation_loss(**kwargs)


def test_a_quantized_student_learns_from_the_float_teacher(flavour):
    flavour.module.utils.set_random_seed(0)
    teacher = residual_cnn(width=4, flavour=flavour.name)
    x = RNG.random((32, 16, 16, 1), dtype=np.float32)
    targets = distillation_targets(teacher, x, np.arange(32) % 10)
    student = quantize_model(teacher, 4, 4)
    student.compile(flavour.module.optimizers.Adam(3e-3), loss=distillation_loss(),
                    metrics=[label_accuracy])
    history = student.fit(x, targets, batch_size=8, epochs=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= history["label_accuracy"][-1] <= 1.0
