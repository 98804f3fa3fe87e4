"""vLLM V0's default scheduler: prefill-first, no chunking.

If any waiting request can be admitted (its whole prompt within `max_num_batched_tokens`, its
KV blocks free above the 1 % watermark, fewer than `max_num_seqs` running), the iteration is a
prefill-only batch of the admitted prompts; otherwise it is a decode-only batch of every running
request, preempting the latest arrival by recompute when KV runs out (policies.md §2). A prompt
longer than `max_num_batched_tokens` can never run and is rejected, as vLLM ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob


@dataclass(frozen=True)
class VllmParams(PolicyParams):
    max_num_batched_tokens: int | None = knob(
        None, "max prompt tokens in one prefill batch; None = the engine's max_model_len"
    )
    max_num_seqs: int = knob(256, "max requests running at once")

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")


class Vllm(Policy):
    name = "vllm"
    Params = VllmParams
    kv_mode = "prompt"
    params: VllmParams

    def schedule(self, view: ServingView) -> Step:
        budget = self.params.max_num_batched_tokens or self.limits.max_model_len
        step = Step()
        free, used, num_running = view.free_blocks, 0, len(view.running)
        for req in view.waiting:
            if req.prefill_left > budget:
                step.reject.append((req, "prompt_exceeds_max_num_batched_tokens"))
                continue
            if num_running >= self.params.max_num_seqs or used + req.prefill_left > budget:
                break
            if not self.can_admit(req, req.prefill_left, free):
                break
            free -= self.blocks_needed(req, req.prefill_left)
            step.prefills.append((req, req.prefill_left))
            used += req.prefill_left
            num_running += 1
        if step.prefills:
            return step
        decodes, _, preempted, _ = self.schedule_decodes(view.running, view.free_blocks)
        step.decodes, step.preempt = decodes, preempted
        return step
