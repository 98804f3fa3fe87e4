"""The real runtime: replays arrivals in wall-clock time on a GPU and steps the *same* policy
objects as the simulator, passing them the wall time as a value. Bookkeeping (admission, KV
block counts, recompute preemption, token emission) is the simulator's own `ServingState`, so
the only difference between a prediction and a measurement is time itself.

Iteration- and layer-level policies run each step as one forward pass. Operator-level policies
(FlowPrefill) run a prefill step block by block: after launching each attention or MLP block the
host waits only for the block before it (`RUN_AHEAD` blocks stay queued on the GPU) and asks the
policy whether to suspend before it launches the next one, so the host's launches and checks
overlap the GPU's work, as an engine with asynchronous scheduling issues them. A suspended pass
is a paused generator that resumes where it stopped, its KV and activations kept. With CUDA graphs captured
(`RuntimeModel.capture_graphs`) a pass replays its non-attention pieces, so the host launches
about four things per layer; a decode-only pass replays one graph of the whole pass
(`RuntimeModel.capture_decode_graphs`), so the GPU, not Python, sets the pace, as in production
engines.
SM-partitioned policies (Nexus) run in `servesim.runtime.partitioned`.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from servesim.errors import InputError
from servesim.models.shapes import BatchShape
from servesim.policies.base import EngineLimits, Policy, Step
from servesim.request import Request, State
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import RuntimeModel
from servesim.runtime.plan import build_plan
from servesim.sim.state import ServingState, SimResult, admission_reject_reason

Pass = Generator[str, str | None, torch.Tensor]

RUN_AHEAD = 1
"""Blocks of an operator-level pass queued on the GPU beyond the one the host waits for: the
host decides on block i+1 while block i runs, so a suspension takes effect one block after the
check that asked for it."""


@dataclass
class StepRecord:
    """One executed step. `start` is its scheduling point, `scheduled` when the policy had
    decided it; from `ready` (KV allocated, plan built, first launch next) to `end` the GPU
    works. On an SM partition: its SMs, its partition (0 prefill, 1 decode; -1 the whole GPU)
    and the step the other partition was running at `start` (an index into the runtime's
    steps, -1 if none) on `corunner_sms` SMs."""

    start: float
    ready: float
    end: float
    shape: BatchShape
    sms: int | None = None
    partition: int = -1
    corunner: int = -1
    corunner_sms: int = 0
    scheduled: float = float("nan")
    issued: float = float("nan")
    """When the host had launched the pass's last piece (it then waits for the GPU)."""
    allocated: float = float("nan")
    built: float = float("nan")
    """Between `scheduled` and `ready`: when the step's KV was allocated (the shared bookkeeping
    and the physical block tables) and when its inputs were built and on the device."""


def _jit_hooks() -> Any:
    """Triton's runtime knobs (None where this Triton has no compile hook)."""
    try:
        from triton import knobs
    except ImportError:
        return None
    return knobs.runtime if hasattr(knobs.runtime, "jit_cache_hook") else None


