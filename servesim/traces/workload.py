"""The workload spec and `load_workload`, which turns it into the simulator's request table.

The request table (sorted by arrival, index 0..n-1) has exactly the columns of `COLUMNS`:
request_id (int64, arrival order), arrival_s (float64), num_prompt_tokens and
num_output_tokens (int64 >= 1), slo_class (str), priority (int64, lower = more important),
hash_ids (tuples of ints; empty unless the trace has prefix-block hashes).

Steps, in order: read the trace (or generate a synthetic one) -> classes -> jitter -> time
window [start_s, end_s) on the trace's clock (seconds after its first request) -> rebase to
the window start, or to the first kept request -> divide by rate_scale -> keep the first
max_requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from servesim.dictconfig import DictConfig
from servesim.errors import InputError
from servesim.traces.classes import ClassesConfig, assign_classes
from servesim.traces.readers import load_trace
from servesim.traces.synthetic import (
    LengthConfig,
    SyntheticConfig,
    arrival_times,
    clip_lengths,
    sample_lengths,
)

COLUMNS = ("request_id", "arrival_s", "num_prompt_tokens", "num_output_tokens", "slo_class",
           "priority", "hash_ids")
DEFAULT_TRACE = "azure_conv"
TraceFormat = Literal["azure", "mooncake", "burstgpt", "csv", "jsonl"]


@dataclass(frozen=True)
class WorkloadConfig(DictConfig):
    """Which requests arrive when: a real trace (default: the Azure conversation sample) or a
    synthetic process, then windowed, time-scaled, truncated and classed."""

    trace: str | None = field(default=None, metadata={
        "help": "trace file (relative to the config) or built-in sample azure_conv, azure_code, "
                "mooncake_conv; default azure_conv unless synthetic is set"})
    format: TraceFormat | None = field(default=None, metadata={
        "help": "azure | mooncake | burstgpt | csv | jsonl; default: from extension and header"})
    synthetic: SyntheticConfig | None = field(default=None, metadata={
        "help": "generate arrivals and lengths instead of reading a trace"})
    rate_scale: float = field(default=1.0, metadata={
        "help": "time compression: arrival_s is divided by it (2 = twice the request rate)"})
    start_s: float | None = field(default=None, metadata={
        "help": "window start, s after the trace's first request; arrivals count from here"})
    end_s: float | None = field(default=None, metadata={
        "help": "window end (exclusive), s after the trace's first request, before rate_scale"})
    duration_s: float | None = field(default=None, metadata={
        "help": "window length in trace seconds (instead of end_s), before rate_scale"})
    max_requests: int | None = field(default=None, metadata={
        "help": "keep only the first this many requests of the window"})
    classes: ClassesConfig | None = field(default=None, metadata={
        "help": "SLO/priority classes by rule, by fraction or per row; none = 'default'"})
    jitter_s: float = field(default=0.0, metadata={
        "help": "add a uniform [0, jitter_s) delay to each arrival, e.g. 3.0 for Mooncake's "
                "3-s quantised timestamps"})

    def __post_init__(self) -> None:
        if not (self.rate_scale > 0 and math.isfinite(self.rate_scale)):
            raise InputError(f"rate_scale: must be > 0, got {self.rate_scale}")
        for key in ("start_s", "end_s", "duration_s", "jitter_s"):
            value = getattr(self, key)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{key}: must be a finite number >= 0, got {value}")
        if self.end_s is not None and self.duration_s is not None:
            raise InputError("duration_s: give end_s or duration_s, not both")
        if self.end_s is not None and self.end_s <= (self.start_s or 0.0):
            raise InputError(f"end_s: {self.end_s} is not after start_s {self.start_s or 0.0}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InputError("duration_s: must be > 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise InputError(f"max_requests: must be >= 1, got {self.max_requests}")
        if self.synthetic is not None and (self.trace is not None or self.format is not None):
            raise InputError("synthetic: give a trace or a synthetic workload, not both")

    @property
    def window_end_s(self) -> float | None:
        """The exclusive end of the time window on the trace's clock, if any."""
        if self.duration_s is not None:
            return (self.start_s or 0.0) + self.duration_s
        return self.end_s


