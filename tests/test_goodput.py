"""Goodput and capacity searches, driven by fake summaries with a known answer."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import pytest

from servesim.errors import InputError
from servesim.goodput import (
    Bisection,
    SearchSettings,
    capacity_criterion,
    goodput_criterion,
    search,
    search_many,
)

GOODPUT_ONLY = SearchSettings(criteria=("goodput",), lo=1.0, hi=32.0, rel_tol=0.02)


def fake(knee: float) -> Any:
    """Attainment 0.97 up to `knee`, then 0.5."""
    return lambda rate: {"slo_attainment": 0.97 if rate <= knee else 0.5}


@pytest.mark.parametrize("knee", [1.3, 5.3, 17.0, 31.9])
def test_bisection_brackets_the_knee_to_the_tolerance(knee: float) -> None:
    res = search(fake(knee), goodput_criterion(0.9), GOODPUT_ONLY)
    assert res.best is not None and res.first_fail is not None
    assert res.best <= knee < res.first_fail
    assert (res.first_fail - res.best) / res.best <= 0.02
    assert res.censored == ""
    assert [p.rate_scale for p in res.probes[:2]] == [1.0, 32.0]
    assert res.rates_tried().startswith("1:ok 32:fail ")


def test_censored_when_the_answer_is_outside_the_range() -> None:
    below = search(fake(0.5), goodput_criterion(), GOODPUT_ONLY)
    assert below.best is None and below.censored == "below_lo" and len(below.probes) == 1
    above = search(fake(100.0), goodput_criterion(), GOODPUT_ONLY)
    assert above.best == 32.0 and above.censored == "above_hi" and len(above.probes) == 2


def test_max_probes_stops_the_search() -> None:
    settings = SearchSettings(criteria=("goodput",), lo=1, hi=1000, rel_tol=1e-9, max_probes=5)
    res = search(fake(7.77), goodput_criterion(), settings)
    assert len(res.probes) == 5 and res.best is not None and res.best <= 7.77


def test_goodput_uses_the_attainment_threshold() -> None:
    assert goodput_criterion(0.9)({"slo_attainment": 0.9})
    assert not goodput_criterion(0.95)({"slo_attainment": 0.94})


def test_capacity_needs_both_p99_tbt_and_median_scheduling_delay() -> None:
    ok = capacity_criterion(p99_tbt_s=0.1, max_median_scheduling_delay_s=2.0)
    assert ok({"p99_itl_ms": 100.0, "median_scheduling_delay_ms": 2000.0})
    assert not ok({"p99_itl_ms": 100.1, "median_scheduling_delay_ms": 10.0})
    assert not ok({"p99_itl_ms": 20.0, "median_scheduling_delay_ms": 2000.5})


def test_search_many_runs_rounds_in_lock_step_and_matches_single_searches() -> None:
    knees = {"a": 3.0, "b": 11.0, "c": 0.5}
    rounds: list[list[tuple[Hashable, float]]] = []

    def evaluate_round(wanted: list[tuple[Hashable, float]]) -> list[Mapping[str, Any]]:
        rounds.append(wanted)
        return [fake(knees[str(k)])(r) for k, r in wanted]

    found = search_many({k: goodput_criterion() for k in knees}, evaluate_round, GOODPUT_ONLY)
    assert rounds[0] == [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    assert rounds[1] == [("a", 32.0), ("b", 32.0)]  # c failed at lo: done
    for key, knee in knees.items():
        assert found[key] == search(fake(knee), goodput_criterion(), GOODPUT_ONLY)


def test_bisection_state_machine_ends() -> None:
    state = Bisection(GOODPUT_ONLY)
    while (rate := state.next_rate()) is not None:
        state.record(rate, rate <= 4.0)
    assert state.result().best == state.best and state.best is not None and state.best <= 4.0


@pytest.mark.parametrize("bad, key", [
    ({"lo": 4, "hi": 2}, "lo, hi"), ({"rel_tol": 0}, "rel_tol"), ({"attainment": 1.5}, "attainment"),
    ({"criteria": ["capacity"]}, "p99_tbt_s"), ({"criteria": []}, "criteria"),
])
def test_bad_settings_are_input_errors(bad: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError, match=key):
        SearchSettings.from_dict(bad, "sweep.yaml: search")
    assert SearchSettings.from_dict({"p99_tbt_s": 0.1}, "s").checks().keys() == {"goodput", "capacity"}