class Runtime:
    """One GPU serving `requests` under `policy` in real time."""

    def __init__(self, model: RuntimeModel, policy: Policy, limits: EngineLimits) -> None:
        if policy.granularity == "partitioned" and type(self) is Runtime:
            raise InputError(f"policy '{policy.name}': SM partitions run in PartitionedRuntime")
        self.model, self.policy, self.limits = model, policy, limits
        self.blocks = BlockTables(limits.total_blocks)
        self.state = ServingState(limits)
        self.suspended: dict[tuple[tuple[int, int], ...], Pass] = {}
        self.next_run_id = 0
        self.pending: list[Request] = []
        self.next_arrival = 0  # index into pending
        self.t0 = 0.0
        self.t0_epoch = 0.0
        """The wall-clock (epoch) time of t0, to place the clock samples among the steps."""
        self.gc_pauses: list[tuple[int, float]] = []
        self._gc_started = 0.0
        self.steps: list[StepRecord] = []
        self.jit_compiles: list[str] = []
        """Triton kernels compiled while serving (each a stall the warm-up should prevent)."""

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _start_clock(self) -> None:
        self.t0, self.t0_epoch = time.perf_counter(), time.time()

    def sync(self) -> float:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return self.now()

    def run(self, requests: Sequence[Request]) -> SimResult:
        """Serve `requests` in real time. Objects alive at the start (the model, torch, Triton)
        are frozen out of the garbage collector, as vLLM does at startup: a full collection over
        them costs tens of milliseconds, which would land inside a measured step."""
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._time_gc)
        hooks = _jit_hooks()
        previous = hooks.jit_cache_hook if hooks is not None else None
        if hooks is not None:
            hooks.jit_cache_hook = self._count_compile
        try:
            return self._serve(requests)
        finally:
            if hooks is not None:
                hooks.jit_cache_hook = previous
            gc.callbacks.remove(self._time_gc)
            gc.unfreeze()

    def _count_compile(self, *, repr: str = "", **_: Any) -> bool:  # noqa: A002 - Triton's name
        """Triton's hook before it compiles a kernel variant not yet in memory: a compile while
        serving stalls its step for ~0.5 s, so each one is recorded (the warm-up missed it)."""
        self.jit_compiles.append(repr.split("[", 1)[0] if repr else "?")
        return False  # go on compiling

    def _time_gc(self, phase: str, info: dict[str, int]) -> None:
        """Record each collection's pause (generation, seconds) while serving."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def _serve(self, requests: Sequence[Request]) -> SimResult:
        state = self.state
        pending = self.pending = list(requests)
        self._start_clock()
        while state.num_done < len(pending):
            now = self.now()
            self._admit_arrivals(now)
            step = self.policy.schedule(state.view(now))
            state.apply_preemptions(step, now)
            for req in step.preempt:
                self.blocks.sync(req)
                self._drop_suspended(req)
            if step.is_empty:
                if not state.running and state.waiting and not step.reject and not step.preempt:
                    state.reject(state.waiting[0], "unschedulable_under_policy_limits", now)
                elif not step.reject and not step.preempt:
                    self._wait(now)
                continue
            self._execute(step, now, self.now())
        for req in pending:
            self.blocks.sync(req)
        return SimResult(list(pending), state.log, state.events, self.limits,
                         state.kv.peak_used_blocks, self.now())

    def _admit_arrivals(self, now: float) -> None:
        pending = self.pending
        while self.next_arrival < len(pending) and pending[self.next_arrival].arrival_s <= now:
            req = pending[self.next_arrival]
            reason = admission_reject_reason(req, self.limits)
            if reason is None:
                self.state.arrive(req, req.arrival_s)
            else:
                self.state.reject(req, reason, req.arrival_s)
            self.next_arrival += 1

    def _wait(self, now: float) -> None:
        """Nothing to run: sleep until the next arrival (or briefly, if something is pending)."""
        i = self.next_arrival
        gap = self.pending[i].arrival_s - now if i < len(self.pending) else 0.0005
        time.sleep(min(max(gap, 0.0), 0.05))

    def _begin(self, step: Step, start: float) -> BatchShape:
        """Allocate the step's KV in the shared bookkeeping and behind it, physical blocks."""
        shape = self.state.begin_step(self.policy, step, start)
        for req in (*(r for r, _ in step.prefills), *step.decodes):
            self.blocks.sync(req)
        return shape

    def _complete(self, step: Step, end: float) -> None:
        """Advance the step's requests, emit their tokens, free the blocks of finished ones."""
        self.state.complete_step(self.policy, step, end)
        for req in (*(r for r, _ in step.prefills), *step.decodes):
            if req.state is State.FINISHED:
                self.blocks.sync(req)

    def _execute(self, step: Step, start: float, scheduled: float) -> None:
        state = self.state
        shape = self._begin(step, start)
        allocated = built = self.now()
        key = tuple((r.request_id, n) for r, n in step.prefills)
        run = self.suspended.pop(key, None) if key else None
        if run is None:
            plan = build_plan(step, self.blocks, self.limits.block_size, self.limits.num_layers,
                              self.model.arch.vocab_size, self.model.device)
            built = self.now()
            run = self.model.forward(plan)
            for req, n in step.prefills:  # the run's identity, as the simulator's executor sets it
                req.prefill_run, req.chunk_tokens, req.prefill_progress_s = self.next_run_id, n, 0.0
            self.next_run_id += 1
        used = state.kv.used_blocks
        ready = self.now()
        done = self._drive(run, step, key)
        issued = self.now()
        end = self.sync()
        self.steps.append(StepRecord(start, ready, end, shape, scheduled=scheduled, issued=issued,
                                     allocated=allocated, built=built))
        for req, _ in step.prefills:
            req.prefill_progress_s += end - start
        if done:
            for req, _ in step.prefills:
                req.prefill_run, req.chunk_tokens, req.prefill_progress_s = -1, 0, 0.0
            self._complete(step, end)
        state.log.add(start, end, shape.num_prefill_tokens, shape.num_decodes, used)

    def _drive(self, run: Pass, step: Step, key: Any) -> bool:
        """Run the pass to its end, or (operator-level policies) until the policy suspends it."""
        operator_level = self.policy.granularity == "operator" and bool(step.prefills)
        queued: deque[Any] = deque()
        since = self.now()
        while True:
            try:
                next(run)
            except StopIteration as stop:
                stop.value.argmax(dim=-1)  # greedy sampling of the produced tokens
                return True
            if not operator_level:
                continue
            queued.append(self._mark())
            if len(queued) > RUN_AHEAD:
                self._wait_for(queued.popleft())
            now = self.now()
            self._admit_arrivals(now)
            if self.policy.should_preempt(self.state.view(now), step, since):
                run.send("suspend")  # the pass keeps its rows while others use the buffers
                self.suspended[key] = run
                self.state.log.preempted_ops += 1
                return False
            since = now

    def _mark(self) -> Any:
        """An event after the work launched so far (None off the GPU, where work is synchronous)."""
        if self.model.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    @staticmethod
    def _wait_for(event: Any) -> None:
        if event is not None:
            event.synchronize()

    def _drop_suspended(self, req: Request) -> None:
        for key in [k for k in self.suspended if any(rid == req.request_id for rid, _ in k)]:
            del self.suspended[key]
