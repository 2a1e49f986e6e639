"""Models written the way people publish them as Keras examples, in either Keras.

Each builder takes the Keras module (``tf_keras`` or Keras 3) and returns a small model with
one of the patterns that used to stop pruning or export: 3-D convolutions and pooling, a
custom layer calling ``tf.image.extract_patches``, a CRNN with ``Bidirectional(LSTM)``, a
generator with ``GroupNormalization(groups=-1)`` and custom reflection padding, ConvMixer's
depthwise ``Conv2D(groups=dim)``, recurrent text models, custom channel-wise and
channel-mixing layers, and a few more published shapes (U-Net, ESPCN, text and audio
Conv1D nets, a DCGAN generator, a conv + attention hybrid).

:data:`PATTERNS` maps a name to a :class:`Pattern`: the builder, how its TFLite file is
made (TF Select or not) and what pruning must achieve on it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import numpy as np
import tensorflow as tf


@functools.lru_cache(maxsize=None)
def custom_layers(K) -> Dict[str, type]:
    """The custom layer classes of the patterns, defined once per Keras module ``K``."""

    class ReflectionPadding2D(K.layers.Layer):
        """Reflection padding of the two spatial axes (CycleGAN's generator)."""

        def __init__(self, padding=1, **kwargs):
            super().__init__(**kwargs)
            self.padding = int(padding)

        def call(self, inputs):
            p = self.padding
            return tf.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")

        def get_config(self):
            return dict(super().get_config(), padding=self.padding)

    class ExtractPatches(K.layers.Layer):
        """Non-overlapping ``size x size`` patches stacked on the channel axis (ViT)."""

        def __init__(self, size=4, **kwargs):
            super().__init__(**kwargs)
            self.size = int(size)

        def call(self, inputs):
            s = [1, self.size, self.size, 1]
            return tf.image.extract_patches(inputs, sizes=s, strides=s, rates=[1, 1, 1, 1],
                                            padding="VALID")

        def get_config(self):
            return dict(super().get_config(), size=self.size)

    class Swish(K.layers.Layer):
        """A custom channel-wise activation, ``x * sigmoid(beta * x)`` with a fixed beta."""

        def __init__(self, beta=1.0, **kwargs):
            super().__init__(**kwargs)
            self.beta = float(beta)

        def call(self, inputs):
            return inputs * tf.sigmoid(self.beta * inputs)

        def get_config(self):
            return dict(super().get_config(), beta=self.beta)

    class SoftplusShift(K.layers.Layer):
        """Channel-wise but not zero-preserving: ``softplus(x) - 0.5``."""

        def call(self, inputs):
            return tf.nn.softplus(inputs) - 0.5

    class ChannelCentering(K.layers.Layer):
        """Subtracts the mean over channels: every output channel depends on every input."""

        def call(self, inputs):
            return inputs - tf.reduce_mean(inputs, axis=-1, keepdims=True)

    return {cls.__name__: cls for cls in (ReflectionPadding2D, ExtractPatches, Swish,
                                          SoftplusShift, ChannelCentering)}


def _conv_bn(K, h, filters, kernel=3, strides=1, name=None):
    h = K.layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(h)
    return K.layers.ReLU()(K.layers.BatchNormalization()(h))


def cnn3d(K):
    """Volumetric classifier (Keras's 3-D CT scan example, scaled down)."""
    inputs = K.Input((8, 16, 16, 1))
    h = inputs
    for filters in (8, 16):
        h = K.layers.Conv3D(filters, 3, padding="same", activation="relu")(h)
        h = K.layers.MaxPool3D(2)(h)
        h = K.layers.BatchNormalization()(h)
    h = K.layers.GlobalAveragePooling3D()(h)
    h = K.layers.Dense(32, activation="relu")(h)
    return K.Model(inputs, K.layers.Dense(2)(h), name="cnn3d")


def patch_embedding(K):
    """A ViT-style stem: conv, patches by ``tf.image.extract_patches``, a patch projection."""
    inputs = K.Input((16, 16, 3))
    h = K.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = custom_layers(K)["ExtractPatches"](4)(h)
    h = K.layers.Dense(32, activation="gelu")(h)
    h = K.layers.Dense(32, activation="relu")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    return K.Model(inputs, K.layers.Dense(10)(h), name="patch_embedding")


def crnn(K):
    """Captcha OCR (Keras example): conv blocks, columns as time steps, BiLSTM, per-step
    logits."""
    inputs = K.Input((16, 32, 1))
    h = _conv_bn(K, inputs, 16)
    h = K.layers.MaxPooling2D()(h)
    h = _conv_bn(K, h, 16)
    h = K.layers.MaxPooling2D()(h)                       # (4, 8, 16)
    h = K.layers.Permute((2, 1, 3))(h)                   # width first: (8, 4, 16)
    h = K.layers.Reshape((8, 4 * 16))(h)
    h = K.layers.Dense(32, activation="relu")(h)
    h = K.layers.Bidirectional(K.layers.LSTM(16, return_sequences=True))(h)
    return K.Model(inputs, K.layers.Dense(12)(h), name="crnn")


def _resnet_generator_block(K, h, filters, pad):
    skip = h
    for last in (False, True):
        h = pad(1)(h)
        h = K.layers.Conv2D(filters, 3)(h)
        h = K.layers.GroupNormalization(groups=-1)(h)
        if not last:
            h = K.layers.ReLU()(h)
    return K.layers.Add()([skip, h])


def generator(K):
    """CycleGAN's ResNet generator, scaled down: reflection padding (a custom layer) and
    instance normalization (``GroupNormalization(groups=-1)``)."""
    pad = custom_layers(K)["ReflectionPadding2D"]
    inputs = K.Input((16, 16, 3))
    h = pad(3)(inputs)
    h = K.layers.ReLU()(K.layers.GroupNormalization(groups=-1)(K.layers.Conv2D(16, 7)(h)))
    h = K.layers.Conv2D(32, 3, strides=2, padding="same")(h)
    h = K.layers.ReLU()(K.layers.GroupNormalization(groups=-1)(h))
    h = _resnet_generator_block(K, h, 32, pad)
    h = K.layers.Conv2DTranspose(16, 3, strides=2, padding="same")(h)
    h = K.layers.ReLU()(K.layers.GroupNormalization(groups=-1)(h))
    h = K.layers.Conv2D(3, 7)(pad(3)(h))
    return K.Model(inputs, K.layers.Activation("tanh")(h), name="generator")


def convmixer(K, dim=32, depth=2):
    """ConvMixer (Trockman & Kolter): patch stem, then depthwise ``Conv2D(groups=dim)`` with a
    residual and a pointwise conv, GELU + BatchNorm after each."""
    def act_bn(h):
        return K.layers.BatchNormalization()(K.layers.Activation("gelu")(h))

    inputs = K.Input((16, 16, 3))
    h = act_bn(K.layers.Conv2D(dim, 2, strides=2)(inputs))
    for _ in range(depth):
        mixed = act_bn(K.layers.Conv2D(dim, 3, groups=dim, padding="same")(h))
        h = K.layers.Add()([mixed, h])
        h = act_bn(K.layers.Conv2D(dim, 1)(h))
    h = K.layers.GlobalAveragePooling2D()(h)
    return K.Model(inputs, K.layers.Dense(10)(h), name="convmixer")


def gru_text(K):
    """Text classifier: embedding, GRU, logits."""
    inputs = K.Input((12,), dtype="int32")
    h = K.layers.Embedding(50, 16)(inputs)
    h = K.layers.GRU(24)(h)
    return K.Model(inputs, K.layers.Dense(4)(h), name="gru_text")


def simple_rnn_text(K):
    """Text classifier: embedding, Conv1D, SimpleRNN, logits."""
    inputs = K.Input((12,), dtype="int32")
    h = K.layers.Embedding(50, 16)(inputs)
    h = K.layers.Conv1D(16, 3, padding="same", activation="relu")(h)
    h = K.layers.SimpleRNN(24)(h)
    return K.Model(inputs, K.layers.Dense(4)(h), name="simple_rnn_text")


def lstm_text(K):
    """Sequence tagger: embedding, LSTM over every step, pooled logits."""
    inputs = K.Input((12,), dtype="int32")
    h = K.layers.Embedding(50, 16)(inputs)
    h = K.layers.LSTM(24, return_sequences=True)(h)
    h = K.layers.GlobalMaxPooling1D()(h)
    return K.Model(inputs, K.layers.Dense(4)(h), name="lstm_text")


def custom_activation(K):
    """Convs separated by custom channel-wise layers (one clean, one not)."""
    layers = custom_layers(K)
    inputs = K.Input((12, 12, 3))
    h = layers["Swish"](1.5)(K.layers.Conv2D(16, 3, padding="same")(inputs))
    h = layers["SoftplusShift"]()(K.layers.Conv2D(16, 3, padding="same")(h))
    h = K.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    return K.Model(inputs, K.layers.Dense(5)(h), name="custom_activation")


def channel_mixer(K):
    """A custom layer that mixes channels: the conv feeding it must stay unpruned."""
    inputs = K.Input((12, 12, 3))
    h = K.layers.Conv2D(16, 3, padding="same", activation="relu", name="mixed_conv")(inputs)
    h = custom_layers(K)["ChannelCentering"]()(h)
    h = K.layers.Conv2D(16, 3, padding="same", activation="relu", name="free_conv")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    return K.Model(inputs, K.layers.Dense(5)(h), name="channel_mixer")


def unet(K):
    """Segmentation U-Net (Keras's Oxford pets example, two levels)."""
    inputs = K.Input((16, 16, 3))
    e1 = _conv_bn(K, inputs, 8)
    e2 = _conv_bn(K, K.layers.MaxPooling2D()(e1), 16)
    b = _conv_bn(K, K.layers.MaxPooling2D()(e2), 32)
    d2 = K.layers.Conv2DTranspose(16, 2, strides=2)(b)
    d2 = _conv_bn(K, K.layers.Concatenate()([d2, e2]), 16)
    d1 = K.layers.Conv2DTranspose(8, 2, strides=2)(d2)
    d1 = _conv_bn(K, K.layers.Concatenate()([d1, e1]), 8)
    return K.Model(inputs, K.layers.Conv2D(3, 1)(d1), name="unet")


def espcn(K):
    """Super-resolution (ESPCN, Keras example): convs, then sub-pixel ``depth_to_space``."""
    inputs = K.Input((12, 12, 1))
    h = K.layers.Conv2D(32, 5, padding="same", activation="relu")(inputs)
    h = K.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = K.layers.Conv2D(4, 3, padding="same")(h)
    outputs = K.layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), output_shape=(24, 24, 1))(h)
    return K.Model(inputs, outputs, name="espcn")


