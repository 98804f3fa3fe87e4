"""Nexus on the real GPU: prefill and decode batches run at the same time on two disjoint SM
partitions, each a green context with its own stream, from one driver split per prefill share
(`servesim.profiler.partitions`, as the profiler's contention tables were measured).

One host thread drives both partitions, as the simulator's two executors share one state: it
launches the two passes piece by piece in turn (a graph replay or an attention launch each),
notices a pass's end by polling the event recorded after it, and only then completes its step
and schedules that partition's next one. The policy's controller re-splits the SMs every
`tick_s`, when a prefill pass ends and before the next one starts (as the simulator's
`PhaseExecutor`: not when an idle prefill partition finds nothing to run); a new split takes
effect at each partition's next step, so for one step the old and the new partition may overlap
(as the paper's asynchronous switch).

Every split the controller can choose needs its own graphs, captured on its partitions' streams
with kernels sized for their SMs (`PartitionLanes`): a static split needs one set, an adaptive
controller the set of every 8-SM split it may visit (`Nexus.shares`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from servesim.errors import InputError
from servesim.policies.base import EngineLimits, Step
from servesim.policies.nexus import Nexus, Phase
from servesim.request import Request
from servesim.runtime.engine import Pass, Runtime, StepRecord
from servesim.runtime.model import Lane, RuntimeModel
from servesim.runtime.plan import build_plan
from servesim.runtime.warmup import compile_decode_splits, compile_logits
from servesim.sim.state import SimResult

PREFILL_AHEAD = 16
"""Pieces of a prefill pass launched ahead of its GPU. A long prefill's piece runs for
milliseconds, a decode piece for ~0.1 ms: launching all of a prefill pass at once would hold the
one host thread for ~3 ms while decode's queue runs dry, so prefill is fed at the pace of its
GPU: each turn of the host loop tops its queue up to this depth. (One piece per turn made a
short prefill host-bound: a prompt of <= 256 tokens beside decode on 48 SMs, 105 pieces at one
per ~0.26 ms turn, took 27 ms; topped up, 21 ms. Issue 7's Nexus runs.) Six pieces of a prompt
of <= 512 tokens hold ~1 ms of GPU work, less than one turn of the host that starts a decode
step (scheduling, inputs, the graph's issue: 0.7-1.2 ms at 8-32 decodes): at six, such prompts
ran 10-28 % over their price on 40 SMs and 10-14 % alone on 120 (ninth session), where the
simulator's lane never waits for its host; sixteen hold ~3 ms."""

DECODE_BURST = 8
"""Pieces of a decode pass launched per turn of the host loop. One per turn paid the loop's
own work (arrivals, the controller's clock, the other partition's slot) on every launch: 49 us
per launch beside a prefill and 69 us alone, against 36 us in the plain runtime, which made a
decode pass on 68 SMs issue-bound (issue 7's Nexus runs). Eight decode pieces (~0.3 ms of host
time) cannot starve a prefill queue PREFILL_AHEAD pieces of milliseconds deep."""

LOGIT_ROWS_PREFILL = 64
"""Logit rows compiled for on a prefill lane: one per prompt a batch completes."""

Lanes = dict[int, tuple[Lane, Lane]]
"""Prefill SMs of a split -> (its prefill lane, its decode lane)."""


class PartitionLanes:
    """Two lanes per split on disjoint green contexts (prefill: `p` SMs, decode: the rest),
    made once per split and kept: the decode-attention variants their SM counts pick are
    compiled, and (on a GPU, with `graphs`) the pieces of every layer are captured on each
    lane. The lanes of one phase share workspaces: a phase runs one pass at a time."""

    def __init__(self, model: RuntimeModel, limits: EngineLimits, graphs: bool = True) -> None:
        from servesim.profiler.partitions import Partitions

        self.model, self.limits, self.graphs = model, limits, graphs
        self.partitions = Partitions(model.device)
        if model.device.type != "cuda":  # the interpreter: partitions are SM counts only
            self.partitions.num_sms = limits.num_sms
        if self.partitions.num_sms != limits.num_sms:
            raise InputError(f"nexus: the config's GPU has {limits.num_sms} SMs, this one "
                             f"{self.partitions.num_sms}")
        if not self.partitions.disjoint:
            raise InputError(f"nexus: the runtime needs disjoint SM partitions (cuda-python's "
                             f"driver split); this machine offers '{self.partitions.method}'")
        self.lanes: Lanes = {}
        self._spaces: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        self._inputs: dict[int, Any] = {}
        """Full decode graphs' buffers, shared by the decode lanes as their workspaces are."""

    def get(self, splits: Iterable[int], prefill_rows: int, decode_rows: int,
            decode_graph_rows: int = 0, max_context: int = 0) -> Lanes:
        """The lanes of `splits`, ready for passes of up to prefill_rows / decode_rows rows; with
        graphs and decode_graph_rows, the decode lane also replays decode-only passes of up to
        that many sequences (contexts up to max_context) whole from one graph."""
        model, total = self.model, self.partitions.num_sms
        for p in splits:
            if p not in self.lanes:
                first, rest = self.partitions.pair(p)
                if rest is None or first.sms != p or first.sms + rest.sms != total:
                    got = f"{first.sms} + {rest.sms if rest else 0}"
                    raise InputError(f"nexus: a split of {p} prefill SMs gave partitions of {got} "
                                     f"SMs (prefill shares must be multiples of 8 below {total})")
                self.lanes[p] = (Lane(p, first.stream, self._spaces[0]),
                                 Lane(rest.sms, rest.stream, self._spaces[1], inputs=self._inputs))
                if model.device.type == "cuda":  # (the interpreter compiles nothing)
                    with _on(rest.stream):
                        compile_decode_splits(model, self.limits, rest.sms)
                        compile_logits(model, rest.sms, decode_rows)
                    with _on(first.stream):
                        compile_logits(model, first.sms, min(prefill_rows, LOGIT_ROWS_PREFILL))
            for lane, rows in zip(self.lanes[p], (prefill_rows, decode_rows), strict=True):
                model.share_workspaces(rows, lane)
                if self.graphs:
                    model.capture_graphs(rows, lane)
                    if lane is self.lanes[p][1] and decode_graph_rows:
                        model.capture_decode_graphs(min(decode_graph_rows, rows), max_context, lane)
                    torch.cuda.empty_cache()  # the eager runs' blocks, cached for this stream only
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return {p: self.lanes[p] for p in splits}


def _on(stream: Any) -> Any:
    """Make `stream` current (None: leave the current one)."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


@dataclass
class _Slot:
    """One partition's pass in flight (run is None: the partition is idle)."""

    phase: Phase
    index: int
    run: Pass | None = None
    lane: Lane | None = None
    step: Step | None = None
    record: int = -1
    """Index of its StepRecord in the runtime's steps."""
    used: int = 0
    launched: bool = False
    done: Any = None
    """The event recorded after its last launch (None on the CPU: done when launched)."""
    queued: list[Any] = field(default_factory=list)
    """Prefill: an event after each launched piece still running on the GPU."""
    slept_on: tuple[int, int] | None = None
    """(arrivals, completed steps) when its policy last had nothing for it: it sleeps until
    one of them moves, as the simulator's idle executor waits to be notified."""


class PartitionedRuntime(Runtime):
    """One GPU serving `requests` under Nexus: two partitions, one host thread."""

    def __init__(self, model: RuntimeModel, policy: Nexus, limits: EngineLimits, lanes: Lanes) -> None:
        super().__init__(model, policy, limits)
        self.nexus, self.lanes = policy, lanes
        self.prefill_sms = policy.initial_split()
        if self.prefill_sms not in lanes:
            raise InputError(f"nexus: no lanes for the initial split of {self.prefill_sms} prefill SMs")
        self.splits: list[tuple[float, int]] = [(0.0, self.prefill_sms)]
        """(time, prefill SMs) of each split, as the simulator's `sm_splits`."""
        self.slots = (_Slot("prefill", 0), _Slot("decode", 1))
        self.completed = 0
        """Steps completed so far (with arrivals, what wakes an idle partition)."""

    def _serve(self, requests: Sequence[Request]) -> SimResult:
        state, tick = self.state, self.nexus.params.tick_s
        pending = self.pending = list(requests)
        self._start_clock()
        next_tick = tick
        while state.num_done < len(pending):
            now = self.now()
            self._admit_arrivals(now)
            if now >= next_tick:  # the controller's period
                self._resplit(now)
                while next_tick <= now:
                    next_tick += tick
            moved = False
            for slot in self.slots:  # prefill first, in the simulator's executor order
                if slot.run is not None:
                    moved |= self._advance(slot)
                elif slot.slept_on != (self.next_arrival, self.completed):
                    moved |= self._start(slot)
            if not moved and all(slot.run is None for slot in self.slots):
                self._wait(self.now())
        for req in pending:
            self.blocks.sync(req)
        return SimResult(list(pending), state.log, state.events, self.limits,
                         state.kv.peak_used_blocks, self.now(), {"sm_splits": self.splits})

    def _resplit(self, now: float) -> None:
        """Ask the controller for the prefill share; it applies from each partition's next step."""
        new = self.nexus.split(self.state.view(now), self.prefill_sms)
        if new != self.prefill_sms:
            if new not in self.lanes:
                raise RuntimeError(f"nexus controller chose {new} prefill SMs: no graphs for it")
            self.prefill_sms = new
            self.splits.append((now, new))

    def _start(self, slot: _Slot) -> bool:
        """Schedule the partition's next step and start its pass; False if there is nothing
        to do."""
        state, policy = self.state, self.nexus
        now = self.now()
        step = policy.schedule_phase(state.view(now), slot.phase)
        if slot.phase == "prefill" and policy.params.adaptive and not step.is_empty:
            # (Not for an empty prefill batch: the idle partition wakes after every decode step,
            # and the controller's ~0.1 ms there held up the decode lane's next step.)
            self._resplit(now)
        scheduled = self.now()
        state.apply_preemptions(step, now)
        for req in step.preempt:
            self.blocks.sync(req)
        if step.is_empty:
            if (slot.phase == "prefill" and not state.running and state.waiting
                    and not step.reject and not step.preempt):
                state.reject(state.waiting[0], "unschedulable_under_policy_limits", now)
                return True
            if step.reject or step.preempt:
                self.completed += 1  # the state moved: both partitions look again
                return True
            slot.slept_on = (self.next_arrival, self.completed)
            return False
        lane = self.lanes[self.prefill_sms][slot.index]
        shape = self._begin(step, now)
        other = self.slots[1 - slot.index]
        with _on(lane.stream):
            plan = build_plan(step, self.blocks, self.limits.block_size, self.limits.num_layers,
                              self.model.arch.vocab_size, self.model.device)
            run = self.model.forward(plan, lane)
        slot.run, slot.lane, slot.step, slot.launched, slot.done = run, lane, step, False, None
        slot.used = state.kv.used_blocks
        slot.record = len(self.steps)
        corunner, corunner_sms = (other.record, other.lane.num_sms or 0) if other.run is not None \
            and other.lane is not None else (-1, 0)
        self.steps.append(StepRecord(now, self.now(), float("nan"), shape, lane.num_sms, slot.index,
                                     corunner, corunner_sms, scheduled))
        return True

    def _advance(self, slot: _Slot) -> bool:
        """Launch the pass's next piece, or see whether its GPU work has ended (then complete
        the step); False if it is still running on the GPU."""
        assert slot.run is not None and slot.lane is not None and slot.step is not None
        if not slot.launched:
            queued = slot.queued
            while queued and queued[0].query():
                queued.pop(0)
            if len(queued) >= PREFILL_AHEAD:  # deep enough: leave the host to decode
                return False
            cuda = self.model.device.type == "cuda"
            with _on(slot.lane.stream):
                for _ in range(PREFILL_AHEAD - len(queued) if slot.phase == "prefill" else DECODE_BURST):
                    try:
                        next(slot.run)
                    except StopIteration as stop:
                        stop.value.argmax(dim=-1)  # greedy sampling of the produced tokens
                        slot.launched = True
                        self.steps[slot.record].issued = self.now()
                        queued.clear()
                        if cuda:
                            slot.done = torch.cuda.Event()
                            slot.done.record()
                        return True
                    if slot.phase == "prefill" and cuda:
                        queued.append(torch.cuda.Event())
                        queued[-1].record()
            return True
        if slot.done is not None and not slot.done.query():
            return False
        end = self.now()
        step, record = slot.step, self.steps[slot.record]
        record.end = end
        self._complete(step, end)
        if slot.phase == "prefill" and self.nexus.params.adaptive:
            # Its requests now decode: re-split before the decode partition starts its next
            # step in this turn of the loop (the simulator re-splits at the same instant; a
            # split made on the next prefill batch came a step late, and a first decode after
            # an idle spell ran on the 12 SMs prefill had left, in 24 ms instead of 7).
            self._resplit(end)
        shape = record.shape
        self.state.log.add(record.start, end, shape.num_prefill_tokens, shape.num_decodes, slot.used,
                           slot.index)
        slot.run, slot.step = None, None
        self.completed += 1
        return True
