"""The serving state the executors mutate: waiting queue, running set, KV cache, records.

Policies see it only through `ServingView`; every change goes through the methods here, so the
bookkeeping rules (allocation, recompute preemption, token emission, completion) live in one
place for every executor.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from servesim.models.shapes import BatchShape
from servesim.policies.base import EngineLimits, Policy, ServingView, Step
from servesim.request import Request, State
from servesim.sim.kv_cache import KVCache


def admission_reject_reason(req: Request, limits: EngineLimits) -> str | None:
    """Why a request can never be served whatever the load, or None."""
    if req.total_tokens > limits.max_model_len:
        return "exceeds_max_model_len"
    if math.ceil(req.total_tokens / limits.block_size) > limits.total_blocks - limits.watermark_blocks:
        return "exceeds_kv_capacity"
    return None


def _priority_key(req: Request) -> tuple[float, int]:
    return (req.arrival_s, req.request_id)


class ServingState:
    """Everything one replica holds: queues, KV cache and what happened."""

    def __init__(self, limits: EngineLimits) -> None:
        self.limits = limits
        self.kv = KVCache(limits.total_blocks, limits.block_size)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_done = 0
        self.next_arrival_s = float("inf")
        self.last_arrival_s = -1.0
        """When the next request arrives (kept current by the arrival process)."""
        self.log = IterationLog()
        self.events: list[tuple[float, str, int]] = []
        """(time, what, request_id) for admit, preempt, finish and reject: rare events only."""

    def view(self, now_s: float) -> ServingView:
        return ServingView(now_s, self.waiting, self.running, self.kv.free_blocks, self.limits)

    def arrive(self, req: Request, now_s: float) -> None:
        req.state = State.WAITING
        self.last_arrival_s = now_s
        self.waiting.append(req)

    def reject(self, req: Request, reason: str, now_s: float = 0.0) -> None:
        self.events.append((now_s, "reject", req.request_id))
        if req.state is State.WAITING:
            self.waiting.remove(req)
        req.state, req.rejected_reason = State.REJECTED, reason
        self.num_done += 1

    def preempt(self, req: Request, now_s: float) -> None:
        """Recompute preemption: free the KV, re-queue at the front, redo prompt + output."""
        if req.state is not State.RUNNING:
            raise RuntimeError(f"policy preempted request {req.request_id} that is not running")
        self.events.append((now_s, "preempt", req.request_id))
        self.running.remove(req)
        self.kv.release(req.kv_blocks)
        req.kv_blocks = 0
        req.num_computed_tokens = 0
        req.prefill_layer = 0
        req.prefill_run, req.chunk_tokens, req.prefill_progress_s = -1, 0, 0.0
        req.prefill_target = req.num_prompt_tokens + req.num_generated_tokens
        req.num_preemptions += 1
        req.state = State.WAITING
        self.waiting.appendleft(req)

    def apply_preemptions(self, step: Step, now_s: float) -> None:
        for req in reversed(step.preempt):  # keep their priority order at the queue's front
            self.preempt(req, now_s)
        for req, reason in step.reject:
            self.reject(req, reason, now_s)

    def reserve(self, policy: Policy, req: Request, num_tokens: int, now_s: float) -> None:
        """Allocate the KV `req` needs for `num_tokens` more tokens; admit it if waiting."""
        self.kv.allocate(policy.blocks_needed(req, num_tokens))
        req.kv_blocks = policy.blocks_after(req, num_tokens)
        if req.state is State.WAITING:
            if self.waiting and self.waiting[0] is req:
                self.waiting.popleft()
            else:
                self.waiting.remove(req)
            req.state = State.RUNNING
            self.events.append((now_s, "admit", req.request_id))
            if req.first_scheduled_s is None:
                req.first_scheduled_s = now_s
            bisect.insort(self.running, req, key=_priority_key)

    def reserve_decode(self, policy: Policy, req: Request) -> None:
        """The fast path of `reserve` for a running request's decode step."""
        if policy.decode_blocks_needed(req):
            self.kv.allocate(1)
            req.kv_blocks += 1

    def begin_step(self, policy: Policy, step: Step, now_s: float) -> BatchShape:
        """Allocate KV for a step about to run and describe it (cost model, real runtime)."""
        full = step.prefill_layers is None or step.prefill_layers[1] >= policy.limits.num_layers
        tokens, prefixes, logits = [], [], 0
        for req, n in step.prefills:
            self.reserve(policy, req, n, now_s)
            tokens.append(n)
            prefixes.append(req.num_computed_tokens)
            if full and n == req.prefill_left:
                logits += 1
        ctx_sum = ctx_max = 0
        for req in step.decodes:
            self.reserve_decode(policy, req)
            ctx = req.num_computed_tokens + 1
            ctx_sum += ctx
            if ctx > ctx_max:
                ctx_max = ctx
        return BatchShape(
            tuple(tokens), tuple(prefixes), len(step.decodes), ctx_sum, ctx_max,
            logits + len(step.decodes), step.prefill_layers,
        )

    def complete_step(self, policy: Policy, step: Step, now_s: float) -> None:
        """Advance every request of a finished step and emit the tokens it produced."""
        layers = step.prefill_layers
        full = layers is None or layers[1] >= policy.limits.num_layers
        for req, n in step.prefills:
            if full:
                req.num_computed_tokens += n
                req.prefill_layer = 0
                if req.num_computed_tokens >= req.prefill_target:
                    self.emit(req, now_s)
            else:
                assert layers is not None
                req.prefill_layer = layers[1]
        emit = self.emit
        for req in step.decodes:
            req.num_computed_tokens += 1
            emit(req, now_s)

    def emit(self, req: Request, now_s: float) -> None:
        """One output token; the request finishes when it has all of them."""
        req.num_generated_tokens += 1
        req.token_times_s.append(now_s)
        if req.num_generated_tokens >= req.num_output_tokens:
            self.running.remove(req)
            self.kv.release(req.kv_blocks)
            req.kv_blocks = 0
            req.state, req.finish_s = State.FINISHED, now_s
            self.num_done += 1
            self.events.append((now_s, "finish", req.request_id))


class IterationLog:
    """One row per executed iteration, in compact arrays (a full trace has ~10^5-10^6 rows)."""

    def __init__(self) -> None:
        self.start_s = array("d")
        self.end_s = array("d")
        self.prefill_tokens = array("q")
        self.num_decodes = array("q")
        self.used_blocks = array("q")
        self.partition = array("b")
        self.expert_bytes = 0.0
        self.extrapolated = 0
        self.preempted_ops = 0

    def add(
        self, start_s: float, end_s: float, prefill: int, decodes: int, used: int, part: int = 0
    ) -> None:
        self.start_s.append(start_s)
        self.end_s.append(end_s)
        self.prefill_tokens.append(prefill)
        self.num_decodes.append(decodes)
        self.used_blocks.append(used)
        self.partition.append(part)


@dataclass
class SimResult:
    """What happened: every request's record and every iteration."""

    requests: list[Request]
    log: IterationLog
    events: list[tuple[float, str, int]]
    limits: EngineLimits
    peak_used_blocks: int
    end_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Executor-specific records: preemption blocking times, SM splits over time."""