def text_cnn(K):
    """Kim's text CNN: embedding, parallel Conv1D widths, max-over-time, concatenation."""
    inputs = K.Input((20,), dtype="int32")
    h = K.layers.Embedding(50, 16)(inputs)
    pooled = [K.layers.GlobalMaxPooling1D()(K.layers.Conv1D(12, w, activation="relu")(h))
              for w in (2, 3, 4)]
    h = K.layers.Dropout(0.5)(K.layers.Concatenate()(pooled))
    return K.Model(inputs, K.layers.Dense(3)(h), name="text_cnn")


def audio_cnn(K):
    """Raw-waveform keyword spotter (M5-style): strided Conv1D, BN, pooling."""
    inputs = K.Input((256, 1))
    h = inputs
    for filters, kernel, stride in ((16, 16, 4), (16, 3, 1), (32, 3, 1)):
        h = K.layers.Conv1D(filters, kernel, strides=stride, padding="same")(h)
        h = K.layers.MaxPooling1D(2)(K.layers.ReLU()(K.layers.BatchNormalization()(h)))
    h = K.layers.GlobalAveragePooling1D()(h)
    return K.Model(inputs, K.layers.Dense(8)(h), name="audio_cnn")


def dcgan_generator(K):
    """DCGAN generator: dense projection, reshape, transposed convs, tanh image."""
    inputs = K.Input((16,))
    h = K.layers.Dense(4 * 4 * 32)(inputs)
    h = K.layers.LeakyReLU(0.2)(K.layers.BatchNormalization()(h))
    h = K.layers.Reshape((4, 4, 32))(h)
    for filters in (16, 8):
        h = K.layers.Conv2DTranspose(filters, 4, strides=2, padding="same")(h)
        h = K.layers.LeakyReLU(0.2)(K.layers.BatchNormalization()(h))
    h = K.layers.Conv2D(1, 3, padding="same", activation="tanh")(h)
    return K.Model(inputs, h, name="dcgan_generator")


