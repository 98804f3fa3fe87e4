"""A simulated GPU that carries out a policy's steps, one iteration at a time.

Each iteration: ask the policy, apply its preemptions, allocate KV, advance simulated time by the
cost model's iteration time, then emit tokens. Subclasses change only how a step's time passes
(operator by operator with preemption points; on an SM partition next to another executor).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import simpy

from servesim.models.arch import ModelArch
from servesim.models.ops import expert_bytes_read
from servesim.models.shapes import BatchShape, Corunner
from servesim.policies.base import Policy, Step
from servesim.sim.cost_model import CostModel
from servesim.sim.power import PowerState
from servesim.sim.state import ServingState

Proc = Generator[simpy.Event, Any, None]


def delay_until(now_s: float, at_s: float) -> float:
    """The smallest delay d with now_s + d >= at_s in floating point (SimPy adds delays to now;
    an exact sum may not exist), so nothing is ever seen before it arrived."""
    d = at_s - now_s
    while now_s + d < at_s:
        d = math.nextafter(d, math.inf)
    return d


class Executor:
    """One GPU (or one SM partition of it) running one policy over a shared serving state."""

    def __init__(
        self,
        env: simpy.Environment,
        state: ServingState,
        policy: Policy,
        cost_model: CostModel,
        num_requests: int,
        sms: int | None = None,
        partition: int = 0,
        arch: ModelArch | None = None,
        power: PowerState | None = None,
    ) -> None:
        self.env = env
        self.state = state
        self.policy = policy
        self.cost_model = cost_model
        self.num_requests = num_requests
        self.sms = sms
        self.partition = partition
        self.moe_arch = arch if arch is not None and arch.is_moe else None
        """Set for MoE models: the executor then counts the expert weight bytes it reads."""
        self.current: BatchShape | None = None
        self._idle: simpy.Event | None = None
        self.power = power
        """The GPU's clock state: each pass is stretched by the heat it starts at (None: a rested
        GPU throughout)."""
        self.fast_forward = policy.decode_steady_state and policy.granularity != "partitioned"
        """Advance runs of identical decode-only iterations in one event (see _decode_run)."""

    def notify(self) -> None:
        """Wake the executor if it is idle (a request arrived or state changed)."""
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def corunner(self) -> Corunner | None:
        return None

    def run(self) -> Proc:
        state, env = self.state, self.env
        while state.num_done < self.num_requests:
            step = self.next_step()
            state.apply_preemptions(step, env.now)
            if step.is_empty:
                if not state.running and state.waiting and not step.reject and not step.preempt:
                    # All KV is free and the policy still admits nothing: it never will.
                    state.reject(state.waiting[0], "unschedulable_under_policy_limits", env.now)
                    continue
                if step.reject or step.preempt:
                    continue
                self._idle = env.event()
                yield self._idle
                self._idle = None
                continue
            if self.fast_forward and self._is_steady(step):
                yield from self._decode_run(step)
                continue
            yield from self._one_step(step)
            self.after_step()

    def next_step(self) -> Step:
        return self.policy.schedule(self.state.view(self.env.now))

    def after_step(self) -> None:
        """Hook after each executed step (partitioned executors wake their sibling)."""

    def _is_steady(self, step: Step) -> bool:
        """A decode-only step of every running request with nothing waiting: under a policy with
        `decode_steady_state`, the same step repeats until an arrival, a finish or a KV shortage."""
        state = self.state
        return (
            not step.prefills and not state.waiting and not step.preempt
            and len(step.decodes) == len(state.running) and len(step.decodes) > 0
        )

    def _decode_run(self, step: Step) -> Proc:
        """Run k decode-only iterations as one event. k stops at the iteration during which the
        next request arrives, at the first finish, and before KV could run short, so the policy
        would have chosen exactly these iterations; the times and tokens are the ones the
        one-by-one loop produces (same additions, in the same order)."""
        state, env, bs = self.state, self.env, self.policy.limits.block_size
        decodes = step.decodes
        computed = [r.num_computed_tokens for r in decodes]
        ctx_sum = sum(computed) + len(decodes)
        ctx_max = max(computed) + 1
        max_k = min(r.num_output_tokens - r.num_generated_tokens for r in decodes)
        crossings = [0] * bs  # requests whose new token starts a block at iteration i: i % bs
        for c, r in zip(computed, decodes, strict=True):
            first = r.kv_blocks * bs - c  # iterations until its held blocks are full
            if first < bs:  # (reserved max_len KV is never outgrown within max_k)
                crossings[first] += 1
        free, n, t = state.kv.free_blocks, len(decodes), env.now
        start = t
        # A cost model may price this run's steps from the two numbers that change (same values).
        stepper = getattr(self.cost_model, "decode_stepper", None)
        price = stepper(n, n, self.sms) if stepper is not None and self.corunner() is None else None
        ends: list[float] = []
        used = state.kv.used_blocks
        shape = BatchShape(num_decodes=n)  # what the clock's response reads
        while len(ends) < max_k and t < state.next_arrival_s:
            new = crossings[len(ends) % bs]
            if new > free:
                break
            free -= new
            used += new
            if price is not None:
                seconds = price(ctx_sum, ctx_max)
            else:
                seconds = self.cost_model.step_time(BatchShape((), (), n, ctx_sum, ctx_max, n, None), self.sms, None)
            if self.power is not None:
                seconds = self.power.stretch(shape, seconds, t)
            begin_s, t = t, t + seconds
            ends.append(t)
            state.log.add(begin_s, t, 0, n, used, self.partition)
            ctx_sum += n
            ctx_max += 1
        if not ends:  # KV is short right now: let the policy decide one step
            yield from self._one_step(step)
            return
        yield env.timeout(delay_until(start, t))
        k = len(ends)
        if self.moe_arch is not None:
            per_iteration = expert_bytes_read(self.moe_arch, BatchShape(num_decodes=n))
            state.log.expert_bytes += k * per_iteration
        for r in decodes:  # allocate all before any finish frees, as the iterations did
            need = -(-(r.num_computed_tokens + k) // bs) - r.kv_blocks
            if need > 0:
                state.kv.allocate(need)
                r.kv_blocks += need
        for r in decodes:
            r.num_computed_tokens += k
            r.num_generated_tokens += k - 1
            r.token_times_s.extend(ends[:-1])
            state.emit(r, ends[-1])

    def _one_step(self, step: Step) -> Proc:
        start_s = self.env.now
        shape = self.current = self.begin(step, start_s)
        used = self.state.kv.used_blocks  # what the iteration holds while it runs
        done = yield from self.execute(step, shape)
        self.current = None
        if self.moe_arch is not None:
            self.state.log.expert_bytes += expert_bytes_read(self.moe_arch, shape)
        if done:
            self.complete(step, self.env.now)
        self.state.log.add(
            start_s, self.env.now, shape.num_prefill_tokens, shape.num_decodes, used, self.partition
        )

    def begin(self, step: Step, now_s: float) -> BatchShape:
        """Allocate KV for the step and describe it for the cost model."""
        return self.state.begin_step(self.policy, step, now_s)

    def execute(self, step: Step, shape: BatchShape) -> Generator[simpy.Event, Any, bool]:
        """Let the iteration's time pass (one event on the fast path); False if it was suspended
        before the end (operator-level preemption), so its tokens are not emitted yet."""
        yield self.env.timeout(self.heated(shape, self.cost_model.step_time(shape, self.sms, self.corunner())))
        return True

    def heated(self, shape: BatchShape, seconds: float) -> float:
        """A pass priced `seconds` on a rested GPU, starting now: slower by the GPU's heat."""
        return self.power.stretch(shape, seconds, self.env.now) if self.power is not None else seconds

    def complete(self, step: Step, now_s: float) -> None:
        """Advance every request in the step and emit the tokens it produced."""
        self.state.complete_step(self.policy, step, now_s)
