"""Numeric probing: layers no handler knows, judged by running them on a few random inputs.

A weightless layer with one input and one output that no handler knows (a custom layer, a
``Lambda``, an unlisted TF op or ``keras.ops`` node) is run when the graph is traced, on
float32 inputs from a fixed seed (``None`` dimensions set to :data:`FREE_DIM`, ``training=False``).
It is traced as channel-wise (its input layout passes through, like an activation) only if
all of these hold, and is a barrier otherwise:

1. its output has as many channels (last axis) as its input;
2. perturbing a set of input channels changes no output channel outside that set, and the
   output is finite. The sets are the channels whose index has bit ``b`` set, and their
   complements, for every bit ``b``: ``2 * ceil(log2 C)`` perturbed copies cover every
   pair of channels (for ``j != k`` some set holds ``k`` and not ``j``), so every channel
   is tested, whatever ``C``, with random perturbations (no cancellation by design);
3. on the input without channel ``k`` (``k`` = first, middle and last channel) it gives the
   full output without channel ``k``: the rebuilt model runs it on fewer channels, so a
   layer holding a length-``C`` constant, or depending on channel indices, is refused;
4. built the way the rebuild builds it (symbolically, from its unchanged config and call
   arguments), it declares ``C - 1`` output channels for ``C - 1`` input channels: a config
   that carries the channel count (a ``Lambda``'s ``output_shape``, a custom
   ``compute_output_shape``) is refused. (Scanning the config for the number ``C`` would
   also refuse ``ReflectionPadding2D(3)`` on 3 channels; what matters is what the rebuild
   does with it.)

Its output is *clean* (a pruned channel stays 0) if zeroed input channels give zeroed output
channels; non-finite output there makes it a barrier. Every probed layer's verdict is kept on
its :class:`~tfcompress.pruning.LayerRecord` (``ChannelGraph.probed``) and shown by
``Masks.summary()``. Probing costs two forward calls (split to at most
:data:`MAX_ELEMENTS` floats per call) and one symbolic call, and is deterministic; exactness
of the rebuild stays the safety net for layers that behave differently on other inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcompress._keras import KERAS3, TF_KERAS, flavour_of
from tfcompress.pruning.handlers.base import BarrierHandler, Call, Tracer
from tfcompress.pruning.layout import Layout

__all__ = ["Verdict", "probe", "probe_propagate", "ProbeHandler", "SEED", "FREE_DIM",
           "MAX_ELEMENTS", "UNKNOWN"]

#: Seed of the random probe inputs.
SEED = 0
#: The size given to ``None`` (unknown) non-batch dimensions.
FREE_DIM = 6
#: At most this many floats are passed to the layer in one call.
MAX_ELEMENTS = 1 << 22
#: The reason of layers that are neither handled nor probed.
UNKNOWN = "no channel handler for this layer type (custom layer, Lambda or unsupported op)"

Runner = Callable[[Any, Any], Any]  # (args, kwargs) -> output


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What probing found: ``text`` is shown in reports (``"probed: ..."`` if it ran)."""

    channelwise: bool
    clean: bool
    text: str


def _barrier(why: str) -> Verdict:
    return Verdict(False, False, f"probed: {why} -> barrier")


def _not_probed(call: Call) -> Optional[str]:
    """Why ``call`` cannot be probed, or None."""
    if getattr(call.layer, "weights", None):
        return "it has weights"
    if len(call.inputs) != 1 or len(call.output_shapes) != 1:
        return f"{len(call.inputs)} inputs, {len(call.output_shapes)} outputs"
    shape = call.input_shapes[0]
    if len(shape) < 2 or shape[-1] is None or shape[-1] < 2:
        return f"input shape {shape}: fewer than 2 known channels"
    return None


def _swapped(call: Call, value: Any) -> Tuple[list, dict]:
    """The call's ``(args, kwargs)`` with its input tensor replaced by ``value``."""
    ids = set(call.tensor_ids)
    swap = lambda v: value if id(v) in ids else v  # noqa: E731
    return (tf.nest.map_structure(swap, list(call.args)),
            tf.nest.map_structure(swap, dict(call.kwargs)))


