"""The digits pipeline in tf_keras and in Keras 3, side by side: same weights, same budget.

Run from the repository root::

    python benchmarks/keras3.py              # 3 seeds, 2 batch orders (~20-30 minutes on 2 cores)
    python benchmarks/keras3.py --seeds 1    # a quicker look

For each seed, both flavours start from the same initial weights (drawn once, copied into
the Keras 3 model) and run the demo's stages with the demo's epochs (``DemoConfig(bits=4)``):
float training, FPGM pruning during ``fit`` to ratio 0.5 and fine-tuning, ``rebuild``, 4/4-bit
PACT QAT, int8 TFLite export. Two batch orders: each Keras' own ``fit`` shuffling (what
users get; the two Kerases draw different orders from the same seed), and the same batches
in both (the training set permuted once per seed, ``shuffle=False``), which leaves the
implementations as the only difference. Reported per run: float, pruned (rebuilt), QAT and
int8 TFLite test accuracy and the MACs kept. The QAT step time is measured on the seed-0 QAT models,
interleaved (rounds alternate tf_keras and Keras 3 ``train_on_batch`` bursts; the median
per-step time of each is compared), since this machine is shared. The verdicts (Keras 3
accuracies within 0.5 point of tf_keras', Keras 3 PACT step time <= 1.1x tf_keras') are
computed from this run. Rewrites the ``keras3`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _results  # noqa: E402
import numpy as np  # noqa: E402

from tfcompress.cli.table import format_table  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.demo import DemoConfig  # noqa: E402
from tfcompress.demo.pipeline import prune_during_fit, quantize  # noqa: E402
from tfcompress.export import litert, to_tflite  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn, resolve_flavour  # noqa: E402
from tfcompress.pruning import count_macs, rebuild  # noqa: E402

FLAVOURS = ("tf_keras", "keras3")
METRICS = ("float", "pruned", "qat", "int8")
ACCURACY_GOAL = 0.005  # Keras 3 within 0.5 point of tf_keras
STEP_GOAL = 1.1  # Keras 3 PACT step time <= 1.1x tf_keras'


def _accuracy(model, data) -> float:
    return float(np.mean(np.argmax(model.predict(data[0], verbose=0), -1) == data[1]))


def run_pipeline(flavour: str, weights, config: DemoConfig, train, test, folder) -> dict:
    """The demo's stages on a model of ``flavour`` that starts from ``weights``."""
    module = resolve_flavour(flavour).module
    module.utils.set_random_seed(config.seed)
    model = compile_classifier(residual_cnn(train[0].shape[1:], width=config.width,
                                            flavour=flavour))
    model.set_weights(weights)
    model.fit(*train, batch_size=32, epochs=config.stage_epochs()["float"], verbose=0,
              shuffle=config.shuffle)
    row = {"float": _accuracy(model, test)}
    pruning = prune_during_fit(config, model, train, test, 0, _history())
    slim = compile_classifier(rebuild(model, pruning.masks))
    row["pruned"] = _accuracy(slim, test)
    row["macs_kept"] = count_macs(slim) / count_macs(model)
    qat = quantize(config, slim, train, test, 0, _history())
    row["qat"] = _accuracy(qat, test)
    path = to_tflite(qat, pathlib.Path(folder) / f"{flavour}_{config.seed}_{config.shuffle}.tflite",
                     "int8")
    row["int8"] = float(np.mean(np.argmax(litert.run(path, test[0]), -1) == test[1]))
    row["qat_model"] = qat
    return row


def _history() -> dict:
    return {"stage": [], "accuracy": [], "val_accuracy": [], "pruned_ratio": []}


def step_times(models: dict, train, rounds: int = 12, burst: int = 10) -> dict:
    """Median seconds per QAT training step of each model, interleaved rounds (the order of
    the flavours alternates from round to round)."""
    x, y = train[0][:32], train[1][:32]
    for model in models.values():  # warm up: trace the train function
        for _ in range(3):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    names = list(models)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(burst):
                models[name].train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / burst)
    return {name: statistics.median(values) for name, values in times.items()}


