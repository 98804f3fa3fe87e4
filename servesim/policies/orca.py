"""Orca (OSDI'22): iteration-level scheduling without chunking.

Every iteration runs all running decodes plus the whole prompts of newly admitted requests,
FCFS, up to `max_num_seqs` running requests. Each admitted request reserves KV for
`max_model_len` tokens up front (no paging), which is what keeps Orca's batches small; it never
needs to preempt (policies.md §2, sarathi-serve's orca_scheduler / orca_block_space_manager).
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob


@dataclass(frozen=True)
class OrcaParams(PolicyParams):
    max_num_seqs: int = knob(16, "batch cap: max requests running at once (8-16 in Sarathi's runs)")

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")


class Orca(Policy):
    name = "orca"
    Params = OrcaParams
    kv_mode = "max_len"
    params: OrcaParams

    def schedule(self, view: ServingView) -> Step:
        step = Step(decodes=[r for r in view.running if not r.in_prefill])
        step.prefills = [(r, r.prefill_left) for r in view.running if r.in_prefill]
        free, num_running = view.free_blocks, len(view.running)
        for req in view.waiting:
            if num_running >= self.params.max_num_seqs:
                break
            need = self.blocks_needed(req, req.prefill_left)
            if need > free:
                break
            free -= need
            step.prefills.append((req, req.prefill_left))
            num_running += 1
        return step
