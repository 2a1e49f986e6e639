"""Grouped convolutions: whole groups when each group has one input channel (a depthwise conv
written as ``Conv(C * m, k, groups=C)``, ConvMixer's style), equal counts per group otherwise."""

import math

import numpy as np
import pytest
from _exactness import check_pruned

from tfcompress._keras import TF_KERAS
from tfcompress.pruning import ChannelGraph, count_macs, rebuild, select_masks

DIM = 16


def convmixer(K, depth=2, dim=DIM, multiplier=1, rank=2):
    """A small ConvMixer: patch stem, then ``depth`` blocks of a depthwise Conv (``groups=dim``)
    + GELU + BN with a residual Add, a pointwise Conv + GELU + BN; global pooling, Dense."""
    L = K.layers
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[rank]
    pool = {1: L.GlobalAveragePooling1D, 2: L.GlobalAveragePooling2D,
            3: L.GlobalAveragePooling3D}[rank]
    inputs = K.Input({1: (32, 3), 2: (16, 16, 3), 3: (8, 8, 8, 3)}[rank])
    x = conv(dim, 2, strides=2, name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(L.Activation("gelu")(x))
    for i in range(1, depth + 1):
        h = conv(dim * multiplier, 3, groups=dim, padding="same", name=f"dw{i}")(x)
        h = L.BatchNormalization(name=f"dw{i}_bn")(L.Activation("gelu")(h))
        if multiplier == 1:
            h = L.Add(name=f"res{i}")([h, x])
        x = conv(dim, 1, name=f"pw{i}")(h)
        x = L.BatchNormalization(name=f"pw{i}_bn")(L.Activation("gelu")(x))
    return K.Model(inputs, L.Dense(10, name="head")(pool()(x)))


def test_convmixer_prunes_its_residual_trunk_by_whole_groups(flavour):
    model = convmixer(flavour.module)
    graph = ChannelGraph(model)
    for producer, block in (("stem", 1), ("pw1", 2)):  # each residual stream: one group
        trunk = graph.group(producer)
        assert trunk.prunable and trunk.blocks == 1, graph.barriers
        assert {f"dw{block}", f"res{block}"} <= set(trunk.layers)
    stats = check_pruned(model, ratio=0.3, tflite=False)
    assert stats["macs_kept"] < 0.9, stats  # equal counts per group (main, 02710a9): 0.935
    slim = rebuild(model, select_masks(ChannelGraph(model), 0.3))
    kept = math.ceil(0.7 * DIM)  # 12 of 16 channels in every group
    for name in ("dw1", "dw2"):  # depthwise: one kept group per kept channel
        layer = slim.get_layer(name)
        assert (layer.groups, layer.filters, tuple(layer.kernel.shape)) == (
            kept, kept, (3, 3, 1, kept))


def test_depth_multiplier_keeps_each_channels_outputs_together(flavour):
    model = convmixer(flavour.module, depth=1, multiplier=2)
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert stats["macs_kept"] < 0.6
    graph = ChannelGraph(model)
    masks = select_masks(graph, 0.5)
    slim = rebuild(model, masks)
    kept = masks.kept["stem"]  # input channel c of dw1 feeds its outputs 2c and 2c + 1
    assert slim.get_layer("dw1").groups == len(kept) == DIM // 2
    assert slim.get_layer("dw1").filters == 2 * len(kept)
    dw = model.get_layer("dw1").kernel.numpy()
    expected = dw[..., np.stack([2 * kept, 2 * kept + 1], axis=1).ravel()]
    np.testing.assert_array_equal(slim.get_layer("dw1").kernel.numpy(), expected)


@pytest.mark.slow  # the same handler code as Conv2D; keeps the default run within budget
@pytest.mark.parametrize("rank", [1, 3])
def test_conv1d_and_conv3d_whole_groups(flavour, rank):
    model = convmixer(flavour.module, depth=1, dim=8, rank=rank)
    assert ChannelGraph(model).group("stem").prunable
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert stats["macs_kept"] < 0.6


def _grouped(K, groups=2, per_group=4):
    L = K.layers
    inputs = K.Input((8, 8, 3))
    x = L.Conv2D(groups * per_group, 3, padding="same", name="a")(inputs)
    x = L.Conv2D(2 * groups * per_group, 3, groups=groups, name="grouped")(x)
    return K.Model(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))


def test_several_channels_per_group_keep_equal_counts_per_group(flavour):
    model = _grouped(flavour.module)
    graph = ChannelGraph(model)
    assert [graph.group(g).blocks for g in ("a", "grouped")] == [2, 2]
    masks = select_masks(graph, 0.4)
    for gid, size in (("a", 8), ("grouped", 16)):  # ceil(0.6 * size) rounded up to even
        counts = np.bincount(masks.kept[gid] // (size // 2), minlength=2)
        assert counts.tolist() == [math.ceil(0.6 * size / 2)] * 2
    slim = rebuild(model, masks)
    assert slim.get_layer("grouped").groups == 2  # groups stay, each loses channels
    assert tuple(slim.get_layer("grouped").kernel.shape) == (3, 3, 3, 10)
    check_pruned(_grouped(flavour.module), ratio=0.4, tflite=False)


def test_macs_of_a_whole_group_conv_match_a_depthwise_conv(flavour):
    K = flavour.module
    inputs = K.Input((6, 6, 4))
    grouped = K.Model(inputs, K.layers.Conv2D(8, 3, groups=4)(inputs))
    depthwise = K.Model(inputs, K.layers.DepthwiseConv2D(3, depth_multiplier=2)(inputs))
    assert count_macs(grouped) == count_macs(depthwise) == 4 * 4 * 9 * 8  # 4x4 outputs


def test_tf_keras_transposed_conv_ignores_groups_but_keeps_filters_divisible():
    K = TF_KERAS.module
    inputs = K.Input((5, 5, 4))
    x = K.layers.Conv2D(8, 1, name="a")(inputs)
    x = K.layers.Conv2DTranspose(6, 3, groups=2, name="up")(x)  # kernel (3, 3, 6, 8)
    model = K.Model(inputs, K.layers.Dense(3, name="head")(K.layers.Flatten()(x)))
    graph = ChannelGraph(model)
    assert graph.group("a").blocks == 1 and graph.group("up").blocks == 2
    masks = select_masks(graph, 0.5)
    assert len(masks.kept["a"]) == 4 and len(masks.kept["up"]) == 4  # 3 rounded up to even
    check_pruned(model, ratio=0.5, tflite=False)
