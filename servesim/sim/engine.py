"""The simulation: arrivals feed a serving state that an executor drains under a policy.

`simulate` returns records only (no files, no plots); `sim.metrics` turns them into tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import simpy

from servesim.models.arch import ModelArch
from servesim.policies.base import EngineLimits, Policy, Predictor
from servesim.policies.nexus import Nexus
from servesim.request import Request, State
from servesim.sim.cost_model import CostModel
from servesim.sim.executor import Executor, Proc, delay_until
from servesim.sim.op_executor import OperatorExecutor
from servesim.sim.partitioned import PhaseExecutor, controller
from servesim.sim.power import LaneHeat, PowerModel, PowerState
from servesim.sim.state import ServingState, SimResult, admission_reject_reason


def _arrivals(
    env: simpy.Environment, requests: Sequence[Request], state: ServingState,
    executors: Sequence[Executor],
) -> Proc:
    for req in requests:
        state.next_arrival_s = req.arrival_s
        if req.arrival_s > env.now:
            yield env.timeout(delay_until(env.now, req.arrival_s))
        reason = admission_reject_reason(req, state.limits)
        if reason is None:
            state.arrive(req, env.now)
        else:
            state.reject(req, reason, env.now)
        for executor in executors:
            executor.notify()
    state.next_arrival_s = float("inf")


def simulate(
    requests: Sequence[Request], policy: Policy, cost_model: CostModel, limits: EngineLimits,
    fast_forward: bool = True, arch: ModelArch | None = None, power: PowerModel | None = None,
    predictor: Predictor | None = None,
) -> SimResult:
    """Replay `requests` (sorted by arrival) under `policy` until each one finished or was
    rejected. `fast_forward=False` steps every iteration as its own event (for checking).
    `power` (with `arch`): the GPU's clock slows after compute-dense passes (servesim.sim.power;
    on SM partitions, its `LaneHeat`). `predictor`: what the policy believes a step costs, where
    that is not `cost_model` (a measured engine's controller that served with other constants)."""
    env = simpy.Environment()
    state = ServingState(limits)
    policy.predict = predictor if predictor is not None else cost_model.step_time
    if power is not None and arch is None:
        raise ValueError("simulate: a power model needs the model's arch (its matmul FLOPs per row)")
    heat = PowerState(power, arch) if power is not None and arch is not None else None
    executors, extra = _executors(env, state, policy, cost_model, len(requests), arch, heat)
    for executor in executors:
        executor.fast_forward &= fast_forward
    env.process(_arrivals(env, requests, state, executors))
    for executor in executors:
        env.process(executor.run())
    env.run()
    lost = [r.request_id for r in requests if r.state not in (State.FINISHED, State.REJECTED)]
    if lost:
        raise RuntimeError(f"simulation ended with {len(lost)} unfinished requests: {lost[:5]}")
    if state.kv.used_blocks:
        raise RuntimeError(f"simulation ended with {state.kv.used_blocks} KV blocks still held")
    for executor in executors:
        if isinstance(executor, OperatorExecutor):
            extra.update(executor.blocking_summary())
    end = env.now
    if policy.granularity == "partitioned":
        # Nexus's controller still has a tick pending when the last request is done, and SimPy
        # runs it: the run ends with its last pass or arrival, as the runtime's does.
        end = max(max(state.log.end_s, default=0.0), max((r.arrival_s for r in requests), default=0.0))
    return SimResult(list(requests), state.log, state.events, limits, state.kv.peak_used_blocks,
                     end, extra)


def _executors(
    env: simpy.Environment, state: ServingState, policy: Policy, cost_model: CostModel,
    num_requests: int, arch: ModelArch | None, power: PowerState | None = None,
) -> tuple[list[Executor], dict[str, Any]]:
    """The executors a policy's granularity needs, and a dict they report extras into."""
    extra: dict[str, Any] = {}
    if policy.granularity == "operator":
        return [OperatorExecutor(env, state, policy, cost_model, num_requests, arch=arch, power=power)], extra
    if policy.granularity != "partitioned":
        return [Executor(env, state, policy, cost_model, num_requests, arch=arch, power=power)], extra
    assert isinstance(policy, Nexus)
    prefill_sms = policy.initial_split()
    prefill = PhaseExecutor(env, state, policy, cost_model, num_requests, sms=prefill_sms,
                            partition=0, arch=arch, phase="prefill")
    decode = PhaseExecutor(env, state, policy, cost_model, num_requests,
                           sms=policy.limits.num_sms - prefill_sms, partition=1, arch=arch,
                           phase="decode")
    prefill.sibling, decode.sibling = decode, prefill
    if power is not None and arch is not None and power.model.lane_rise_s > 0.0:
        prefill.lanes = decode.lanes = LaneHeat(power.model, arch)
    splits: list[tuple[float, int]] = [(0.0, prefill_sms)]
    extra["sm_splits"] = splits
    env.process(controller(env, policy, prefill, decode, splits))
    return [prefill, decode], extra
