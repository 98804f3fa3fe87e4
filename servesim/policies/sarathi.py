"""Sarathi-Serve: chunked prefill with decode-maximal, stall-free batching (OSDI'24).

Every iteration packs all running decodes first, then continues in-flight prefills, then admits
new requests in strict FCFS order, never exceeding the token budget with prefill tokens. KV for
a whole prompt is allocated at admission (1 % watermark); when a decode finds no free block the
latest arrival is preempted by recompute. Mirrors sarathi-serve's `sarathi_scheduler.py`, where
decodes are not charged against the budget; `decodes_count_against_budget` switches to the
vLLM V1 / nano-vllm accounting (policies.md §3.1, §11.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob
from servesim.request import Request


@dataclass(frozen=True)
class SarathiParams(PolicyParams):
    token_budget: int = knob(512, "max prefill tokens per iteration (tau); 512 strict, 2048 relaxed")
    max_num_seqs: int = knob(128, "max requests running at once")
    decodes_count_against_budget: bool = knob(
        False, "charge decodes against the budget (vLLM V1 style) instead of only prefill chunks"
    )

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")


class Sarathi(Policy):
    name = "sarathi"
    Params = SarathiParams
    kv_mode = "prompt"
    params: SarathiParams

    def schedule(self, view: ServingView) -> Step:
        p = self.params
        decodes, in_flight, preempted, free = self.schedule_decodes(view.running, view.free_blocks)
        step = Step(decodes=decodes, preempt=preempted)
        used = len(decodes) if p.decodes_count_against_budget else 0
        for req in in_flight:
            used += self._add_chunk(step, req, p.token_budget - used)
        if preempted:
            return step
        num_running = len(view.running)
        for req in view.waiting:
            if num_running >= p.max_num_seqs or used >= p.token_budget:
                break
            chunk = min(req.prefill_left, p.token_budget - used)
            if not self.can_admit(req, chunk, free):
                break  # strict FCFS: the head of the queue blocks admission
            free -= self.blocks_needed(req, chunk)
            used += self._add_chunk(step, req, chunk)
            num_running += 1
        return step

    @staticmethod
    def _add_chunk(step: Step, req: Request, room: int) -> int:
        chunk = min(req.prefill_left, room)
        if chunk > 0:
            step.prefills.append((req, chunk))
        return max(chunk, 0)
