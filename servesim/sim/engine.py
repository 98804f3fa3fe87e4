"""The simulation: arrivals feed a serving state that an executor drains under a policy.

`simulate` returns records only (no files, no plots); `sim.metrics` turns them into tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import simpy

from servesim.policies.base import EngineLimits, Policy
from servesim.request import Request, State
from servesim.sim.cost_model import CostModel
from servesim.sim.executor import Executor, Proc, delay_until
from servesim.sim.state import IterationLog, ServingState


@dataclass
class SimResult:
    """What happened: every request's record and every iteration."""

    requests: list[Request]
    log: IterationLog
    events: list[tuple[float, str, int]]
    limits: EngineLimits
    peak_used_blocks: int
    end_s: float


def admission_reject_reason(req: Request, limits: EngineLimits) -> str | None:
    """Why a request can never be served whatever the load, or None."""
    if req.total_tokens > limits.max_model_len:
        return "exceeds_max_model_len"
    if math.ceil(req.total_tokens / limits.block_size) > limits.total_blocks - limits.watermark_blocks:
        return "exceeds_kv_capacity"
    return None


def _arrivals(
    env: simpy.Environment, requests: Sequence[Request], state: ServingState, executor: Executor
) -> Proc:
    for req in requests:
        state.next_arrival_s = req.arrival_s
        if req.arrival_s > env.now:
            yield env.timeout(delay_until(env.now, req.arrival_s))
        reason = admission_reject_reason(req, state.limits)
        if reason is None:
            state.arrive(req)
        else:
            state.reject(req, reason, env.now)
        executor.notify()
    state.next_arrival_s = float("inf")


def simulate(
    requests: Sequence[Request], policy: Policy, cost_model: CostModel, limits: EngineLimits,
    fast_forward: bool = True,
) -> SimResult:
    """Replay `requests` (sorted by arrival) under `policy` until each one finished or was
    rejected. `fast_forward=False` steps every iteration as its own event (for checking)."""
    env = simpy.Environment()
    state = ServingState(limits)
    executor = Executor(env, state, policy, cost_model, len(requests))
    executor.fast_forward &= fast_forward
    env.process(_arrivals(env, requests, state, executor))
    env.process(executor.run())
    env.run()
    lost = [r.request_id for r in requests if r.state not in (State.FINISHED, State.REJECTED)]
    if lost:
        raise RuntimeError(f"simulation ended with {len(lost)} unfinished requests: {lost[:5]}")
    if state.kv.used_blocks:
        raise RuntimeError(f"simulation ended with {state.kv.used_blocks} KV blocks still held")
    return SimResult(list(requests), state.log, state.events, limits, state.kv.peak_used_blocks, env.now)
