"""A simulated GPU that carries out a policy's steps, one iteration at a time.

Each iteration: ask the policy, apply its preemptions, allocate KV, advance simulated time by the
cost model's iteration time, then emit tokens. Subclasses change only how a step's time passes
(operator by operator with preemption points; on an SM partition next to another executor).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from servesim.models.shapes import BatchShape, Corunner
from servesim.policies.base import Policy, Step
from servesim.sim.cost_model import CostModel
from servesim.sim.state import ServingState

Proc = Generator[simpy.Event, Any, None]


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
    ) -> None:
        self.env = env
        self.state = state
        self.policy = policy
        self.cost_model = cost_model
        self.num_requests = num_requests
        self.sms = sms
        self.partition = partition
        self.current: BatchShape | None = None
        self._idle: simpy.Event | None = None

    def notify(self) -> None:
        """Wake the executor if it is idle (a request arrived or state changed)."""
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def corunner(self) -> Corunner | None:
        return None

    def run(self) -> Proc:
        state, env = self.state, self.env
        while state.num_done < self.num_requests:
            step = self.policy.schedule(state.view(env.now))
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
            start_s = env.now
            shape = self.begin(step, start_s)
            self.current = shape
            yield from self.execute(step, shape)
            self.current = None
            self.complete(step, env.now)
            state.log.add(
                start_s, env.now, shape.num_prefill_tokens, shape.num_decodes,
                state.kv.used_blocks, self.partition,
            )

    def begin(self, step: Step, now_s: float) -> BatchShape:
        """Allocate KV for the step and describe it for the cost model."""
        state, policy = self.state, self.policy
        full = step.prefill_layers is None or step.prefill_layers[1] >= policy.limits.num_layers
        tokens, prefixes, logits = [], [], 0
        for req, n in step.prefills:
            state.reserve(policy, req, n, now_s)
            tokens.append(n)
            prefixes.append(req.num_computed_tokens)
            if full and n == req.prefill_left:
                logits += 1
        ctx_sum = ctx_max = 0
        for req in step.decodes:
            state.reserve(policy, req, 1, now_s)
            ctx = req.num_computed_tokens + 1
            ctx_sum += ctx
            if ctx > ctx_max:
                ctx_max = ctx
        return BatchShape(
            tuple(tokens), tuple(prefixes), len(step.decodes), ctx_sum, ctx_max,
            logits + len(step.decodes), step.prefill_layers,
        )

    def execute(self, step: Step, shape: BatchShape) -> Proc:
        """Let the iteration's time pass (one event on the fast path)."""
        yield self.env.timeout(self.cost_model.step_time(shape, self.sms, self.corunner()))

    def complete(self, step: Step, now_s: float) -> None:
        """Advance every request in the step and emit the tokens it produced."""
        state = self.state
        layers = step.prefill_layers
        full = layers is None or layers[1] >= self.policy.limits.num_layers
        for req, n in step.prefills:
            if full:
                req.num_computed_tokens += n
                req.prefill_layer = 0
                if req.num_computed_tokens >= req.prefill_target:
                    state.emit(req, now_s)
            else:
                assert layers is not None
                req.prefill_layer = layers[1]
        for req in step.decodes:
            req.num_computed_tokens += 1
            state.emit(req, now_s)
