"""Operator-level execution (FlowPrefill): a prefill step runs block by block, where a block is
the span between two preemption points (one operator, an attention or MLP sub-layer, a layer,
or the whole chunk). At each point the policy may suspend the step; the requests keep their KV
and activations, and a later step with the same members resumes at the next block.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from servesim.models.shapes import BatchShape, OpCost
from servesim.policies.base import Step
from servesim.request import Request
from servesim.sim.executor import Executor
from servesim.sim.host_overhead import HostOverheadCostModel


@dataclass
class _Run:
    """A prefill step in progress: its blocks' durations and how many have run."""

    items: tuple[tuple[int, int], ...]
    blocks: list[float]
    next_block: int = 0
    seconds: float = field(init=False)
    """The whole pass's time on a rested GPU (its blocks' sum)."""

    def __post_init__(self) -> None:
        self.seconds = sum(self.blocks)


def preemption_groups(ops: tuple[OpCost, ...], granularity: str) -> list[list[OpCost]]:
    """The operators of each span between two preemption points. `sublayer` cuts before each
    layer's output projection and at each layer end (FlowPrefill's two points per layer; the
    runtime's attention block ends with the attention kernels, its MLP block starts with the
    output projection, one graph piece with the MLP)."""
    if granularity == "chunk" or not ops:
        return [list(ops)]
    groups: list[list[OpCost]] = []
    current: list[OpCost] = []
    layer = ops[0].layer
    for op in ops:
        if current and ((op.layer != layer and granularity != "operator")
                        or (granularity == "sublayer" and op.name == "o")):
            groups.append(current)
            current = []
        layer = op.layer
        current.append(op)
        if granularity == "operator":
            groups.append(current)
            current = []
    if current or not groups:
        groups.append(current)
    return groups


def graphed_group_launches(group: list[OpCost], num_layers: int, decode_kernels: int) -> int:
    """What the host issues for one span of a pass captured in graph pieces (two per layer,
    attention launched between them: `HostOverheadCostModel.graphed_launches`): a piece's
    replay if the span holds any other operator of a layer, the attention kernels (prefill
    chunks in one varlen kernel; decode attention `decode_kernels`); before the first layer the
    inputs' copies (5), after the last the final norm, row gather, LM head and sampling (4)."""
    if not group:
        return 0
    layer = group[0].layer
    if layer < 0:
        return 5
    if layer >= num_layers:
        return 4
    names = [op.name for op in group]
    attention = ("attn_prefill" in names) + decode_kernels * ("attn_decode" in names)
    after = names.index("o") if "o" in names else len(names)  # the second piece opens with it
    pieces = any(n not in ("attn_prefill", "attn_decode") for n in names[:after]) + (after < len(names))
    return attention + pieces


def paced_blocks(gpu: list[float], host: list[float], check: float) -> list[float]:
    """The blocks of an operator-level pass as the runtime drives them (one block queued on the
    GPU beyond the one the host waits for: `servesim.runtime.engine.RUN_AHEAD`): the host issues
    block k (`host[k]`, its launches), waits for block k-1 to end on the GPU, checks (`check`),
    then issues block k+1; the GPU runs block k (`gpu[k]`) once block k-1 is done and block k
    issued. Returns each block's share of the pass (its end less the one before's; the last
    one's also holds the host's last check where the host ends later), summing to the pass's
    time. The host's check and launches for block k+1 hide behind block k on the GPU where it
    runs longer (an attention block's kernel launches behind an MLP block's graph piece; the
    next MLP block's launch, after a short attention block, does not): in the H200 runs,
    FlowPrefill's prompts of at most 512 tokens took 8.95-13.95 ms from scheduled to first
    token, about as sarathi's did (8.99-14.32), where pricing each block as the longer of its
    GPU and host times had put them 1.2-1.35 ms over (now -0.1..+0.25 ms)."""
    host_t = gpu_done = 0.0  # the host's clock; the end of the last block issued on the GPU
    ends: list[float] = []
    for g, h in zip(gpu, host, strict=True):
        host_t += h  # block k issued
        done = max(gpu_done, host_t) + g
        host_t = max(host_t, gpu_done) + check  # wait for block k-1, then decide on k+1
        gpu_done = done
        ends.append(done)
    ends[-1] = max(ends[-1], host_t)
    return [end - before for end, before in zip(ends, [0.0, *ends[:-1]], strict=True)]


