"""``tfcompress inspect``: per-layer size and cost, channel groups and what blocks them.

Example:
  >>> import tempfile
  >>> import tf_keras as keras
  >>> from tfcompress.cli import main
  >>> path = tempfile.mkdtemp() + "/m.keras"
  >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
  ...                   keras.layers.Dense(2, name="out")], name="mlp").save(path)
  >>> main(["inspect", path])  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
  model 'mlp': 2 layers
  layer   type   channels  params  MACs
  ...
  hidden  Dense         8      40    32
  out     Dense         2      18    16
  total: 58 params, 48 MACs per example
  ...
  0
"""

from __future__ import annotations

import argparse
from typing import List

from tfcompress.cli.command import Command
from tfcompress.cli.inputs import existing_path
from tfcompress.cli.table import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=existing_path,
                        help=".keras, .h5 (tf_keras or Keras 3) or tf_keras SavedModel folder")


def _call_macs(record) -> int:
    """MACs of every call of one traced layer, all channels kept (the handler's count)."""
    total = 0
    for call in record.calls:
        if call.inputs and call.outputs:
            total += int(record.handler.call_macs(call, lambda space: None))  # all kept
    return total


def _layer_rows(graph) -> List[list]:
    rows = []
    for key, record in graph.records.items():
        shape = record.calls[0].output_shapes[0] if record.calls[0].output_shapes else ()
        channels = shape[-1] if len(shape) > 1 and shape[-1] is not None else ""
        rows.append(
            [key, type(record.layer).__name__, channels, record.layer.count_params(),
             _call_macs(record)]
        )
    return rows


def _group_rows(graph) -> List[list]:
    rows = []
    for group in graph.groups:
        if not group.producers and not group.prunable:
            continue  # model inputs and the like: nothing anyone could prune
        layers = ", ".join(group.layers[:4]) + (", ..." if len(group.layers) > 4 else "")
        rows.append([group.id, group.size, "yes" if group.prunable else "no", layers])
    return rows


def run(args: argparse.Namespace) -> int:
    from tfcompress.export import is_qat_model, load_model
    from tfcompress.pruning import ChannelGraph, count_params, graph_macs

    model = load_model(args.model)
    if is_qat_model(model):
        print(
            "note: a quantization-aware (QAT) model: tfcompress does not see through its "
            "quantization wrappers, so MACs may read 0 and groups may not be prunable. Inspect "
            "the float model."
        )
    graph = ChannelGraph(model)
    layer_rows = _layer_rows(graph)
    print(f"model {model.name!r}: {len(model.layers)} layers")
    print(format_table(["layer", "type", "channels", "params", "MACs"], layer_rows))
    print(f"total: {count_params(model):,} params, {graph_macs(graph):,} MACs per example")
    print()
    print("channel groups (channels pruned together):")
    print(format_table(["group", "channels", "prunable", "layers"], _group_rows(graph)))
    blocked = {gid: barriers for gid, barriers in graph.barriers.items()
               if any(g.id == gid and g.producers for g in graph.groups)}
    if blocked:
        print()
        print("barriers (why a group cannot be pruned):")
        for gid, barriers in blocked.items():
            reasons = "; ".join(f"{layer}: {reason}" for layer, reason in barriers)
            print(f"  {gid}: {reasons}")
    if graph.probed:
        print()
        print("layers without a handler, judged by running them:")
        for layer, verdict in graph.probed.items():
            print(f"  {layer}: {verdict}")
    return 0


COMMAND = Command(
    name="inspect",
    help="per-layer channels, params and MACs; channel groups and the barriers that block them",
    description=(
        "Traces the model's channel graph: channels that must be pruned together form a\n"
        "group; a layer tfcompress cannot reason about (custom layer, Lambda, ...) or a\n"
        "model output blocks the groups it touches, unless running it on random inputs\n"
        "proves it weightless and channel-wise. MACs count convolutions and Dense\n"
        "layers for one example."
    ),
    add_arguments=add_arguments,
    run=run,
)
