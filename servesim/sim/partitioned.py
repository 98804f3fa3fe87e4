"""Two executors on disjoint SM partitions of one GPU (Nexus): one runs prefill batches, the
other decode batches, over one shared serving state and KV pool. Each iteration is timed at its
partition's SMs and slowed by what the other partition is running at its start (the cost
model's contention) and, with a clock model, by the heat the prompt lane has made
(`servesim.sim.power.LaneHeat`). The policy's controller re-splits the SMs every tick, when a
prefill batch ends (its requests join the decode batch) and before the next one starts; a new split takes
effect at each executor's next iteration (asynchronous, as the paper's switch). A prefill
partition that wakes and finds nothing to run does not ask (it wakes after every decode step;
the controller's ~0.1 ms of host time there delayed each decode step in servesim's runtime)."""

from __future__ import annotations

from typing import Any

from servesim.models.shapes import BatchShape, Corunner
from servesim.policies.base import Step
from servesim.policies.nexus import Nexus, Phase
from servesim.sim.executor import Executor, Proc
from servesim.sim.power import LaneHeat


class PhaseExecutor(Executor):
    """One partition: runs the policy's schedule for its phase only."""

    def __init__(self, *args: Any, phase: Phase, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = phase
        self.sibling: PhaseExecutor | None = None
        self.fast_forward = False
        self.splits: list[tuple[float, int]] | None = None
        """On the prefill partition once `controller` runs: (time, prefill SMs) of each split."""
        self.lanes: LaneHeat | None = None
        """The two partitions' heat (shared by both executors; None: priced rested)."""

    def corunner(self) -> Corunner | None:
        other = self.sibling
        if other is None or other.current is None or other.sms is None:
            return None
        return Corunner(other.current, other.sms)

    def heated(self, shape: BatchShape, seconds: float) -> float:
        """Slower by the two lanes' heat (none without a clock model)."""
        return self.lanes.stretch(shape, seconds, self.env.now) if self.lanes is not None else seconds

    def next_step(self) -> Step:
        policy = self.policy
        assert isinstance(policy, Nexus)
        step = policy.schedule_phase(self.state.view(self.env.now), self.phase)
        if self.splits is not None and not step.is_empty:  # (the batch does not depend on the split)
            self.resplit()
        return step

    def after_step(self) -> None:
        if self.splits is not None:  # a prefill batch ended: the decode side's next step runs on the new split
            self.resplit()
        if self.sibling is not None:  # new decodes, or freed KV, for the other side
            self.sibling.notify()

    def resplit(self) -> None:
        """Ask the policy's controller for the prefill share (self is the prefill partition);
        apply it to both partitions and record it if it moved."""
        policy, decode = self.policy, self.sibling
        assert isinstance(policy, Nexus) and decode is not None and self.splits is not None
        assert self.sms is not None
        new = policy.split(self.state.view(self.env.now), self.sms)
        if new != self.sms:
            self.sms, decode.sms = new, policy.limits.num_sms - new
            self.splits.append((self.env.now, new))


def controller(env: Any, policy: Nexus, prefill: PhaseExecutor, decode: PhaseExecutor,
               splits: list[tuple[float, int]]) -> Proc:
    """Re-split the SMs every tick until every request is done (and, from now on, around each
    prefill batch: `PhaseExecutor`)."""
    assert prefill.sibling is decode
    prefill.splits = splits
    while prefill.state.num_done < prefill.num_requests:
        yield env.timeout(policy.params.tick_s)
        if prefill.state.num_done < prefill.num_requests:  # (a tick due after the run is not one)
            prefill.resplit()
