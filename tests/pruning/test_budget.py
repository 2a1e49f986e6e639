"""Latency-targeted allocation: cost units, interpolation, the greedy allocation and the API.

Expected values come from outside the code under test: the units of ``residual_cnn`` written
out from its architecture, the rebuilt model's layers, analytic (bilinear) costs that a
multilinear interpolation must reproduce exactly, and allocations worked out by hand.
"""

import numpy as np
import pytest

from tfcompress.latency import LatencyTable
from tfcompress.latency.runtime import CACHE_ENV
from tfcompress.models import compile_classifier, residual_cnn
from tfcompress.pruning import (
    ChannelGraph,
    FPGMPruning,
    fpgm_masks,
    latency_plan,
    rebuild,
    select_masks,
)
from tfcompress.pruning.budget import allocate
from tfcompress.pruning.latency_cost import LatencyCost, cost_units, group_multiple, micro_unit
from tfcompress.pruning.latency_model import Calibration

UNITS = [
    (("stem_conv", "stem_bn", "stem_relu"), ("stem_conv",)),
    (("block1a_conv", "block1a_bn", "block1a_relu"), ("stem_conv", "block1a_conv")),
    (("block1b_conv", "block1b_bn"), ("block1a_conv", "stem_conv")),
    (("block1_add", "block1_out", "dw_conv", "dw_bn", "dw_relu", "block2a_conv", "block2a_bn",
      "block2a_relu"), ("stem_conv", "block2a_conv")),
    (("block2b_conv", "block2b_bn", "block2b_relu", "pool"), ("block2a_conv", "block2b_conv")),
    (("logits",), ("block2b_conv",)),
]


@pytest.fixture(scope="module")
def latency_cache(tmp_path_factory):
    """One table cache for the module (micro-benchmarks are measured once)."""
    import os

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("latency"))
    yield
    if old is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = old


def test_cost_units_follow_the_architecture(flavour):
    graph = ChannelGraph(residual_cnn((32, 32, 1), width=16, flavour=flavour.name))
    assert [(u.keys, u.groups) for u in cost_units(graph)] == UNITS


def test_micro_unit_is_the_rebuilt_layer(flavour):
    model = residual_cnn((32, 32, 1), width=16, flavour=flavour.name)
    graph = ChannelGraph(model)
    counts = {"stem_conv": 8, "block1a_conv": 4}
    unit = next(u for u in cost_units(graph) if u.keys[0] == "block1a_conv")
    micro = micro_unit(graph, unit, counts)
    slim = rebuild(model, select_masks(graph, per_layer={g: 1 - c / 16 for g, c in counts.items()}))
    conv = slim.get_layer("block1a_conv")
    assert micro.layers[0][1]["filters"] == conv.filters == 4
    assert micro.input_shapes == (tuple(conv.input.shape[1:]),) == ((32, 32, 8),)


class AnalyticTable(LatencyTable):
    """A table whose 'measurements' are ``0.01 + 1e-4 * c_in * c_out`` of the head layer."""

    def __init__(self, path):
        super().__init__("litert-float32", path=path)

    def lookup(self, units, progress=False):
        times = []
        for unit in units:
            config = unit.layers[0][1]
            c_in = unit.input_shapes[0][-1]
            c_out = config.get("filters", config.get("units", c_in))
            times.append(0.0 if unit.input_shapes == ((1,),) else 0.01 + 1e-4 * c_in * c_out)
        return times


def test_interpolation_reproduces_bilinear_costs_off_the_grid(tmp_path):
    graph = ChannelGraph(residual_cnn((32, 32, 1), width=16))
    cost = LatencyCost(graph, AnalyticTable(tmp_path / "t.json"))
    index = [u.keys[0] for u in cost.units].index("block1a_conv")
    assert cost.levels["stem_conv"] == [1, 2, 4, 8, 12, 16]  # not 5, 7 or 13
    for c_in, c_out in [(16, 16), (5, 7), (13, 3), (1, 16)]:
        counts = {"stem_conv": c_in, "block1a_conv": c_out}
        assert cost.unit_ms(index, counts) == pytest.approx(0.01 + 1e-4 * c_in * c_out)


