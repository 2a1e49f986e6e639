"""Pruning schedules: exact values, update steps, serialization and argument errors."""

import pytest

from tfcompress._keras import keras
from tfcompress.pruning.schedules import ConstantRatio, PolynomialRatio, PruningSchedule

SCHEDULES = [
    ConstantRatio(0.3),
    ConstantRatio(0.5, begin_step=10, end_step=95, frequency=20),
    PolynomialRatio(0.0, 0.5, begin_step=0, end_step=100, power=3, frequency=10),
    PolynomialRatio(0.1, 0.7, begin_step=5, end_step=47, power=1, frequency=7),
]


def test_constant_ratio_update_steps_and_value():
    schedule = ConstantRatio(0.5, begin_step=10, end_step=95, frequency=20)
    updates = [step for step in range(200) if schedule(step)[0]]
    # begin, every `frequency` steps, and end_step itself (which tfmot would skip).
    assert updates == [10, 30, 50, 70, 90, 95]
    assert all(schedule(step)[1] == 0.5 for step in range(200))


def test_constant_ratio_open_ended_never_stops():
    schedule = ConstantRatio(0.25, frequency=3)
    assert [step for step in range(10) if schedule(step)[0]] == [0, 3, 6, 9]
    assert schedule(3_000_000) == (True, 0.25)


def test_polynomial_ratio_exact_values():
    schedule = PolynomialRatio(0.0, 0.5, begin_step=0, end_step=100, power=3, frequency=25)
    assert schedule(0) == (True, 0.0)
    assert schedule(25) == (True, pytest.approx(0.5 - 0.5 * 0.75 ** 3))
    assert schedule(50) == (True, pytest.approx(0.5 - 0.5 * 0.5 ** 3))
    assert schedule(60) == (False, pytest.approx(0.5 - 0.5 * 0.4 ** 3))
    assert schedule(100) == (True, 0.5)
    assert schedule(101) == (False, 0.5)
    assert schedule(125) == (False, 0.5)


def test_polynomial_ratio_linear_and_monotone():
    schedule = PolynomialRatio(0.1, 0.7, begin_step=5, end_step=47, power=1, frequency=7)
    assert schedule(26)[1] == pytest.approx(0.4)
    ratios = [schedule(step)[1] for step in range(60)]
    assert ratios == sorted(ratios)
    assert [step for step in range(60) if schedule(step)[0]] == [5, 12, 19, 26, 33, 40, 47]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_last_update_step_matches_a_scan(schedule):
    for step in range(0, 130):
        expected = max((s for s in range(step + 1) if schedule(s)[0]), default=None)
        assert schedule.last_update_step(step) == expected
        assert PruningSchedule.last_update_step(schedule, step) == expected


def test_last_update_step_by_hand():
    schedule = ConstantRatio(0.5, begin_step=10, end_step=95, frequency=20)
    assert [schedule.last_update_step(step) for step in (9, 10, 29, 30, 94, 95, 500)] == [
        None, 10, 10, 30, 90, 95, 95]
    assert ConstantRatio(0.3).last_update_step(250) == 200


CONFIGS = [
    {"ratio": 0.3, "begin_step": 0, "end_step": -1, "frequency": 100},
    {"ratio": 0.5, "begin_step": 10, "end_step": 95, "frequency": 20},
    {"initial_ratio": 0.0, "final_ratio": 0.5, "begin_step": 0, "end_step": 100, "power": 3,
     "frequency": 10},
    {"initial_ratio": 0.1, "final_ratio": 0.7, "begin_step": 5, "end_step": 47, "power": 1,
     "frequency": 7},
]


@pytest.mark.parametrize("schedule, config", zip(SCHEDULES, CONFIGS), ids=repr)
def test_get_config_lists_the_constructor_arguments(schedule, config):
    assert schedule.get_config() == config
    assert type(schedule)(**config).get_config() == config


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_keras_serialization_round_trip(schedule):
    serialized = keras.utils.serialize_keras_object(schedule)
    assert serialized["registered_name"] == f"tfcompress>{type(schedule).__name__}"
    assert serialized["config"] == schedule.get_config()
    clone = keras.utils.deserialize_keras_object(serialized)  # no custom_objects needed
    assert type(clone) is type(schedule) and clone is not schedule
    assert [clone(step) for step in range(120)] == [schedule(step) for step in range(120)]


def test_polynomial_values_after_a_round_trip():
    clone = PolynomialRatio.from_config(CONFIGS[2])
    # 0.5 - 0.5 * (1 - step / 100) ** 3, by hand.
    assert [clone(step)[1] for step in (0, 20, 50, 100)] == pytest.approx(
        [0.0, 0.5 - 0.5 * 0.512, 0.5 - 0.5 * 0.125, 0.5])


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: ConstantRatio(1.0), ValueError, "got 1.0"),
        (lambda: ConstantRatio(-0.1), ValueError, "got -0.1"),
        (lambda: ConstantRatio("0.5"), TypeError, "'0.5'"),
        (lambda: ConstantRatio(0.5, frequency=0), ValueError,
         "`frequency` must be an integer >= 1, got 0"),
        (lambda: ConstantRatio(0.5, frequency=2.0), TypeError, "got 2.0 (float)"),
        (lambda: ConstantRatio(0.5, begin_step=2.5), TypeError, "got 2.5"),
        (lambda: ConstantRatio(0.5, begin_step=-1), ValueError,
         "`begin_step` must be an integer >= 0"),
        (lambda: ConstantRatio(0.5, begin_step=10, end_step=10), ValueError, "or -1"),
        (lambda: PolynomialRatio(0.0, 0.5, 10, 5), ValueError, "`end_step` (5)"),
        (lambda: PolynomialRatio(0.0, 0.5, 0, -1), ValueError,
         "`end_step` must be an integer >= 0"),
        (lambda: ConstantRatio(float("nan")), ValueError, "got nan"),
        (lambda: PolynomialRatio(0.0, 1.5, 0, 10), ValueError, "got 1.5"),
        (lambda: PolynomialRatio(0.0, 0.5, 0, 10, power=0), ValueError, "got 0"),
        (lambda: PolynomialRatio(0.0, 0.5, 0, 10, power="3"), TypeError, "got '3' (str)"),
        (lambda: PolynomialRatio(0.0, 0.5, True, 10), TypeError, "got True"),
    ],
)
def test_invalid_arguments_name_the_value(make, error, fragment):
    with pytest.raises(error) as info:
        make()
    assert fragment in str(info.value)


def test_abstract_base_cannot_be_instantiated():
    with pytest.raises(TypeError):
        PruningSchedule()


def test_final_ratio():
    assert ConstantRatio(0.3).final_ratio == 0.3
    assert PolynomialRatio(0.1, 0.6, 0, 10).final_ratio == 0.6
    schedule = PolynomialRatio(0.1, 0.6, 0, 10, power=2, frequency=3)
    assert schedule(10) == (True, 0.6) and schedule(9) == (True, pytest.approx(0.6 - 0.5 * 0.01))


def test_final_step():
    assert ConstantRatio(0.3).final_step is None
    assert ConstantRatio(0.3, begin_step=2, end_step=9).final_step == 9
    assert PolynomialRatio(0.1, 0.6, 0, 10).final_step == 10


def test_docstring_examples():
    import doctest

    from tfcompress.pruning import schedules

    result = doctest.testmod(schedules)
    assert result.failed == 0 and result.attempted >= 4
