"""FPGM pruning and PACT QAT under tf.distribute (see docs/distributed.md).

The strategies run in subprocesses: logical CPU devices and ``TF_CONFIG`` must be set before
TensorFlow initialises, and this pytest process has initialised it long ago.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tfcompress.pruning import Masks

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
TIMEOUT_S = 420


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["tf_keras", "keras3"])
def mirrored(request):
    """The measurements of ``_mirrored_scenario.py`` (2 replicas vs a single device), with
    models of each Keras."""
    result = subprocess.run([sys.executable, str(HERE / "_mirrored_scenario.py"), request.param],
                            env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fpgm_callback_trains_under_mirrored_strategy(mirrored):
    assert mirrored["replicas"] == 2
    assert mirrored["pruned_ratio"] == 0.5


def test_masks_are_applied_identically_on_every_replica(mirrored):
    # the callback reads one value of each mirrored variable and zeroes every replica
    assert mirrored["pruned_zero_everywhere"]
    assert mirrored["replicas_identical"]


def test_mirrored_masked_model_equals_its_rebuild(mirrored):
    assert mirrored["rebuild_max_diff"] <= 1e-5 * max(1.0, mirrored["output_scale"])


def test_mirrored_pruning_matches_a_single_device_run(mirrored):
    masks = Masks.from_json(mirrored["masks_json"])
    assert masks == Masks.from_json(mirrored["single_masks_json"])
    assert mirrored["single_max_diff"] <= 0.05 * max(1.0, mirrored["output_scale"])


def test_pact_qat_trains_under_mirrored_strategy_like_a_single_device(mirrored):
    assert mirrored["qat_replicas_identical"]  # learned weight steps included
    assert mirrored["learned_steps"] > 0
    assert abs(mirrored["qat_losses"][-1] - mirrored["single_qat_losses"][-1]) < 0.05
    ranges, single = mirrored["clip_ranges"], mirrored["single_clip_ranges"]
    assert ranges.keys() == single.keys()
    for name, (low, high) in ranges.items():
        # calibration averages each replica's best range: close to, not equal to, one device's
        single_low, single_high = single[name]
        assert abs(high - single_high) <= 0.2 * abs(single_high) + 0.01, name
        assert abs(low - single_low) <= 0.2 * abs(single_low) + 0.01, name


def test_two_workers_on_localhost_agree(tmp_path):
    """MultiWorkerMirroredStrategy: both workers end with the same masks and weights."""
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, str(HERE / "_multiworker_scenario.py"),
             str(tmp_path / f"{index}.json")],
            env=_env(TF_CONFIG=config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True))
    try:
        errors = [worker.communicate(timeout=TIMEOUT_S)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, error in zip(workers, errors):
        assert worker.returncode == 0, error[-4000:]
    chief, other = (json.loads((tmp_path / f"{index}.json").read_text()) for index in range(2))
    assert chief["workers"] == 2
    assert Masks.from_config(chief["masks"]) == Masks.from_config(other["masks"])
    assert Masks.from_config(chief["masks"]).pruned_ratio == 0.5
    assert chief["digest"] == other["digest"]
    assert chief["qat_digest"] == other["qat_digest"]
    assert chief["clip_ranges"] == other["clip_ranges"]
