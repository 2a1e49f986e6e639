"""The demo's outputs for people: the result table, ``report.md`` and PNG plots.

Plots need matplotlib (``pip install matplotlib``); without it the report says so in place
of each figure and everything else is written as usual.

Example:
  >>> import pathlib, tempfile
  >>> history = {"stage": ["float", "float", "prune"], "accuracy": [0.5, 0.8, 0.85],
  ...            "val_accuracy": [0.45, 0.75, 0.8], "pruned_ratio": [0.0, 0.0, 0.5]}
  >>> path = plot_training(history, pathlib.Path(tempfile.mkdtemp()) / "training.png")
  >>> path is None or path.read_bytes()[1:4] == b"PNG"  # None without matplotlib
  True
"""

from __future__ import annotations

import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

from tfcompress._io import write_text
from tfcompress._plots import pyplot as _pyplot
from tfcompress._plots import save_figure
from tfcompress.demo.pipeline import DemoResult

__all__ = ["TABLE_HEADERS", "table_rows", "markdown_table", "summary_lines", "plot_training",
           "plot_channels", "write_report"]

#: Column headers of :func:`table_rows`.
TABLE_HEADERS = ("stage", "accuracy", "params", "MACs", "file", "size KiB", "latency ms")


def table_rows(result: DemoResult) -> List[list]:
    """One row per stage: name, accuracy, params, MACs, ``.tflite`` file, size and latency.

    Cells that do not apply to a stage (no file, so no latency) are ``""``.

    Example:
      >>> from tfcompress.cli.table import format_table
      >>> print(format_table(TABLE_HEADERS, table_rows(result)))  # doctest: +SKIP
    """
    rows = []
    for stage in result.stages:
        size = stage.size_bytes
        rows.append([
            stage.name,
            round(stage.accuracy, 4),
            stage.params,
            stage.macs,
            stage.file.name if stage.file else "",
            round(size / 1024, 1) if size is not None else "",
            round(stage.latency_ms, 4) if stage.latency_ms is not None else "",
        ])
    return rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; numbers are right-aligned and comma-grouped.

    Example:
      >>> print(markdown_table(["layer", "params"], [["conv", 1200]]))
      | layer | params |
      |:--|--:|
      | conv | 1,200 |
    """
    numeric = [all(isinstance(row[i], (int, float)) for row in rows if row[i] != "")
               for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("--:" if right else ":--" for right in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return "\n".join(lines)


def summary_lines(result: DemoResult) -> List[str]:
    """What the compression bought, in words: kept params/MACs/size and the speedups.

    Sizes compare ``.tflite`` files with ``.tflite`` files; the slim SavedModel folder, a
    serving format holding the TensorFlow graph, gets a line of its own.
    """
    first, slim, last = result.stages[0], result.stage("slim"), result.stages[-1]
    kib = [f"{stage.file.name} {stage.size_bytes / 1024:.1f} KiB"
           for stage in result.stages if stage.file is not None]
    lines = [
        f"params kept {last.params / first.params:.1%}, MACs kept {last.macs / first.macs:.1%}, "
        f"TFLite file size kept {last.size_bytes / first.size_bytes:.1%} ({' -> '.join(kib)})",
        f"accuracy {first.accuracy:.4f} (float) -> {last.accuracy:.4f} (slim int8 TFLite)",
        f"latency {first.latency_ms:.4f} ms (float TFLite) -> {slim.latency_ms:.4f} ms (slim "
        f"float TFLite, {result.pruning_speedup:.2f}x) -> {last.latency_ms:.4f} ms (slim int8 "
        f"TFLite): {result.speedup:.2f}x faster (LiteRT, 1 thread, batch 1)",
    ]
    if result.saved_model is not None:
        size = sum(p.stat().st_size for p in result.saved_model.rglob("*") if p.is_file())
        lines.append(f"slim SavedModel {result.saved_model.name}/: {size / 1024:.1f} KiB (graph "
                     "and variables for TensorFlow Serving; not comparable with .tflite sizes)")
    return lines


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def plot_training(history: Dict[str, list], path: pathlib.Path) -> Optional[pathlib.Path]:
    """Train/test accuracy and ``pruned_ratio`` per epoch over all stages, to a PNG.

    Args:
      history: :attr:`DemoResult.history`.
      path: the ``.png`` file to write (atomically).

    Returns:
      ``path``, or ``None`` if matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return None
    epochs = list(range(1, len(history["stage"]) + 1))
    figure, accuracy_axis = plt.subplots(figsize=(8, 4.5))
    accuracy_axis.plot(epochs, history["accuracy"], "o-", label="train accuracy")
    accuracy_axis.plot(epochs, history["val_accuracy"], "s-", label="test accuracy")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1.02)
    ratio_axis = accuracy_axis.twinx()
    ratio_axis.step(epochs, history["pruned_ratio"], "k--", where="mid", label="pruned_ratio")
    ratio_axis.set_ylabel("pruned_ratio (channels removed)")
    ratio_axis.set_ylim(0, 1.02)
    for start, end, stage in _stage_spans(history["stage"]):
        accuracy_axis.axvline(start - 0.5, color="grey", lw=0.5)
        accuracy_axis.text((start + end) / 2, 0.03, stage, ha="center", fontsize=9)
    handles = accuracy_axis.get_legend_handles_labels()
    extra = ratio_axis.get_legend_handles_labels()
    accuracy_axis.legend(handles[0] + extra[0], handles[1] + extra[1],
                         loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    accuracy_axis.set_title("Training: float -> FPGM pruning + fine-tuning -> PACT QAT")
    return save_figure(figure, path)


def plot_channels(channels: Dict[str, Tuple[int, int]], path: pathlib.Path
                  ) -> Optional[pathlib.Path]:
    """Output channels per conv/dense layer before and after pruning, to a PNG.

    Returns:
      ``path``, or ``None`` if matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return None
    names = list(channels)
    positions = range(len(names))
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.bar([p - 0.2 for p in positions], [channels[n][0] for n in names], 0.4, label="before")
    axis.bar([p + 0.2 for p in positions], [channels[n][1] for n in names], 0.4, label="after")
    axis.set_xticks(list(positions))
    axis.set_xticklabels(names, rotation=30, ha="right")
    axis.set_ylabel("output channels")
    axis.set_title("Channels per layer before and after FPGM pruning")
    axis.legend()
    return save_figure(figure, path)


def _stage_spans(stages: List[str]) -> List[Tuple[int, int, str]]:
    """``(first epoch, last epoch, stage)`` of each run of equal stage names (1-based)."""
    spans: List[Tuple[int, int, str]] = []
    for epoch, stage in enumerate(stages, start=1):
        if spans and spans[-1][2] == stage:
            spans[-1] = (spans[-1][0], epoch, stage)
        else:
            spans.append((epoch, epoch, stage))
    return spans


def write_report(result: DemoResult) -> pathlib.Path:
    """Writes ``report.md``, ``training.png`` and ``channels.png`` into the demo's folder.

    Args:
      result: what :func:`tfcompress.demo.run_demo` returned.

    Returns:
      The path of ``report.md`` (also stored in ``result.report``).

    Raises:
      ValueError: if the output folder is missing or not writable.

    Example:
      >>> from tfcompress.demo import DemoConfig, run_demo, write_report
      >>> write_report(run_demo(DemoConfig(output="demo", quick=True)))  # doctest: +SKIP
      PosixPath('demo/report.md')
    """
    out = pathlib.Path(result.config.output)
    config = result.config
    figures = []
    for title, plot, data, name in (
        ("Accuracy and pruned_ratio per epoch", plot_training, result.history, "training.png"),
        ("Channels per layer", plot_channels, result.channels, "channels.png"),
    ):
        written = plot(data, out / name)
        figures.append(f"## {title}\n\n" + (
            f"![{title}]({name})" if written else
            "_Plot not drawn: matplotlib is not installed (`pip install matplotlib`)._"))
    channel_rows = [[name, before, after, f"{after / before:.0%}"]
                    for name, (before, after) in result.channels.items()]
    parts = [
        "# tfcompress demo report",
        f"Residual CNN (width {config.width}) on sklearn's digits: FPGM pruning to ratio "
        f"{config.ratio}, PACT {config.bits}-bit QAT, int8 TFLite"
        + (" (quick mode: 256 training samples, one epoch per stage, so the accuracies are "
           "those of a barely trained model; run without --quick for real numbers)."
           if config.quick else "."),
        "## Results\n\n" + markdown_table(TABLE_HEADERS, table_rows(result)),
        "\n".join(f"- {line}" for line in summary_lines(result)),
        "## TFLite parity (slim int8 vs its Keras QAT model)\n\n```\n"
        + result.parity.summary() + "\n```",
        *figures,
        "## Output channels per layer\n\n"
        + markdown_table(["layer", "before", "after", "kept"], channel_rows),
        "## Files\n\n- `float.tflite`: the original float model\n- `slim_float.tflite`: the "
        "pruned, rebuilt float model\n- `slim_saved_model/`: the same model as a SavedModel "
        "(for TensorFlow Serving)\n- `slim_int8.tflite`: the pruned, PACT-quantized int8 model",
    ]
    result.report = write_text(out / "report.md", "\n\n".join(parts) + "\n")
    return result.report