ORDERS = {"own": "each Keras' own shuffling", "same": "the same batches in both"}


def _mean(rows, order, flavour, key):
    return statistics.mean(row[key] for (o, f, _), row in rows.items()
                           if o == order and f == flavour)


def _order_lines(rows, order, seeds) -> list:
    table = [[flavour, str(seed)] + [f"{rows[order, flavour, seed][m]:.4f}" for m in METRICS]
             + [f"{rows[order, flavour, seed]['macs_kept']:.1%}"]
             for seed in seeds for flavour in FLAVOURS]
    table += [[flavour, "mean"] + [f"{_mean(rows, order, flavour, m):.4f}" for m in METRICS]
              + [f"{_mean(rows, order, flavour, 'macs_kept'):.1%}"] for flavour in FLAVOURS]
    gaps = {m: _mean(rows, order, "keras3", m) - _mean(rows, order, "tf_keras", m)
            for m in METRICS}
    met = all(abs(gap) <= ACCURACY_GOAL for gap in gaps.values())
    headers = ["Keras", "seed", "float", "pruned", "QAT 4/4", "int8 TFLite", "MACs kept"]
    return [
        f"### Batch order: {ORDERS[order]}", "", "```", format_table(headers, table), "```", "",
        "- Keras 3 minus tf_keras, mean accuracy: " + ", ".join(
            f"{m} {gap * 100:+.2f} points" for m, gap in gaps.items()) + ".",
        f"- Goal, every gap within {ACCURACY_GOAL * 100:.1f} point: "
        + ("met." if met else "not met."), "",
    ]


def _section(rows, steps, seeds, config, wall_s) -> str:
    ratio = steps["keras3"] / steps["tf_keras"]
    lines = [
        "## Keras 3 vs tf_keras (`benchmarks/keras3.py`: the digits pipeline in both)",
        "",
        f"{_results.stamp()}. Wall time {wall_s:.0f} s.",
        "",
        f"Residual CNN width {config.width}, {len(seeds)} seeds; per seed both flavours "
        "start from the same initial weights and run the demo's stages and epochs "
        f"{config.stage_epochs()}: float, FPGM to ratio {config.ratio} during fit, rebuild, "
        f"PACT {config.bits}/{config.bits}-bit QAT, int8 TFLite. Test accuracy on 450 digits, "
        "for two batch orders (see the script's docstring).",
        "",
    ]
    for order in ORDERS:
        lines += _order_lines(rows, order, seeds)
    lines.append(
        f"PACT QAT step time (batch 32, median of interleaved bursts, seed-0 models): "
        f"tf_keras {steps['tf_keras'] * 1e3:.1f} ms, Keras 3 {steps['keras3'] * 1e3:.1f} ms, "
        f"ratio {ratio:.2f}. Goal <= {STEP_GOAL}x: " + ("met." if ratio <= STEP_GOAL
                                                        else "not met."))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (3)")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    train, test = load_digits(size=16)
    rows, qat_models = {}, {}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(train[0]))
            resolve_flavour("tf_keras").module.utils.set_random_seed(seed)
            weights = residual_cnn(train[0].shape[1:], width=32).get_weights()
            for batches in ORDERS:
                config = DemoConfig(bits=4, seed=seed, output=folder, shuffle=batches == "own")
                data = train if batches == "own" else (train[0][order], train[1][order])
                for flavour in FLAVOURS:
                    row = run_pipeline(flavour, weights, config, data, test, folder)
                    if seed == seeds[0] and batches == "own":
                        qat_models[flavour] = row["qat_model"]
                    rows[batches, flavour, seed] = {k: v for k, v in row.items()
                                                    if k != "qat_model"}
                    print(batches, flavour, seed, {k: round(v, 4) for k, v in
                                                   rows[batches, flavour, seed].items()},
                          flush=True)
    steps = step_times(qat_models, train)
    markdown = _section(rows, steps, seeds, DemoConfig(bits=4), time.perf_counter() - wall)
    print(markdown)
    print(f"\nwrote {_results.write_section('keras3', markdown)}")


if __name__ == "__main__":
    main()
