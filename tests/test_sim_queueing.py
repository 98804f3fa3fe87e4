"""Closed forms from queueing theory. With batch size 1 and one output token per request, the
engine is a single-server FCFS queue: each request is one prefill iteration whose length is the
service time. Pollaczek-Khinchine gives the mean wait of M/G/1 exactly:
Wq = lambda E[S^2] / (2 (1 - rho)); M/D/1 and M/M/1 are its special cases."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import limits, requests, run

from servesim.policies import REGISTRY
from servesim.sim.cost_model import ConstantCostModel

N, WARMUP, BATCHES = 20_000, 2_000, 20


def _mg1_ttft(seed: int, rate: float, prompts: np.ndarray, s_per_token: float, fixed_s: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, N))
    reqs = requests([(float(a), int(p), 1) for a, p in zip(arrivals, prompts, strict=True)])
    cost = ConstantCostModel(fixed_s=fixed_s, per_prefill_token_s=s_per_token)
    res = run("sarathi", reqs, cost, token_budget=10**6, max_num_seqs=1)
    ttft = np.array([r.first_token_s - r.arrival_s for r in res.requests])
    return ttft[WARMUP:]


def _check(samples: list[np.ndarray], expected: float) -> None:
    # Batch means per seed give a standard error that respects autocorrelation.
    means = np.concatenate([s.reshape(BATCHES, -1).mean(axis=1) for s in samples])
    se = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - expected) < 4 * se, (means.mean(), expected, se)
    assert abs(means.mean() - expected) < 0.1 * expected


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_sojourn(rho: float) -> None:
    d = 0.2  # deterministic service: one fixed-cost iteration
    prompts = np.ones(N, dtype=int)
    samples = [_mg1_ttft(seed, rho / d, prompts, 0.0, d) for seed in range(3)]
    _check(samples, d + rho * d / (2 * (1 - rho)))


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_mm1_mean_sojourn(rho: float) -> None:
    # Geometric prompt lengths (mean 200 tokens) at 5 ms a token: service ~ Exp(mean 1 s).
    s, p = 0.005, 1 / 200
    samples = []
    for seed in range(3):
        prompts = np.random.default_rng(100 + seed).geometric(p, N)
        samples.append(_mg1_ttft(seed, rho, prompts, s, 0.0))
    mean_s = s / p
    second = s**2 * (2 - p) / p**2  # E[S^2] of s * Geometric(p)
    expected = mean_s + rho * second / (2 * (1 - rho) * mean_s)
    _check(samples, expected)
    assert expected == pytest.approx(1 / (1 / mean_s - rho / mean_s), rel=0.01)  # ~ M/M/1


@pytest.mark.parametrize("policy", sorted(REGISTRY))
def test_littles_law(policy: str) -> None:
    """Time-average number in system over a window = arrival rate x mean time in system."""
    rng = np.random.default_rng(7)
    n = 3000
    arrivals = np.cumsum(rng.exponential(0.05, n))
    specs = [(float(a), int(p), int(o)) for a, p, o in
             zip(arrivals, rng.integers(16, 512, n), rng.integers(1, 64, n), strict=True)]
    cost = ConstantCostModel(fixed_s=0.004, per_prefill_token_s=2e-5, per_decode_s=2e-5)
    # Orca reserves max_model_len per request: give it a short one and a larger batch cap.
    orca = policy == "orca"
    res = run(policy, requests(specs), cost, lim=limits(max_model_len=1024) if orca else None,
              **({"max_num_seqs": 64} if orca else {}))
    t0, t1 = arrivals[n // 10], arrivals[-n // 10]
    grid = np.linspace(t0, t1, 5_001)
    arr = np.array([r.arrival_s for r in res.requests])
    fin = np.array([r.finish_s for r in res.requests])
    in_system = (arr[None, :] <= grid[:, None]) & (fin[None, :] > grid[:, None])
    big_l = in_system.sum(axis=1).mean()
    window = (arr >= t0) & (arr < t1)
    lam = window.sum() / (t1 - t0)
    w = (fin - arr)[window].mean()
    assert big_l == pytest.approx(lam * w, rel=0.05)
