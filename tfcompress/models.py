"""Small reference architectures used by the demo, examples, tests and benchmarks."""

from __future__ import annotations

from typing import Any, Sequence, Union

from tfcompress._keras import FLAVOURS, Flavour, flavour_of

__all__ = ["residual_cnn", "compile_classifier", "resolve_flavour"]


def resolve_flavour(flavour: Union[str, Flavour]) -> Flavour:
    """The :class:`~tfcompress._keras.Flavour` named ``flavour`` (``"tf_keras"`` or
    ``"keras3"``; ``"3"`` and ``"2"`` work too).

    Raises:
      ValueError: for any other name.
    """
    if isinstance(flavour, Flavour):
        return flavour
    aliases = {"tf_keras": FLAVOURS[0], "2": FLAVOURS[0], "keras2": FLAVOURS[0],
               "keras3": FLAVOURS[1], "3": FLAVOURS[1], "keras": FLAVOURS[1]}
    if str(flavour) not in aliases:
        raise ValueError(f"Unknown Keras flavour {flavour!r}; use 'tf_keras' (Keras 2) or "
                         "'keras3' (`import keras`).")
    return aliases[str(flavour)]


def residual_cnn(
    input_shape: Sequence[int] = (16, 16, 1),
    num_classes: int = 10,
    width: int = 32,
    name: str = "residual_cnn",
    flavour: Union[str, Flavour] = "tf_keras",
) -> Any:
    """A small residual CNN with BatchNorm, a residual add and a depthwise conv.

    It exercises everything both algorithms must handle: Conv→BN→ReLU chains (BN folding
    for QAT), a residual ``Add`` (coupled channels for pruning), a ``DepthwiseConv2D``
    (in == out channels) and a final ``Dense``.

    Args:
      input_shape: ``(height, width, channels)`` of the input images.
      num_classes: number of output logits.
      width: channels of the first stage; the second stage has ``2 * width``.
      name: the model's name.
      flavour: ``"tf_keras"`` or ``"keras3"``: which Keras builds it.

    Returns:
      An uncompiled Functional model of that flavour that outputs logits.

    Example:
      >>> model = residual_cnn((16, 16, 1), num_classes=10, width=8)
      >>> model.output_shape
      (None, 10)
      >>> type(residual_cnn(width=4, flavour="keras3")).__module__
      'keras.src.models.functional'
    """
    k = resolve_flavour(flavour).module
    layers = k.layers

    def conv_bn(x, filters, stride=1, relu=True, prefix=""):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
        return layers.ReLU(name=f"{prefix}_relu")(x) if relu else x

    inputs = k.Input(input_shape, name="image")
    x = conv_bn(inputs, width, prefix="stem")
    shortcut = x
    x = conv_bn(x, width, prefix="block1a")
    x = conv_bn(x, width, relu=False, prefix="block1b")
    x = layers.Add(name="block1_add")([x, shortcut])
    x = layers.ReLU(name="block1_out")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="dw_bn")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = conv_bn(x, 2 * width, stride=2, prefix="block2a")
    x = conv_bn(x, 2 * width, prefix="block2b")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return k.Model(inputs, outputs, name=name)


def compile_classifier(model: Any, learning_rate: float = 1e-3) -> Any:
    """Compiles ``model`` (logits output, either flavour) with Adam, sparse cross-entropy and
    accuracy.

    Returns:
      ``model``, compiled, for chaining.

    Example:
      >>> model = compile_classifier(residual_cnn(width=4), learning_rate=1e-3)
      >>> model.loss.get_config()["from_logits"], round(float(model.optimizer.learning_rate), 6)
      (True, 0.001)
    """
    k = (flavour_of(model) or FLAVOURS[0]).module
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
