"""Small reference architectures used by the demo, examples, tests and benchmarks."""

from __future__ import annotations

from typing import Sequence

from tfcompress._keras import keras


def residual_cnn(
    input_shape: Sequence[int] = (16, 16, 1),
    num_classes: int = 10,
    width: int = 32,
    name: str = "residual_cnn",
) -> keras.Model:
    """A small residual CNN with BatchNorm, a residual add and a depthwise conv.

    It exercises everything both algorithms must handle: Conv→BN→ReLU chains (BN folding
    for QAT), a residual ``Add`` (coupled channels for pruning), a ``DepthwiseConv2D``
    (in == out channels) and a final ``Dense``.

    Args:
      input_shape: ``(height, width, channels)`` of the input images.
      num_classes: number of output logits.
      width: channels of the first stage; the second stage has ``2 * width``.
      name: the model's name.

    Returns:
      An uncompiled Functional ``tf_keras.Model`` that outputs logits.

    Example:
      >>> model = residual_cnn((16, 16, 1), num_classes=10, width=8)
      >>> model.output_shape
      (None, 10)
    """
    layers = keras.layers

    def conv_bn(x, filters, stride=1, relu=True, prefix=""):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
        return layers.ReLU(name=f"{prefix}_relu")(x) if relu else x

    inputs = keras.Input(input_shape, name="image")
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
    return keras.Model(inputs, outputs, name=name)


def compile_classifier(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Compiles ``model`` (logits output) with Adam, sparse cross-entropy and accuracy.

    Returns:
      ``model``, compiled, for chaining.

    Example:
      >>> model = compile_classifier(residual_cnn(width=4), learning_rate=1e-3)
      >>> model.loss.get_config()["from_logits"], round(float(model.optimizer.learning_rate), 6)
      (True, 0.001)
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
