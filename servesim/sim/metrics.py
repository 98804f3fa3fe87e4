"""Per-request records -> the request table and the summary (vLLM `bench serve` key names).

Definitions (shared/research/simulators.md §4.1): TTFT counts from arrival, queueing included;
TPOT = (E2E - TTFT) / (output tokens - 1) over requests with more than one output token; ITL
pools every gap between consecutive tokens of every request (vLLM's `itls`, Sarathi's TBT);
E2EL = last token - arrival. Statistics in milliseconds; `std` is the population std (np.std).
A request meets its SLOs when every target its class sets holds; rejected requests never do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from servesim.request import Request, State
from servesim.sim.state import SimResult

PERCENTILES = (90, 95, 99)


@dataclass(frozen=True)
class SloTarget:
    """Per-class latency targets in seconds; None = not part of the SLO."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    tbt_s: float | None = None
    e2el_s: float | None = None


def _token_gaps(requests: list[Request]) -> tuple[list[Request], np.ndarray, np.ndarray]:
    """(completed requests with >= 2 tokens, every gap of theirs pooled in order, the index of
    each one's first gap): one vectorised pass over all token times."""
    done = [r for r in requests if r.state is State.FINISHED and len(r.token_times_s) > 1]
    if not done:
        return done, np.zeros(0), np.zeros(0, dtype=np.int64)
    lengths = np.fromiter((len(r.token_times_s) for r in done), dtype=np.int64, count=len(done))
    flat = np.fromiter(chain.from_iterable(r.token_times_s for r in done), dtype=np.float64,
                       count=int(lengths.sum()))
    ends = np.cumsum(lengths)[:-1] - 1  # gaps that cross request borders
    starts = np.concatenate(([0], np.cumsum(lengths - 1)[:-1]))
    return done, np.delete(np.diff(flat), ends), starts


def request_table(
    requests: list[Request], slos: Mapping[str, SloTarget], default: SloTarget = SloTarget()
) -> pd.DataFrame:
    """One row per request, in request_id order; classes not in `slos` get `default`."""
    with_gaps, gaps, starts = _token_gaps(requests)
    max_gaps: dict[int, float] = {}
    if len(gaps):
        max_gaps = dict(zip(map(id, with_gaps), np.maximum.reduceat(gaps, starts).tolist(), strict=True))
    rows = []
    for r in sorted(requests, key=lambda r: r.request_id):
        done = r.state is State.FINISHED
        first = r.first_token_s if done else None
        ttft = first - r.arrival_s if first is not None else np.nan
        e2el = r.finish_s - r.arrival_s if done and r.finish_s is not None else np.nan
        n = r.num_generated_tokens
        tpot = (e2el - ttft) / (n - 1) if done and n > 1 else np.nan
        max_tbt = max_gaps.get(id(r), 0.0) if done else np.nan
        slo = slos.get(r.slo_class, default)
        ttft_ok = done and (slo.ttft_s is None or ttft <= slo.ttft_s)
        tpot_ok = done and (slo.tpot_s is None or n <= 1 or tpot <= slo.tpot_s)
        tbt_ok = done and (slo.tbt_s is None or max_tbt <= slo.tbt_s)
        e2el_ok = done and (slo.e2el_s is None or e2el <= slo.e2el_s)
        sched = r.first_scheduled_s - r.arrival_s if r.first_scheduled_s is not None else np.nan
        rows.append((
            r.request_id, r.slo_class, r.priority, r.arrival_s, r.first_scheduled_s, first,
            r.finish_s if done else None, r.num_prompt_tokens, r.num_output_tokens, n, ttft,
            tpot, e2el, max_tbt, sched, r.num_preemptions, "completed" if done else "rejected",
            r.rejected_reason, ttft_ok, tbt_ok and tpot_ok, ttft_ok and tpot_ok and tbt_ok and e2el_ok,
        ))
    cols = [
        "request_id", "slo_class", "priority", "arrival_s", "first_scheduled_s", "first_token_s",
        "finish_s", "num_prompt_tokens", "num_output_tokens", "num_generated_tokens", "ttft_s",
        "tpot_s", "e2el_s", "max_tbt_s", "scheduling_delay_s", "num_preemptions", "status",
        "rejected_reason", "ttft_met", "tbt_met", "slo_met",
    ]
    df = pd.DataFrame.from_records(rows, columns=cols)
    for c in ("first_scheduled_s", "first_token_s", "finish_s"):
        df[c] = df[c].astype("float64")
    return df


def pooled_itl_s(requests: list[Request]) -> np.ndarray:
    """Every inter-token gap of every completed request, in seconds."""
    return _token_gaps(requests)[1]