class LinearCost:
    """A stand-in LatencyCost: each channel of group ``g`` costs ``per_channel[g]`` ms."""

    def __init__(self, per_channel, sizes):
        self.per_channel, self.sizes = per_channel, sizes

    def units_of(self, groups):
        return list(groups)

    def saving(self, counts, removed=frozenset(), indices=None):
        groups = self.per_channel if indices is None else indices
        return sum(self.per_channel[g] * (self.sizes[g] - counts.get(g, self.sizes[g]))
                   for g in groups)


def test_allocation_prunes_the_group_whose_channels_cost_less_accuracy():
    sizes = {"a": 8, "b": 8}
    cost = LinearCost({"a": 1.0, "b": 1.0}, sizes)  # full model: 16 ms of channels + 4 fixed
    ladders = {g: list(range(1, 9)) for g in sizes}
    losses = {"a": lambda k: 0.1 * (1 - k / 8) ** 2, "b": lambda k: (1 - k / 8) ** 2}
    counts, removed = allocate(cost, 20.0, 0.8, ladders, losses, {})
    # 4 ms (4 channels) must go, each step saving 1 ms. Extra loss of a step: a from k to
    # k - 1: 0.1 * (17 - 2k) / 64, i.e. 0.0016, 0.0047, 0.0078, 0.0109 for k = 8..5; b's
    # first step: 1 / 64 = 0.0156, dearer than all four of a's.
    assert counts == {"a": 4, "b": 8} and removed == set()


def test_allocation_gives_back_the_steps_an_overshooting_step_made_unneeded():
    cost = LinearCost({"a": 1.0, "b": 1.0}, {"a": 8, "b": 8})
    ladders = {"a": [4, 8], "b": list(range(1, 9))}
    losses = {"a": lambda k: 0.1 * (k < 8), "b": lambda k: 0.01 * (8 - k) ** 2}
    # 4 ms must go. Loss per ms: b's first channel 0.01, a's 4-channel step 0.025, b's
    # second 0.03: the greedy takes b 8 -> 7, then a 8 -> 4 (5 ms in all), after which
    # b's channel is no longer needed and comes back.
    counts, _ = allocate(cost, 20.0, 0.8, ladders, losses, {})
    assert counts == {"a": 4, "b": 8}


def test_allocation_stops_with_a_clear_error_when_the_target_is_out_of_reach():
    cost = LinearCost({"a": 1.0}, {"a": 4})
    with pytest.raises(ValueError, match=r"cannot be reached.*keep 0\.700"):
        allocate(cost, 10.0, 0.5, {"a": [1, 2, 3, 4]}, {"a": lambda k: 1 - k / 4}, {})


def test_calibrated_allocation_meets_the_target_after_the_measured_bend():
    # Measured savings: 1.5x the predicted ones up to 2 ms, then 0.5x (a bend).
    calibration = Calibration(((2.0, 3.0), (6.0, 5.0)))
    xs = np.linspace(0, 10, 101)
    ys = [calibration(x) for x in xs]
    assert np.all(np.diff(ys) > 0) and calibration(1.0) == pytest.approx(1.5)
    assert calibration(8.0) == pytest.approx(6.0)  # the last slope (0.5) continues
    assert [calibration.inverse(y) for y in ys] == pytest.approx(list(xs))
    # A noisy point cannot fold the map: slopes stay within [0.5, 2].
    assert Calibration(((1.0, 5.0),))(1.0) == pytest.approx(2.0)
    cost = LinearCost({"a": 1.0}, {"a": 16})
    counts, _ = allocate(cost, 20.0, 0.75, {"a": list(range(1, 17))}, {"a": lambda k: 16 - k},
                         {}, calibration)
    # 5 ms must be saved: 2 predicted ms give 3, each further predicted ms 0.5: 6 channels.
    assert counts == {"a": 10}


def test_group_multiple_is_the_learned_tile_within_a_quarter_of_the_group():
    tiles = {"out": 16, "in": 8, "depthwise": 16}
    assert [group_multiple(n, tiles) for n in (8, 32, 64, 96, 1024)] == [2, 8, 16, 16, 16]


