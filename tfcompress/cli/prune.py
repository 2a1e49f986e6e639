"""``tfcompress prune``: one-shot FPGM (or L1/L2) masks, rebuilt into a smaller dense model.

Example:
  >>> import tempfile
  >>> import tf_keras as keras
  >>> from tfcompress.cli import main
  >>> folder = tempfile.mkdtemp()
  >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
  ...                   keras.layers.Dense(2, name="out")]).save(folder + "/m.keras")
  >>> main(["prune", folder + "/m.keras", "--ratio", "0.5", "--round-to", "1"])
  ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
  group   channels  kept
  ...
  hidden         8     4
  ...
  params      58      30  0.517
  ...
  0
"""

from __future__ import annotations

import argparse
import pathlib

from tfcompress.cli.command import Command
from tfcompress.cli.inputs import existing_path, positive_int, ratio
from tfcompress.cli.table import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=existing_path,
                        help=".keras, .h5 (tf_keras or Keras 3) or tf_keras SavedModel folder")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=ratio, help="fraction of each group's channels to remove")
    amount.add_argument(
        "--target-latency", type=ratio, metavar="FRACTION",
        help="fraction of the model's latency to keep on --runtime (e.g. 0.5: 2x faster); "
        "per-group widths (and residual branches) chosen from measured latency tables",
    )
    parser.add_argument(
        "--runtime", default="litert-int8", choices=("litert-int8", "litert-float32"),
        help="runtime the latency is measured on (default litert-int8)",
    )
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="interpreter threads for latency (default 1)")
    parser.add_argument("--check-latency", action="store_true",
                        help="with --target-latency: time the slim model while planning and "
                        "plan again if it measures above the target")
    # Checked by the pruning API against its criteria registry (importing it here would
    # load TensorFlow before `--help` can answer).
    parser.add_argument(
        "--criterion", default="fpgm", metavar="fpgm|l1|l2", help="filter criterion (fpgm)"
    )
    parser.add_argument(
        "--round-to",
        type=positive_int,
        default=None,
        metavar="N",
        help="keep a multiple of N channels per group (default: the library's default)",
    )
    parser.add_argument(
        "--exclude", nargs="+", default=[], metavar="LAYER", help="layers whose channels to keep"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="the slim model, in the input's Keras; its suffix picks the format (default: "
        "MODEL_slim in the input's format; a Keras 3 model needs .keras or .h5)",
    )


def _default_output(model_path: pathlib.Path) -> pathlib.Path:
    return model_path.with_name(f"{model_path.stem}_slim{model_path.suffix}")


def _check_output(model, output: pathlib.Path) -> None:
    """Refuses a Keras 3 model to a SavedModel folder, from which Keras 3 cannot reload it."""
    from tfcompress._keras import KERAS3, flavour_of
    from tfcompress.export import model_format

    if flavour_of(model) is KERAS3 and model_format(output) == "tf":
        raise ValueError(
            f"--output {str(output)!r} is a SavedModel folder, from which Keras 3 cannot "
            "reload the pruned model. Pass a .keras (or .h5) path, then `tfcompress export "
            "--format saved_model` it for serving."
        )


def run(args: argparse.Namespace) -> int:
    from tfcompress.export import is_qat_model, load_model, save_model
    from tfcompress.pruning import (
        ChannelGraph,
        graph_macs,
        graph_params,
        latency_plan,
        rebuild,
        select_masks,
    )

    model = load_model(args.model)
    if is_qat_model(model):
        raise ValueError(
            f"{args.model} is a quantization-aware (QAT) model, whose quantization wrappers "
            "hide the channels. Prune the float model first, then run quantization-aware "
            "training."
        )
    output = pathlib.Path(args.output) if args.output else _default_output(args.model)
    _check_output(model, output)
    options = {"criterion": args.criterion, "exclude": args.exclude}
    if args.round_to is not None:
        options["round_to"] = args.round_to
    graph, plan = ChannelGraph(model), None
    if args.target_latency is not None:
        plan = latency_plan(graph, args.target_latency, args.runtime, args.threads,
                            check_latency=args.check_latency, progress=True, **options)
        masks = select_masks(graph, per_layer=plan.ratios(), criterion=args.criterion)
    else:
        masks = select_masks(graph, args.ratio, **options)
    slim = rebuild(model, masks)
    output = save_model(slim, output)
    before, after = graph, ChannelGraph(slim)
    groups = [
        [group.id, group.size, len(masks.kept.get(group.id, range(group.size)))]
        for group in before.groups
        if group.prunable
    ]
    print(format_table(["group", "channels", "kept"], groups))
    print()
    params = graph_params(before), graph_params(after)
    macs = graph_macs(before), graph_macs(after)
    totals = [
        ["params", *params, params[1] / params[0]],
        ["MACs", *macs, macs[1] / max(1, macs[0])],
    ]
    print(format_table(["", "before", "after", "kept"], totals))
    print(f"pruned {masks.pruned_ratio:.1%} of the prunable channels; wrote {output}")
    if plan is not None:
        _print_latency(plan, model, load_model(output))
    return 0


def _print_latency(plan, model, slim) -> None:
    """Predicted and measured latency of the slim file (timed together with the model)."""
    from tfcompress.latency import measure_models

    slim_ms, full_ms = measure_models([slim, model], plan.runtime, plan.threads)
    rows = [["predicted", f"{plan.full_ms:.3f}", f"{plan.predicted_ms:.3f}",
             f"{plan.predicted_kept:.3f}"],
            ["measured", f"{full_ms:.3f}", f"{slim_ms:.3f}", f"{slim_ms / full_ms:.3f}"]]
    print()
    print(format_table([f"latency ({plan.runtime}, {plan.threads} thread(s))", "model ms",
                        "slim ms", "kept"], rows))
    measured = slim_ms / full_ms
    print(f"target {plan.target:.3f}: measured {measured:.3f}, predicted "
          f"{plan.predicted_kept:.3f} (prediction error {plan.predicted_kept / measured - 1:+.1%})")


COMMAND = Command(
    name="prune",
    help="prune channels (FPGM, L1 or L2) and save the smaller dense model",
    description=(
        "Scores the filters of every prunable channel group, keeps the best (1 - ratio) of\n"
        "each, and rebuilds a smaller dense model with the kept channels' weights. Groups\n"
        "blocked by a layer tfcompress cannot reason about are left whole (see `inspect`).\n"
        "The slim model is written by the Keras that wrote the input (tf_keras or Keras 3)."
    ),
    add_arguments=add_arguments,
    run=run,
)