def _declared_channels(call: Call, channels: int) -> Optional[int]:
    """The output channels the layer declares, symbolically, for ``channels`` input channels:
    what the rebuild sees when it calls the layer from its config."""
    shape = tuple(call.input_shapes[0][:-1]) + (channels,)
    if flavour_of(call.layer) is KERAS3:
        args, kwargs = _swapped(call, KERAS3.module.KerasTensor(shape, dtype="float32"))
        out = call.layer.compute_output_spec(*args, **kwargs)
    else:
        out = call.layer.compute_output_shape(tf.TensorShape(shape))
    out = tf.nest.flatten(out, expand_composites=False)[0]
    dims = tuple(getattr(out, "shape", out))
    return None if not dims or dims[-1] is None else int(dims[-1])


def _judge_symbolic(call: Call, channels: int) -> Optional[Verdict]:
    """Check 4: built from its config on ``channels - 1`` channels, it declares as many."""
    try:
        declared = _declared_channels(call, channels - 1)
    except Exception as error:  # cannot be built on fewer channels: the rebuild would fail
        return _barrier(f"cannot be built on {channels - 1} channels "
                        f"({type(error).__name__})")
    if declared != channels - 1:
        return _barrier(f"declares {declared} output channels for {channels - 1} (its "
                        "config holds the channel count)")
    return None


def _accepts_training(layer: Any) -> bool:
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _run_layer(layer: Any) -> Runner:
    training = {"training": False} if _accepts_training(layer) else {}
    return lambda args, kwargs: layer(*args, **{**training, **kwargs})