def load_workload(spec: WorkloadConfig, rng: np.random.Generator,
                  base_dir: Path | None = None) -> pd.DataFrame:
    """The request table of `spec`; relative paths are taken from `base_dir`. All randomness
    comes from `rng`: the same seed gives an identical table."""
    table, where = _base_table(spec, rng, base_dir)
    names, priorities = assign_classes(table, spec.classes, rng, where)
    raw_s = table["arrival_s"].to_numpy(np.float64)
    trace_s = raw_s - raw_s[0]
    if spec.jitter_s > 0:
        trace_s = trace_s + rng.uniform(0.0, spec.jitter_s, size=len(trace_s))
    rows, arrival_s = _window(trace_s, spec, where)
    return pd.DataFrame({
        "request_id": np.arange(len(rows), dtype=np.int64),
        "arrival_s": arrival_s,
        "num_prompt_tokens": table["num_prompt_tokens"].to_numpy(np.int64)[rows],
        "num_output_tokens": table["num_output_tokens"].to_numpy(np.int64)[rows],
        "slo_class": pd.Series(names[rows], dtype=str),
        "priority": priorities[rows].astype(np.int64),
        "hash_ids": pd.Series(table["hash_ids"].to_numpy(object)[rows], dtype=object),
    }, columns=list(COLUMNS))


def _window(trace_s: np.ndarray, spec: WorkloadConfig,
            where: str) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers of the kept requests in arrival order, their arrival_s)."""
    order = np.argsort(trace_s, kind="stable")
    sorted_s = trace_s[order]
    start, end = spec.start_s or 0.0, spec.window_end_s
    inside = (sorted_s >= start) & (sorted_s < (math.inf if end is None else end))
    kept = np.flatnonzero(inside)[:spec.max_requests]
    if kept.size == 0:
        raise InputError(f"{where}: no request arrives in the window [{start:g}, {end}) s")
    origin = spec.start_s if spec.start_s is not None else sorted_s[kept[0]]
    return order[kept], (sorted_s[kept] - origin) / spec.rate_scale


def _base_table(spec: WorkloadConfig, rng: np.random.Generator,
                base_dir: Path | None) -> tuple[pd.DataFrame, str]:
    """The raw table (arrival_s on its own clock, token counts, hash_ids, extra columns)."""
    if spec.synthetic is None:
        trace = spec.trace or DEFAULT_TRACE
        return load_trace(trace, spec.format, base_dir), trace
    syn = spec.synthetic
    times = arrival_times(syn, rng, end_s=spec.window_end_s, count=spec.max_requests,
                          start_s=spec.start_s or 0.0)
    prompt, output = _synthetic_lengths(syn, len(times), rng, base_dir)
    table = pd.DataFrame({"arrival_s": times, "num_prompt_tokens": prompt,
                          "num_output_tokens": output})
    table["hash_ids"] = pd.Series([()] * len(table), dtype=object)
    return table, "synthetic workload"


def _synthetic_lengths(syn: SyntheticConfig, n: int, rng: np.random.Generator,
                       base_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths; when both resample the same trace, they are drawn as
    (prompt, output) pairs of its rows, which keeps their correlation."""
    picks: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}

    def draw(cfg: LengthConfig, column: str) -> np.ndarray:
        if cfg.dist != "trace":
            return sample_lengths(cfg, n, rng)
        assert cfg.trace is not None  # checked in LengthConfig
        if cfg.trace not in picks:
            source = load_trace(cfg.trace, None, base_dir)
            picks[cfg.trace] = (source, rng.integers(0, len(source), size=n))
        source, rows = picks[cfg.trace]
        return clip_lengths(source[column].to_numpy()[rows], cfg)

    return draw(syn.prompt, "num_prompt_tokens"), draw(syn.output, "num_output_tokens")


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Count, duration, mean rate and token statistics of a request table (for the CLI)."""
    n = len(df)
    duration = float(df["arrival_s"].max() - df["arrival_s"].min()) if n else 0.0
    out: dict[str, Any] = {
        "count": n,
        "duration_s": duration,
        "mean_rate_rps": n / duration if duration > 0 else None,
    }
    for prefix, column in (("input", "num_prompt_tokens"), ("output", "num_output_tokens")):
        values = df[column]
        out[f"{prefix}_mean"] = float(values.mean()) if n else None
        out[f"{prefix}_p50"] = float(values.quantile(0.5)) if n else None
        out[f"{prefix}_p99"] = float(values.quantile(0.99)) if n else None
        out[f"{prefix}_max"] = int(values.max()) if n else None
    out["classes"] = {str(k): int(v) for k, v in df["slo_class"].value_counts(sort=False).items()}
    return out
