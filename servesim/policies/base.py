"""What every scheduling policy is: pure decision logic over a read-only view of the serving state.

A policy never calls SimPy, never reads a clock and never touches a GPU. The simulator's
executor and the real runtime both call `schedule(view)` and carry out the `Step` it returns:
first the preemptions (recompute: the victim frees its KV and goes back to the front of the
waiting queue), then the batch. KV blocks are allocated by the executor with the policy's own
`blocks_needed` rule, so the policy's arithmetic and the executor's always agree.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from servesim.models.shapes import BatchShape
from servesim.request import Request

KvMode = Literal["prompt", "incremental", "max_len"]
Predictor = Callable[[BatchShape, int | None], float]
Granularity = Literal["iteration", "layer", "operator", "partitioned"]


def knob(default: Any, help: str) -> Any:
    """A policy or config field with its one-line help."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Fixed facts of the engine a policy may plan with."""

    block_size: int
    total_blocks: int
    watermark_blocks: int
    max_model_len: int
    num_layers: int
    num_sms: int = 132


@dataclass(frozen=True, slots=True)
class ServingView:
    """Read-only state at a scheduling point. `waiting` is front-first (recompute victims were
    put at the front); `running` holds admitted requests in arrival order (FCFS priority, as vLLM
    sorts them before every step)."""

    now_s: float
    waiting: Sequence[Request]
    running: Sequence[Request]
    free_blocks: int
    limits: EngineLimits


@dataclass(slots=True)
class Step:
    """A policy's decision for one iteration."""

    prefills: list[tuple[Request, int]] = field(default_factory=list)
    """(request, prompt tokens this step), in batch order."""
    decodes: list[Request] = field(default_factory=list)
    preempt: list[Request] = field(default_factory=list)
    """Running requests to preempt by recompute before the batch runs, most important first."""
    reject: list[tuple[Request, str]] = field(default_factory=list)
    """Waiting requests this policy can never serve, with the reason."""
    prefill_layers: tuple[int, int] | None = None
    """Layered prefill: [start, end) layers the prefill chunks pass through; None = all."""

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.prefills) + len(self.decodes)


@dataclass(frozen=True)
class PolicyParams:
    """Base of every policy's knobs (a frozen dataclass; validate in __post_init__)."""


class Policy(ABC):
    """Subclass, set `name`, `Params` and `kv_mode`, and implement `schedule`."""

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]] = PolicyParams
    kv_mode: ClassVar[KvMode] = "prompt"
    granularity: ClassVar[Granularity] = "iteration"
    decode_steady_state: ClassVar[bool] = True
    """True if, with nothing waiting, a step of all running decodes repeats unchanged until a
    request arrives or finishes or KV runs short (lets the simulator batch such iterations)."""

    def __init__(self, params: PolicyParams, limits: EngineLimits) -> None:
        self.params = params
        self.limits = limits
        self.predict: Predictor | None = None
        """Predicted seconds of a batch on `sms` SMs (None = all), for policies that plan with
        costs; set by whoever runs the policy (the simulator: its cost model; the runtime: its
        profile). A pure function: calling it reads no clock and touches no GPU."""

    def should_preempt(self, view: ServingView, running: Step, since_s: float) -> bool:
        """Operator-level policies: asked at each preemption point of a running prefill step
        (`since_s`: when its last block started); True suspends it there."""
        return False

    @abstractmethod
    def schedule(self, view: ServingView) -> Step:
        """Decide the next iteration."""

    def blocks_after(self, req: Request, num_tokens: int) -> int:
        """KV blocks `req` holds after processing `num_tokens` more tokens this step."""
        bs = self.limits.block_size
        if self.kv_mode == "max_len":
            held = math.ceil(self.limits.max_model_len / bs)
        elif self.kv_mode == "prompt" and req.in_prefill:
            held = math.ceil(req.prefill_target / bs)
        else:
            held = 0
        return max(held, req.kv_blocks, math.ceil((req.num_computed_tokens + num_tokens) / bs))

    def blocks_needed(self, req: Request, num_tokens: int) -> int:
        """New KV blocks `req` needs to process `num_tokens` more tokens this step."""
        return self.blocks_after(req, num_tokens) - req.kv_blocks

    def decode_blocks_needed(self, req: Request) -> int:
        """New blocks one decode step needs: one when its new token starts a block (a fast
        equivalent of blocks_needed(req, 1) for requests past their prefill)."""
        return 1 if req.num_computed_tokens >= req.kv_blocks * self.limits.block_size else 0

    def schedule_decodes(
        self, running: Sequence[Request], free_blocks: int
    ) -> tuple[list[Request], list[Request], list[Request], int]:
        """vLLM's decode pass: every decoding request in priority order gets one slot; when KV
        runs out the lowest-priority (last) running request is preempted, possibly the one being
        served. Returns (decodes, in-flight prefills, preempted, free blocks left)."""
        decodes: list[Request] = []
        prefills: list[Request] = []
        preempted: list[Request] = []
        if free_blocks >= len(running):  # each decode needs at most one block: no preemption
            for r in running:
                (decodes if r.num_computed_tokens >= r.prefill_target else prefills).append(r)
            free_blocks -= sum(map(self.decode_blocks_needed, decodes))
            return decodes, prefills, preempted, free_blocks
        queue = deque(running)
        while queue:
            req = queue.popleft()
            if req.in_prefill:
                prefills.append(req)
                continue
            need = self.decode_blocks_needed(req)
            while need > free_blocks and queue:
                victim = queue.pop()
                preempted.append(victim)
                free_blocks += victim.kv_blocks
            if need > free_blocks:
                preempted.append(req)
                free_blocks += req.kv_blocks
                continue
            free_blocks -= need
            decodes.append(req)
        return decodes, prefills, preempted, free_blocks

    def can_admit(self, req: Request, num_tokens: int, free_blocks: int) -> bool:
        """Admission rule: the new blocks fit and leave the watermark free."""
        return free_blocks - self.blocks_needed(req, num_tokens) >= self.limits.watermark_blocks