class OperatorExecutor(Executor):
    """An executor whose prefill steps can be suspended at operator boundaries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: dict[int, _Run] = {}
        self.next_run_id = 0
        self.blocking_s: list[float] = []
        """Per preemption: time from the event that caused it to the suspension."""
        self.granularity: str = getattr(self.policy.params, "preemption", "sublayer")
        self.switch_overhead_s: float = getattr(self.policy.params, "switch_overhead_s", 0.0)
        self.check_s: float = getattr(self.cost_model, "host_check_s", 0.0)
        self.check_per_seq_s: float = getattr(self.cost_model, "host_check_per_seq_s", 0.0)
        """Host time at each preemption point (the decision, and its scan of the running
        requests), from a host-overhead model."""

    def _run_for(self, step: Step, shape: BatchShape) -> _Run:
        items = tuple((r.request_id, n) for r, n in step.prefills)
        head = step.prefills[0][0]
        run = self.runs.get(head.prefill_run)
        if run is not None and run.items == items:
            return run
        for req, _ in step.prefills:  # a new run (or a changed one, which starts over)
            req.prefill_progress_s = 0.0
        run_id, self.next_run_id = self.next_run_id, self.next_run_id + 1
        run = self.runs[run_id] = _Run(items, self._blocks(shape))
        for req, n in step.prefills:
            req.prefill_run, req.chunk_tokens = run_id, n
        return run

    def _blocks(self, shape: BatchShape) -> list[float]:
        """Each block's time, from the end of the one before on the GPU to its own end
        (`paced_blocks`): its operators on the GPU (with the launch gaps of what it issues),
        fed by the host, which issues a block's launches, waits for the block before it and
        checks, so a block the host issues slower than the GPU ran the one before it waits for
        the host. The check's scan is priced for the requests running as the pass starts."""
        cost = self.cost_model
        gpu = getattr(cost, "inner", cost).batch_cost(shape, self.sms, self.corunner()).ops
        spans = [(sum(op.seconds for op in g), g) for g in preemption_groups(gpu, self.granularity)]
        groups = [g for seconds, g in spans if seconds > 0.0]
        blocks = [seconds for seconds, _ in spans if seconds > 0.0] or [0.0]
        check = self.check_s + self.check_per_seq_s * len(self.state.running)
        if not isinstance(cost, HostOverheadCostModel) or not groups:
            return paced_blocks(blocks, [0.0] * len(blocks), check)
        # The host's launches fall in the spans that issue them: the attention span of a
        # graphed layer issues a piece and the attention kernels, the MLP span one piece.
        if 0 < shape.num_tokens <= cost.graph_max_tokens:
            kernels = 1 + (cost.decode_splits(shape) > 1) if shape.num_decodes else 0
            counts = [graphed_group_launches(g, cost.arch.num_layers, kernels) for g in groups]
        else:
            counts = [len(g) for g in groups]
        scale = cost.launches(shape) / max(sum(counts), 1)  # the same total as step_time's
        gap = cost.gaps_s(shape) / max(sum(counts), 1)
        return paced_blocks([b + gap * n for b, n in zip(blocks, counts, strict=True)],
                            [n * scale * cost.host_launch_s for n in counts], check)

    def execute(self, step: Step, shape: BatchShape) -> Generator[simpy.Event, Any, bool]:
        if not step.prefills:
            return (yield from super().execute(step, shape))
        env, state = self.env, self.state
        run = self._run_for(step, shape)
        members = [r for r, _ in step.prefills]
        if isinstance(self.cost_model, HostOverheadCostModel):  # scheduling and inputs, GPU idle
            yield env.timeout(self.cost_model.step_host_s(shape))
        factor = None  # the heat this step starts at slows each of its blocks alike
        while run.next_block < len(run.blocks):
            started = env.now
            seconds = run.blocks[run.next_block]
            if self.power is not None:
                rested, seconds = seconds, self.power.stretch(shape, seconds, started, run.seconds, factor)
                if factor is None and rested > 0.0:
                    factor = seconds / rested
            yield env.timeout(seconds)
            run.next_block += 1
            for req in members:
                req.prefill_progress_s += seconds
            if self.policy.should_preempt(state.view(env.now), step, started):
                # Blocking: from the event to the point where the prefill yields (the end of
                # the step itself when it had no point left).
                trigger = state.last_arrival_s if state.last_arrival_s > started else started
                self.blocking_s.append(env.now - trigger)
                if run.next_block < len(run.blocks):
                    state.log.preempted_ops += 1
                    if self.switch_overhead_s:
                        yield env.timeout(self.switch_overhead_s)
                    return False
        del self.runs[members[0].prefill_run]
        _finish_run(members)
        return True

    def blocking_summary(self) -> dict[str, float]:
        b = np.asarray(self.blocking_s) * 1000.0
        if not len(b):
            return {"mean_preemption_blocking_ms": 0.0, "p99_preemption_blocking_ms": 0.0}
        return {"mean_preemption_blocking_ms": float(b.mean()),
                "p99_preemption_blocking_ms": float(np.percentile(b, 99))}


def _finish_run(members: list[Request]) -> None:
    for req in members:
        req.prefill_run, req.chunk_tokens, req.prefill_progress_s = -1, 0, 0.0
