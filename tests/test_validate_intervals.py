"""The validation report's 95 % intervals of each error, from the requests drawn again."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servesim.validate import error_intervals, report_markdown, with_intervals


def _run(ttft_s: np.ndarray, tokens: np.ndarray, gap_s: float) -> tuple[pd.DataFrame, np.ndarray]:
    """A request table and its pooled token gaps (tokens - 1 gaps of gap_s per request)."""
    table = pd.DataFrame({"request_id": np.arange(len(ttft_s)), "status": "completed",
                          "num_generated_tokens": tokens, "ttft_s": ttft_s,
                          "tpot_s": np.full(len(ttft_s), gap_s), "e2el_s": ttft_s + (tokens - 1) * gap_s})
    gaps = np.concatenate([np.full(n - 1, gap_s) * (1 + 0.01 * (i % 7)) for i, n in enumerate(tokens)])
    return table, gaps


def _requests(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.lognormal(-4, 0.8, n), rng.integers(2, 40, n)


def test_the_same_run_on_both_sides_has_no_error_in_any_draw() -> None:
    ttft, tokens = _requests()
    table, gaps = _run(ttft, tokens, 0.006)
    intervals = error_intervals(table, table.copy(), gaps, gaps.copy(), draws=200)
    assert {"median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "mean_itl_ms", "p90_e2el_ms"} <= set(intervals)
    assert all(lo == hi == 0.0 for lo, hi in intervals.values())


def test_a_uniform_bias_gives_a_narrow_interval_around_it() -> None:
    ttft, tokens = _requests()
    measured, gaps = _run(ttft, tokens, 0.006)
    predicted, slow = _run(ttft * 1.08, tokens, 0.006 * 1.08)
    intervals = error_intervals(measured, predicted, gaps, slow, draws=200)
    for lo, hi in intervals.values():
        assert lo == pytest.approx(0.08, abs=1e-9) and hi == pytest.approx(0.08, abs=1e-9)


def test_a_few_requests_far_off_widen_the_tail_and_the_draws_are_seeded() -> None:
    """Three of 60 requests predicted 3x slower: the p99 TTFT error swings with whether they are
    drawn, the median's interval stays near zero; the same seed gives the same intervals."""
    ttft, tokens = _requests()
    measured, gaps = _run(ttft, tokens, 0.006)
    worst = np.argsort(ttft)[-3:]
    off = ttft.copy()
    off[worst] *= 3
    predicted, _ = _run(off, tokens, 0.006)
    intervals = error_intervals(measured, predicted, gaps, gaps, draws=300, seed=1)
    lo, hi = intervals["p99_ttft_ms"]
    assert lo < 0.5 < 1.0 < hi
    assert abs(intervals["median_ttft_ms"][0]) < 0.05 and abs(intervals["median_ttft_ms"][1]) < 0.05
    assert error_intervals(measured, predicted, gaps, gaps, draws=300, seed=1) == intervals
    assert error_intervals(measured, predicted, gaps, gaps, draws=300, seed=2) != intervals


def test_gaps_that_do_not_add_up_to_the_table_leave_the_itl_out() -> None:
    ttft, tokens = _requests()
    table, gaps = _run(ttft, tokens, 0.006)
    intervals = error_intervals(table, table.copy(), gaps[:-1], gaps, draws=50)
    assert "median_ttft_ms" in intervals and not any(k.endswith("_itl_ms") for k in intervals)


def test_the_report_shows_each_interval() -> None:
    rows = with_intervals({"median_ttft_ms": {"measured": 10.0, "predicted": 9.4, "rel_error": -0.06},
                           "request_throughput": {"measured": 2.0, "predicted": 2.0, "rel_error": 0.0}},
                          {"median_ttft_ms": [-0.139, 0.045]})
    text = report_markdown({"policy": "vllm", "model": "m", "device": "d", "cost_model": "profile",
                            "requests": 92, "kv_blocks": 1, "metrics": rows})
    assert "| median_ttft_ms | 10 | 9.4 | -6.0% | -13.9% .. +4.5% |" in text
    assert "| request_throughput | 2 | 2 | +0.0% |  |" in text
