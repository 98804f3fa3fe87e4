"""Synthetic workloads: Poisson or Gamma arrivals (with a CV knob) and token-length draws.

Arrivals form a renewal process that starts with a request at t = 0: inter-arrival gaps are
exponential (Poisson) or Gamma with shape 1/cv^2 and mean 1/rate (cv = 1 is Poisson again,
cv > 1 is burstier). Lengths are fixed, uniform, lognormal, or sampled from a real trace, and
always land in [min, max]. Every draw comes from the Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from servesim.dictconfig import DictConfig
from servesim.errors import InputError

ArrivalKind = Literal["poisson", "gamma"]
LengthDist = Literal["fixed", "uniform", "lognormal", "trace"]


@dataclass(frozen=True)
class LengthConfig(DictConfig):
    """How one token count (prompt or output) of a synthetic request is drawn."""

    dist: LengthDist = field(default="fixed", metadata={
        "help": "fixed | uniform | lognormal | trace (resample a real trace's lengths)"})
    value: int = field(default=512, metadata={"help": "tokens, for dist: fixed"})
    min: int = field(default=1, metadata={"help": "smallest length; draws below are raised"})
    max: int | None = field(default=None, metadata={
        "help": "largest length; draws above are cut (required for uniform)"})
    mean: float | None = field(default=None, metadata={
        "help": "lognormal mean in tokens (give mean or median)"})
    median: float | None = field(default=None, metadata={
        "help": "lognormal median in tokens (give mean or median)"})
    sigma: float = field(default=1.0, metadata={"help": "lognormal sigma of log(tokens)"})
    trace: str | None = field(default=None, metadata={
        "help": "for dist: trace, a trace path or built-in sample name whose lengths are resampled"})

    def __post_init__(self) -> None:
        if self.value < 1 or self.min < 1:
            raise InputError(f"{'value' if self.value < 1 else 'min'}: must be >= 1 token")
        if self.max is not None and self.max < self.min:
            raise InputError(f"max: {self.max} is below min {self.min}")
        if self.dist == "uniform" and self.max is None:
            raise InputError("max: required for dist: uniform")
        if self.dist == "lognormal":
            _check_lognormal(self.mean, self.median, self.sigma)
        if self.dist == "trace" and not self.trace:
            raise InputError("trace: required for dist: trace (a path or a built-in sample)")


def _check_lognormal(mean: float | None, median: float | None, sigma: float) -> None:
    if (mean is None) == (median is None):
        raise InputError("mean: give exactly one of mean or median for dist: lognormal")
    center = mean if mean is not None else median
    if center is not None and not center > 0:
        raise InputError(f"{'mean' if mean is not None else 'median'}: must be > 0")
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise InputError(f"sigma: must be >= 0, got {sigma}")


@dataclass(frozen=True)
class SyntheticConfig(DictConfig):
    """A generated workload; its length comes from the workload's duration_s or max_requests."""

    arrival: ArrivalKind = field(default="poisson", metadata={
        "help": "poisson (exponential gaps) | gamma (gaps with coefficient of variation cv)"})
    rate_rps: float = field(default=1.0, metadata={"help": "mean arrival rate, requests/s"})
    cv: float = field(default=1.0, metadata={
        "help": "gamma only: std/mean of the gaps; 1 = Poisson, > 1 = bursty"})
    prompt: LengthConfig = field(default=LengthConfig(value=1024), metadata={
        "help": "prompt length distribution"})
    output: LengthConfig = field(default=LengthConfig(value=128), metadata={
        "help": "output length distribution"})

    def __post_init__(self) -> None:
        if not (self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            raise InputError(f"rate_rps: must be > 0, got {self.rate_rps}")
        if not (self.cv > 0 and math.isfinite(self.cv)):
            raise InputError(f"cv: must be > 0, got {self.cv}")
        if self.arrival == "poisson" and self.cv != 1.0:
            raise InputError(f"cv: {self.cv} needs arrival: gamma (Poisson arrivals have cv 1)")


def arrival_times(cfg: SyntheticConfig, rng: np.random.Generator, *,
                  end_s: float | None = None, count: int | None = None,
                  start_s: float = 0.0) -> np.ndarray:
    """Arrival seconds from 0.0, enough to reach `end_s` or `count` arrivals at or after
    `start_s`, whichever comes first; times at or past `end_s` are cut."""
    if end_s is None and count is None:
        raise InputError("a synthetic workload needs duration_s, end_s or max_requests")
    expected = (count or 0) + cfg.rate_rps * (end_s if end_s is not None else start_s)
    block = int(min(1_000_000, max(1024, 1.1 * expected)))
    times = np.zeros(1)
    while not _enough(times, end_s, count, start_s):
        times = np.concatenate([times, times[-1] + np.cumsum(_gaps(cfg, rng, block))])
    return times if end_s is None else times[times < end_s]


def _enough(times: np.ndarray, end_s: float | None, count: int | None, start_s: float) -> bool:
    if end_s is not None and times[-1] >= end_s:
        return True
    return count is not None and int(np.count_nonzero(times >= start_s)) >= count


def _gaps(cfg: SyntheticConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    if cfg.arrival == "poisson":
        return rng.exponential(1.0 / cfg.rate_rps, size=n)
    shape = 1.0 / cfg.cv**2
    return rng.gamma(shape, 1.0 / (cfg.rate_rps * shape), size=n)


def sample_lengths(cfg: LengthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` token counts (int64) from a fixed, uniform or lognormal distribution."""
    if cfg.dist == "fixed":
        return np.full(n, cfg.value, dtype=np.int64)
    if cfg.dist == "uniform":
        assert cfg.max is not None  # checked in LengthConfig
        return rng.integers(cfg.min, cfg.max, size=n, endpoint=True, dtype=np.int64)
    if cfg.dist == "lognormal":
        if cfg.median is not None:
            mu = math.log(cfg.median)
        else:
            assert cfg.mean is not None  # checked in LengthConfig
            mu = math.log(cfg.mean) - cfg.sigma**2 / 2  # E[X] = exp(mu + sigma^2 / 2)
        return clip_lengths(np.rint(rng.lognormal(mu, cfg.sigma, size=n)), cfg)
    raise InputError(f"dist: '{cfg.dist}' lengths are drawn from a trace, not here")


def clip_lengths(values: np.ndarray, cfg: LengthConfig) -> np.ndarray:
    """`values` moved into [cfg.min, cfg.max], as int64."""
    upper = float(2**53) if cfg.max is None else cfg.max  # 2**53: no cap, yet fits int64
    return np.clip(values, cfg.min, upper).astype(np.int64)