def _forward(call: Call, run: Runner, examples: np.ndarray) -> np.ndarray:
    """The layer's output on ``examples`` (stacked on the batch axis), in chunks."""
    fixed = call.input_shapes[0][0]
    size = fixed or max(1, MAX_ELEMENTS // max(1, examples[0].size))
    to_tensor = tf.constant if flavour_of(call.layer) is TF_KERAS else np.asarray
    outputs = []
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        n = len(chunk)
        if fixed and n < fixed:  # a fixed batch size: pad with copies of the last example
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        args, kwargs = _swapped(call, to_tensor(chunk))
        out = np.asarray(tf.nest.flatten(run(args, kwargs))[0], np.float64)
        outputs.append(out[:n])
    return np.concatenate(outputs)


def _channel_sets(channels: int) -> List[np.ndarray]:
    """Boolean channel masks: the channels with bit ``b`` set, and their complements."""
    index = np.arange(channels)
    sets = []
    for bit in range(max(1, int(np.ceil(np.log2(channels))))):
        chosen = (index >> bit) & 1 == 1
        sets += [chosen, ~chosen]
    return sets


def _example_shape(call: Call) -> Tuple[int, ...]:
    return tuple(FREE_DIM if d is None else int(d) for d in call.input_shapes[0][1:])


def _changed(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    """Per output channel: does ``a`` differ from ``b`` anywhere?"""
    return np.abs(a - b).reshape(-1, a.shape[-1]).max(axis=0) > tolerance


def _judge_random(out: np.ndarray, sets: List[np.ndarray], channels: int,
                  tolerance: float) -> Optional[Verdict]:
    """Checks 1 and 2 on the base and perturbed outputs; None if they pass."""
    if out.ndim < 2 or out.shape[-1] != channels:
        return _barrier(f"changes the channel count ({channels} -> {out.shape[-1]})")
    if not np.all(np.isfinite(out)):
        return _barrier("non-finite output on random inputs")
    for i, chosen in enumerate(sets, start=1):
        if np.any(_changed(out[i], out[0], tolerance) & ~chosen):
            return _barrier("mixes channels")
    return None


def _judge_fewer(call: Call, run: Runner, base: np.ndarray, reference: np.ndarray,
                 tolerance: float) -> Optional[Verdict]:
    """Check 3: without channel k, the output is the full output without channel k."""
    channels = base.shape[-1]
    dropped = sorted({0, channels // 2, channels - 1})
    inputs = np.stack([np.delete(base, k, axis=-1) for k in dropped])
    try:
        out = _forward(call, run, inputs)
    except Exception as error:  # the layer itself fails: not something to trace through
        return _barrier(f"fails on {channels - 1} channels ({type(error).__name__})")
    expected = np.stack([np.delete(reference, k, axis=-1) for k in dropped])
    if out.shape != expected.shape or not np.allclose(out, expected, rtol=1e-5,
                                                      atol=tolerance):
        return _barrier(f"depends on the channel count or index (differs on {channels - 1} "
                        "channels)")
    return None


def _judge_zeros(out: np.ndarray, zeroed: List[np.ndarray]) -> Verdict:
    clean = True
    for values, channels in zip(out, zeroed):
        values = values[..., channels]
        if not np.all(np.isfinite(values)):
            return _barrier("maps a zero channel to inf or nan")
        clean = clean and bool(np.all(values == 0))
    why = "clean" if clean else "not clean: maps 0 to non-zero"
    return Verdict(True, clean, f"probed: channel-wise ({why})")


def probe(call: Call, run: Optional[Runner] = None, unknown: str = UNKNOWN,
          symbolic: bool = True) -> Verdict:
    """Runs ``call``'s layer on random inputs and judges whether it is channel-wise.

    Args:
      call: the traced call (its input shape, arguments and layer).
      run: runs the layer on ``(args, kwargs)`` (default: ``layer(*args, **kwargs)`` with
        ``training=False`` when its ``call`` takes ``training``).
      unknown: the start of the reason given when the layer cannot be probed.
      symbolic: run check 4 (recorded TF ops are rebuilt by running them: no need).

    Returns:
      A :class:`Verdict`; its text starts with ``"probed: "`` if the layer was run.

    Example:
      >>> import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((4, 4, 3))
      >>> y = keras.layers.Lambda(lambda t: t * keras.ops.sigmoid(t), name="swish")(x)
      >>> call = ChannelGraph(keras.Model(x, y)).records["swish"].calls[0]
      >>> probe(call).text
      'probed: channel-wise (clean)'
    """
    reason = _not_probed(call)
    if reason:
        return Verdict(False, False, f"{unknown}; not probed: {reason}")
    channels = int(call.input_shapes[0][-1])
    declared = call.output_shapes[0][-1] if len(call.output_shapes[0]) > 1 else None
    if declared not in (None, channels):
        return _barrier(f"changes the channel count ({channels} -> {declared})")
    run = run or _run_layer(call.layer)
    rng = np.random.default_rng(SEED)
    shape = _example_shape(call)
    base = rng.standard_normal(shape).astype(np.float32)
    sets = _channel_sets(channels)
    zeroed = [np.arange(channels) % 2 == 0, np.arange(channels) % 2 == 1]
    examples = ([base] + [base + rng.standard_normal(shape).astype(np.float32) * s for s in sets]
                + [base * ~z for z in zeroed])
    try:
        out = _forward(call, run, np.stack(examples))
    except Exception as error:  # a layer that cannot run on random floats: do not guess
        return _barrier(f"could not run it ({type(error).__name__}: {str(error)[:80]})")
    checked = out[:1 + len(sets)]
    tolerance = 1e-6 * float(np.abs(checked).max()) if np.all(np.isfinite(checked)) else 0.0
    verdict = (_judge_random(checked, sets, channels, tolerance)
               or _judge_fewer(call, run, base, out[0], tolerance)
               or (_judge_symbolic(call, channels) if symbolic else None))
    return verdict or _judge_zeros(out[1 + len(sets):], zeroed)


def probe_propagate(call: Call, tracer: Tracer, run: Optional[Runner] = None,
                    unknown: str = UNKNOWN, symbolic: bool = True) -> List[Layout]:
    """Probes ``call`` (see :func:`probe`), records the verdict on its layer and returns its
    output layout: the input's, if channel-wise, else the blocked layout of a barrier."""
    verdict = probe(call, run, unknown, symbolic)
    if verdict.text.startswith("probed: "):
        tracer.note(call, verdict.text)
    if not verdict.channelwise:
        return tracer.opaque(call, verdict.text)
    return [call.inputs[0].with_clean(call.inputs[0].clean and verdict.clean)]


class ProbeHandler(BarrierHandler):
    """The handler of layers no other handler knows: a barrier, unless probing (see the
    module docstring) proves the layer channel-wise.

    Example:
      >>> import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((8, 8, 3))
      >>> h = keras.layers.Conv2D(6, 3, name="conv")(x)
      >>> h = keras.layers.Lambda(lambda t: t[:, 1:, 1:, :], name="crop")(h)
      >>> graph = ChannelGraph(keras.Model(x, keras.layers.Conv2D(2, 1)(h)))
      >>> graph.group("conv").prunable, graph.probed
      (True, {'crop': 'probed: channel-wise (clean)'})
    """

    def __init__(self) -> None:
        super().__init__(UNKNOWN)

    def barrier_reason(self, layer: Any) -> Optional[str]:
        return None  # decided per call, by probe_propagate

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return probe_propagate(call, tracer, _run_layer(call.layer))