def conv_attention(K):
    """A MobileViT-like hybrid: conv stem, patches as tokens, self-attention, conv fusion."""
    inputs = K.Input((16, 16, 3))
    h = _conv_bn(K, inputs, 16, strides=2)                 # (8, 8, 16)
    tokens = K.layers.Reshape((64, 24))(K.layers.Conv2D(24, 1)(h))
    attended = K.layers.MultiHeadAttention(2, 12)(tokens, tokens)
    tokens = K.layers.LayerNormalization()(K.layers.Add()([tokens, attended]))
    h2 = K.layers.Reshape((8, 8, 24))(tokens)
    h = _conv_bn(K, K.layers.Concatenate()([h, h2]), 16)
    h = K.layers.GlobalAveragePooling2D()(h)
    return K.Model(inputs, K.layers.Dense(10)(h), name="conv_attention")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One pattern model and what must hold for it.

    Attributes:
      build: ``build(K)`` returns the model in Keras ``K``.
      select_tf_ops: its TFLite file needs TF Select (ops without a builtin kernel).
      max_macs_kept: pruning at 0.3 must keep at most this fraction of the MACs (None: it may
        keep everything, e.g. nothing is prunable).
      barrier: a layer that must stay a barrier (the group feeding it is not pruned).
      fused_ops: its TFLite file must contain one of these op names (recurrent layers'
        fused kernels).
      must_show: one of the models issue 10's tests name (the others run in the zoo only).
    """

    build: Callable[[Any], Any]
    select_tf_ops: bool = False
    max_macs_kept: Optional[float] = 0.95
    barrier: Optional[str] = None
    fused_ops: tuple = ()
    must_show: bool = True


PATTERNS: Dict[str, Pattern] = {
    "cnn3d": Pattern(cnn3d, select_tf_ops=True),
    "patch_embedding": Pattern(patch_embedding, select_tf_ops=True),
    "crnn": Pattern(crnn, fused_ops=("UNIDIRECTIONAL_SEQUENCE_LSTM",)),
    "generator": Pattern(generator),
    "convmixer": Pattern(convmixer, max_macs_kept=0.85),
    "gru_text": Pattern(gru_text),
    "simple_rnn_text": Pattern(simple_rnn_text),
    "lstm_text": Pattern(lstm_text, fused_ops=("UNIDIRECTIONAL_SEQUENCE_LSTM",)),
    "custom_activation": Pattern(custom_activation),
    "channel_mixer": Pattern(channel_mixer, barrier="mixed_conv"),
    "unet": Pattern(unet, must_show=False),
    "espcn": Pattern(espcn, must_show=False),
    "text_cnn": Pattern(text_cnn, must_show=False),
    "audio_cnn": Pattern(audio_cnn, must_show=False),
    "dcgan_generator": Pattern(dcgan_generator, must_show=False),
    "conv_attention": Pattern(conv_attention, must_show=False),
}


def sample_input(model, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A random batch for ``model``'s single input: token ids below the first Embedding's
    vocabulary for integer inputs, uniform [-1, 1) floats otherwise."""
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    if "int" in str(model.inputs[0].dtype):
        vocab = min(layer.input_dim for layer in model.layers if hasattr(layer, "input_dim"))
        return rng.integers(0, vocab, shape).astype(np.int32)
    return rng.uniform(-1, 1, shape).astype(np.float32)