def _stats(prefix: str, values_s: np.ndarray, out: dict[str, Any]) -> None:
    v = values_s[~np.isnan(values_s)] * 1000.0 if len(values_s) else values_s
    has = len(v) > 0
    out[f"mean_{prefix}_ms"] = float(np.mean(v)) if has else 0.0
    out[f"median_{prefix}_ms"] = float(np.median(v)) if has else 0.0
    out[f"std_{prefix}_ms"] = float(np.std(v)) if has else 0.0
    for p in PERCENTILES:
        out[f"p{p}_{prefix}_ms"] = float(np.percentile(v, p)) if has else 0.0


def summarize(result: SimResult, table: pd.DataFrame) -> dict[str, Any]:
    """The run's summary: vLLM bench keys first, then servesim's own."""
    done = table[table.status == "completed"]
    duration = max(result.end_s, 1e-12)
    out: dict[str, Any] = {
        "duration": result.end_s,
        "completed": int(len(done)),
        "failed": int(len(table) - len(done)),
        "total_input_tokens": int(done.num_prompt_tokens.sum()),
        "total_output_tokens": int(done.num_generated_tokens.sum()),
        "request_throughput": len(done) / duration,
        "request_goodput": int(table.slo_met.sum()) / duration,
        "output_throughput": int(done.num_generated_tokens.sum()) / duration,
        "total_token_throughput": int(done.num_prompt_tokens.sum() + done.num_generated_tokens.sum()) / duration,
    }
    itl = pooled_itl_s(result.requests)
    for name, values in (("ttft", done.ttft_s), ("tpot", done.tpot_s), ("itl", itl), ("e2el", done.e2el_s)):
        _stats(name, np.asarray(values, dtype=np.float64), out)
    _stats("scheduling_delay", np.asarray(done.scheduling_delay_s, dtype=np.float64), out)
    out.update(_servesim_block(result, table, done, itl))
    return out


def _servesim_block(
    result: SimResult, table: pd.DataFrame, done: pd.DataFrame, itl: np.ndarray
) -> dict[str, Any]:
    log = result.log
    busy = float(np.sum(np.asarray(log.end_s) - np.asarray(log.start_s)))
    per_class = {}
    for cls, g in table.groupby("slo_class", sort=True, observed=True):
        per_class[str(cls)] = {
            "requests": int(len(g)),
            "slo_attainment": float(g.slo_met.mean()),
            "ttft_attainment": float(g.ttft_met.mean()),
            "tbt_attainment": float(g.tbt_met.mean()),
            "p99_ttft_ms": float(np.nanpercentile(g.ttft_s * 1000, 99)) if g.ttft_s.notna().any() else 0.0,
        }
    return {
        "num_requests": int(len(table)),
        "rejected": int(len(table) - len(done)),
        "rejected_by_reason": dict(sorted(Counter(table.rejected_reason[table.status == "rejected"]).items())),
        "slo_attainment": float(table.slo_met.mean()) if len(table) else 0.0,
        "slo_attainment_by_class": per_class,
        "max_itl_ms": float(itl.max() * 1000) if len(itl) else 0.0,
        "mean_normalized_latency_s_per_token": float((done.e2el_s / done.num_generated_tokens).mean()) if len(done) else 0.0,
        "preemptions": int(table.num_preemptions.sum()),
        "num_iterations": len(log.start_s),
        "gpu_busy_fraction": busy / max(result.end_s, 1e-12),
        "kv_total_blocks": result.limits.total_blocks,
        "kv_peak_usage": result.peak_used_blocks / result.limits.total_blocks,
        "kv_mean_usage": float(np.mean(log.used_blocks)) / result.limits.total_blocks if len(log.used_blocks) else 0.0,
        "expert_bytes_read": log.expert_bytes,
        "cost_model_extrapolations": log.extrapolated,
        "operator_preemptions": log.preempted_ops,
        **_extra(result),
    }


def _extra(result: SimResult) -> dict[str, Any]:
    """Executor-specific numbers: preemption blocking (operator level), SM splits (Nexus)."""
    out = {k: v for k, v in result.extra.items() if isinstance(v, int | float)}
    splits = result.extra.get("sm_splits")
    if splits:
        times = [t for t, _ in splits] + [result.end_s]
        shares = [sms for _, sms in splits]
        weighted = sum(sms * (b - a) for sms, a, b in zip(shares, times, times[1:], strict=False))
        out["repartitions"] = len(splits) - 1
        out["mean_prefill_sms"] = weighted / max(result.end_s, 1e-12)
    return out
