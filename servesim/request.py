"""A request's life in the serving system: what it asked for and how far it has got.

Shared by the simulator and the real runtime; policies read it, only executors write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class State(Enum):
    PENDING = "pending"  # not arrived yet
    WAITING = "waiting"  # arrived, holds no KV
    RUNNING = "running"  # admitted, holds KV
    FINISHED = "finished"
    REJECTED = "rejected"


@dataclass(eq=False, slots=True)
class Request:
    """One request. Token bookkeeping follows vLLM: `num_computed_tokens` tokens have their KV in
    the cache; a prefill must reach `prefill_target` (prompt, plus generated tokens after a
    recompute preemption); every decode step writes one token's KV and emits one token."""

    request_id: int
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    slo_class: str = "default"
    priority: int = 0
    ttft_slo_s: float | None = None
    tbt_slo_s: float | None = None
    state: State = State.PENDING
    num_computed_tokens: int = 0
    num_generated_tokens: int = 0
    prefill_target: int = 0
    kv_blocks: int = 0
    prefill_layer: int = 0
    """Layered prefill: the first layer the current chunk has not passed through yet."""
    prefill_run: int = -1
    """Operator-level execution: id of the run its current chunk belongs to (-1 = none)."""
    chunk_tokens: int = 0
    """Operator-level execution: prompt tokens of the current chunk."""
    prefill_progress_s: float = 0.0
    """Operator-level execution: seconds already spent on the current chunk (suspended runs)."""
    first_scheduled_s: float | None = None
    finish_s: float | None = None
    num_preemptions: int = 0
    rejected_reason: str = ""
    token_times_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefill_target = self.num_prompt_tokens

    @property
    def in_prefill(self) -> bool:
        return self.num_computed_tokens < self.prefill_target

    @property
    def prefill_left(self) -> int:
        return self.prefill_target - self.num_computed_tokens

    @property
    def decode_context(self) -> int:
        """Tokens a decode step attends to (the cached ones plus the one it processes)."""
        return self.num_computed_tokens + 1

    @property
    def total_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def ttft_deadline_s(self) -> float:
        """Absolute time by which the first token is due (inf without a TTFT SLO)."""
        if self.ttft_slo_s is None:
            return float("inf")
        return self.arrival_s + self.ttft_slo_s