@pytest.mark.usefixtures("latency_cache")
def test_fpgm_masks_for_a_latency_target_keeps_the_planned_counts(flavour):
    model = residual_cnn((48, 48, 3), width=32, flavour=flavour.name)
    graph = ChannelGraph(model)
    plan = latency_plan(graph, 0.8, "litert-float32")
    assert plan.predicted_kept <= 0.8
    masks = fpgm_masks(model, target_latency=0.8, runtime="litert-float32")
    kept = {g: len(masks.kept.get(g, range(plan.sizes[g]))) for g in plan.sizes}
    assert kept == plan.counts
    assert any(plan.counts[g] < plan.sizes[g] for g in plan.sizes)
    tiles = LatencyTable("litert-float32").get_extra("multiples")
    for gid, count in plan.counts.items():
        assert count == plan.sizes[gid] or count % group_multiple(plan.sizes[gid], tiles) == 0


def test_latency_target_needs_a_fixed_input_size_and_no_ratio():
    model = residual_cnn((None, None, 1), width=8)
    with pytest.raises(ValueError, match="fixed input shape"):
        fpgm_masks(model, target_latency=0.5)
    with pytest.raises(TypeError, match="without `ratio`"):
        fpgm_masks(residual_cnn(width=8), 0.3, target_latency=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        fpgm_masks(residual_cnn(width=8), target_latency=1.5)


@pytest.mark.usefixtures("latency_cache")
def test_callback_prunes_to_the_latency_plan():
    model = compile_classifier(residual_cnn((48, 48, 3), width=32))
    plan = latency_plan(ChannelGraph(model), 0.8, "litert-float32")
    x = np.random.default_rng(0).normal(size=(8, 48, 48, 3)).astype("float32")
    pruning = FPGMPruning(0.5, mode="hard", target_latency=0.8, runtime="litert-float32")
    model.fit(x, np.zeros(8, "int64"), epochs=1, batch_size=8, callbacks=[pruning], verbose=0)
    kept = {g: len(pruning.masks.kept.get(g, range(plan.sizes[g]))) for g in plan.sizes}
    assert kept == plan.counts
    assert FPGMPruning.from_config(pruning.get_config()).target_latency == 0.8


@pytest.mark.usefixtures("latency_cache")
def test_cli_prunes_for_a_latency_target_and_prints_predicted_and_measured(tmp_path, capsys):
    from tfcompress.cli import main

    residual_cnn((48, 48, 3), width=32).save(tmp_path / "m.keras")
    code = main(["prune", str(tmp_path / "m.keras"), "--target-latency", "0.8",
                 "--runtime", "litert-float32", "--output", str(tmp_path / "slim.keras")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "slim.keras").exists()
    predicted = next(line for line in out.splitlines() if line.startswith("predicted"))
    measured = next(line for line in out.splitlines() if line.startswith("measured"))
    assert float(predicted.split()[-1]) <= 0.8  # the plan's promise; measured is reported
    assert 0 < float(measured.split()[-1]) < 1.5
    assert "prediction error" in out


@pytest.mark.usefixtures("latency_cache")
def test_sensitivity_drops_steer_the_allocation_away_from_a_sensitive_group():
    from tfcompress.pruning.sensitivity_result import GroupSensitivity, SensitivityResult

    model = residual_cnn((48, 48, 3), width=32)
    graph = ChannelGraph(model)
    groups = [g for g in graph.groups if g.prunable]

    def scan(sensitive):  # a hand-made scan: one group loses 0.5 at any ratio, others 0.001
        rows = [GroupSensitivity(g.id, g.name, g.size, g.layers, (g.id,), kept=(g.size // 2,),
                                 drops=(0.5 if g.id == sensitive else 0.001,),
                                 macs_saved=(1,)) for g in groups]
        return SensitivityResult(1.0, (0.5,), rows, total_macs=100)

    # The table is measured on this machine, so whether a sensitive group can stay whole at
    # the target depends on it; what must hold on any table is the comparison: a group keeps
    # at least as many channels when it is the sensitive one as when the other group is, and
    # one of the two keeps more.
    pair = ("block2a_conv", "block2b_conv")
    plans = {sensitive: latency_plan(graph, 0.8, "litert-float32", sensitivity=scan(sensitive))
             for sensitive in pair}
    kept = {group: (plans[group].counts[group], plans[other].counts[group])
            for group, other in (pair, pair[::-1])}
    assert all(own >= theirs for own, theirs in kept.values()), kept
    assert any(own > theirs for own, theirs in kept.values()), kept
    assert all(plan.predicted_kept <= 0.8 for plan in plans.values())
