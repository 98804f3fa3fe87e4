"""Searching for the highest load a policy configuration sustains, by bisection on rate_scale.

Two criteria (shared/research/policies.md §1.3):
- goodput (DistServe): the highest request rate at which at least `attainment` (default 90 %)
  of requests meet all their SLOs (`slo_attainment` of the run summary);
- capacity (Sarathi-Serve): the highest rate at which P99 TBT (`p99_itl_ms`, every token gap
  of every request) is within the TBT SLO and the median scheduling delay is <= 2 s.

Both assume the criterion holds below some rate and fails above it. The search probes `lo`,
then `hi`, then bisects the bracket until (fail - pass) / pass <= `rel_tol`. The answer is the
highest rate that passed, with every rate tried and its verdict. Nothing here runs a
simulation: a search takes a callable rate_scale -> summary, so a fake can drive it in tests,
and `search_many` advances many searches in lock step so one round of probes can run in
parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from servesim.dictconfig import DictConfig
from servesim.errors import InputError

Summary = Mapping[str, Any]
Criterion = Callable[[Summary], bool]


@dataclass(frozen=True)
class SearchSettings(DictConfig):
    """What to search for, where to look (workload.rate_scale values) and when to stop."""

    criteria: tuple[Literal["goodput", "capacity"], ...] = ("goodput", "capacity")
    attainment: float = 0.9
    p99_tbt_s: float | None = None
    max_median_scheduling_delay_s: float = 2.0
    lo: float = 1.0
    hi: float = 32.0
    rel_tol: float = 0.05
    max_probes: int = 16

    def __post_init__(self) -> None:
        if not self.criteria:
            raise InputError("criteria: expected a non-empty list of goodput, capacity")
        if not 0 < self.attainment <= 1:
            raise InputError(f"attainment: must be in (0, 1], got {self.attainment}")
        if not 0 < self.lo < self.hi:
            raise InputError(f"lo, hi: need 0 < lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.rel_tol <= 0 or self.max_probes < 2:
            raise InputError("rel_tol, max_probes: need rel_tol > 0 and max_probes >= 2")
        if "capacity" in self.criteria and not (self.p99_tbt_s or 0) > 0:
            raise InputError("p99_tbt_s: capacity needs a positive TBT SLO in seconds")

    def checks(self) -> dict[str, Criterion]:
        out = {"goodput": goodput_criterion(self.attainment)}
        if self.p99_tbt_s:
            out["capacity"] = capacity_criterion(self.p99_tbt_s, self.max_median_scheduling_delay_s)
        return {name: out[name] for name in self.criteria}

    def threshold(self, criterion: str) -> str:
        """The criterion in words, for the results table."""
        if criterion == "goodput":
            return f"slo_attainment >= {self.attainment:g}"
        return (f"p99_itl_ms <= {1000 * (self.p99_tbt_s or 0):g} and median_scheduling_delay_ms"
                f" <= {1000 * self.max_median_scheduling_delay_s:g}")


@dataclass(frozen=True)
class Probe:
    rate_scale: float
    ok: bool


@dataclass(frozen=True)
class SearchResult:
    """`best` is the highest rate that passed (None: even `lo` failed); `first_fail` the lowest
    that failed (None: even `hi` passed, so the true answer is >= hi)."""

    best: float | None
    first_fail: float | None
    probes: tuple[Probe, ...]
    settings: SearchSettings

    @property
    def censored(self) -> str:
        if self.best is None:
            return "below_lo"
        return "above_hi" if self.first_fail is None else ""

    def rates_tried(self) -> str:
        """'4:ok 8:fail 6:ok ...' in the order probed."""
        return " ".join(f"{p.rate_scale:g}:{'ok' if p.ok else 'fail'}" for p in self.probes)


@dataclass
class Bisection:
    """One search as a state machine: ask `next_rate()`, run it, `record()` the verdict."""

    settings: SearchSettings
    probes: list[Probe] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        passed = [p.rate_scale for p in self.probes if p.ok]
        return max(passed) if passed else None

    @property
    def first_fail(self) -> float | None:
        failed = [p.rate_scale for p in self.probes if not p.ok]
        return min(failed) if failed else None

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the search is over."""
        s = self.settings
        if not self.probes:
            return s.lo
        if len(self.probes) >= s.max_probes:
            return None
        best, fail = self.best, self.first_fail
        if best is None:
            return None  # lo failed
        if len(self.probes) == 1:
            return s.hi
        if fail is None or (fail - best) / best <= s.rel_tol:
            return None
        return round((best + fail) / 2, 6)

    def record(self, rate_scale: float, ok: bool) -> None:
        self.probes.append(Probe(rate_scale, ok))

    def result(self) -> SearchResult:
        return SearchResult(self.best, self.first_fail, tuple(self.probes), self.settings)


def goodput_criterion(attainment: float = 0.9) -> Criterion:
    """DistServe: at least `attainment` of the requests meet all their SLOs."""
    return lambda s: float(s["slo_attainment"]) >= attainment


def capacity_criterion(p99_tbt_s: float, max_median_scheduling_delay_s: float = 2.0) -> Criterion:
    """Sarathi-Serve: P99 TBT within its SLO and median scheduling delay within the bound."""
    def ok(s: Summary) -> bool:
        return (float(s["p99_itl_ms"]) <= p99_tbt_s * 1000.0
                and float(s["median_scheduling_delay_ms"]) <= max_median_scheduling_delay_s * 1000.0)
    return ok


def search(evaluate: Callable[[float], Summary], criterion: Criterion,
           settings: SearchSettings = SearchSettings(criteria=("goodput",))) -> SearchResult:
    """Bisect one configuration; `evaluate(rate_scale)` returns a run summary."""
    state = Bisection(settings)
    while (rate := state.next_rate()) is not None:
        state.record(rate, criterion(evaluate(rate)))
    return state.result()


def search_many(
    criteria: Mapping[Hashable, Criterion],
    evaluate_round: Callable[[list[tuple[Hashable, float]]], Sequence[Summary]],
    settings: SearchSettings = SearchSettings(criteria=("goodput",)),
) -> dict[Hashable, SearchResult]:
    """One search per key of `criteria`, advanced together: each round asks `evaluate_round`
    for the summaries of every (key, rate_scale) still open, in the order given."""
    states = {key: Bisection(settings) for key in criteria}
    while True:
        wanted = [(k, r) for k, s in states.items() if (r := s.next_rate()) is not None]
        if not wanted:
            return {k: s.result() for k, s in states.items()}
        for (key, rate), summary in zip(wanted, evaluate_round(wanted), strict=True):
            states[key].record(rate, criteria[key](summary))
