"""vLLM V1's default scheduler: decode-first, chunked prefill always on.

Running requests are served first in FCFS order, each taking min(remaining prompt, budget left,
`long_prefill_token_threshold`) tokens (a decode takes one); KV is allocated incrementally for
just the tokens scheduled; when it runs out the latest-arriving running request is preempted by
recompute. Waiting requests are admitted, chunked to fit the budget, only if nothing was
preempted this step (vllm/v1/core/sched/scheduler.py; H200 defaults from policies.md §2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob
from servesim.request import Request


@dataclass(frozen=True)
class VllmV1Params(PolicyParams):
    max_num_batched_tokens: int = knob(8192, "token budget per iteration (8192 on H100/H200)")
    max_num_seqs: int = knob(1024, "max requests running at once")
    long_prefill_token_threshold: int | None = knob(
        None, "cap on one request's prefill tokens per step; None = no cap"
    )

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.long_prefill_token_threshold is not None and self.long_prefill_token_threshold < 1:
            raise ValueError("long_prefill_token_threshold must be >= 1")


class VllmV1(Policy):
    name = "vllm_v1"
    Params = VllmV1Params
    kv_mode = "incremental"
    params: VllmV1Params

    def _tokens(self, req: Request, room: int) -> int:
        if not req.in_prefill:
            return min(1, room)
        cap = self.params.long_prefill_token_threshold or req.prefill_left
        return min(req.prefill_left, cap, room)

    def schedule(self, view: ServingView) -> Step:
        budget = self.params.max_num_batched_tokens
        step = Step()
        free, used = view.free_blocks, 0
        queue = deque(view.running)
        while queue and used < budget:
            req = queue.popleft()
            n = self._tokens(req, budget - used)
            need = self.blocks_needed(req, n)
            while need > free and queue:
                victim = queue.pop()
                step.preempt.append(victim)
                free += victim.kv_blocks
            if need > free:
                step.preempt.append(req)
                free += req.kv_blocks
                continue
            free -= need
            used += n
            if req.in_prefill:
                step.prefills.append((req, n))
            else:
                step.decodes.append(req)
        if step.preempt:
            return step
        num_running = len(view.running)
        for req in view.waiting:
            if num_running >= self.params.max_num_seqs or used >= budget:
                break
            n = self._tokens(req, budget - used)
            if not self.can_admit(req, n, free):
                break
            free -= self.blocks_needed(req, n)
            step.prefills.append((req, n))
            used += n
            num_running += 1
        return step
