"""FlowPrefill (Hsieh et al., arXiv 2602.16603): operator-level preemption with event-driven,
slack-aware EDF scheduling of prefills.

Decisions happen on events only: an arrival, a completion, or (colocated) decodes falling due.
Candidates are ordered by S-EDF: deadline = arrival + class TTFT SLO; slack = deadline - now -
predicted remaining prefill time (prediction minus time already executed); feasible requests
(slack >= 0) go first in deadline order, infeasible ones after, latest deadline first. A new head
runs alone if it is long (> token_bound) or tight (slack < margin x SLO); otherwise short waiting
requests join it while the sum stays <= token_bound and the head keeps its margin. Execution stays
in large chunks (`execution_chunk`); a running prefill is preempted at the next operator-block
boundary (granularity operator / sublayer / layer / chunk) when a higher-priority request arrives,
keeping its KV and activations. Colocated, decodes run as their own iterations whenever the
oldest token gap reaches `max_decode_gap_s` or no prefill waits (policies.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from servesim.models.shapes import BatchShape
from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob
from servesim.request import Request, State


@dataclass(frozen=True)
class FlowPrefillParams(PolicyParams):
    preemption: Literal["operator", "sublayer", "layer", "chunk"] = knob(
        "sublayer", "preemption points: every operator, attention/MLP blocks, layers, or chunks")
    execution_chunk: int = knob(8192, "prompt tokens per forward pass (8192 in the released server)")
    token_bound: int = knob(2048, "cap on a batch of short requests, in prompt tokens")
    slack_margin: float = knob(0.1, "fraction of the head's TTFT SLO its slack must keep")
    max_decode_gap_s: float = knob(0.1, "colocated: run a decode iteration once a token gap reaches this")
    switch_overhead_s: float = knob(1e-4, "stream sync and hand-off at a preemption (s)")

    def __post_init__(self) -> None:
        if self.execution_chunk < 1 or self.token_bound < 1:
            raise ValueError("execution_chunk and token_bound must be >= 1")
        if not 0 <= self.slack_margin < 1 or self.max_decode_gap_s <= 0 or self.switch_overhead_s < 0:
            raise ValueError("slack_margin in [0, 1), max_decode_gap_s > 0, switch_overhead_s >= 0")


class FlowPrefill(Policy):
    name = "flowprefill"
    Params = FlowPrefillParams
    kv_mode = "prompt"
    granularity = "operator"
    decode_steady_state = True
    params: FlowPrefillParams

    def _predict(self, tokens: int, prefix: int) -> float:
        """Predicted seconds to prefill `tokens` after `prefix` alone (0 without a predictor)."""
        if self.predict is None or tokens <= 0:
            return 0.0
        return self.predict(BatchShape((tokens,), (prefix,), num_logits=1), None)

    def slack(self, req: Request, now_s: float) -> float:
        remaining = self._predict(min(req.prefill_left, self.params.execution_chunk), req.num_computed_tokens)
        chunks = math.ceil(req.prefill_left / self.params.execution_chunk)
        remaining *= max(chunks, 1)
        return req.ttft_deadline_s - now_s - max(remaining - req.prefill_progress_s, 0.0)

    def order(self, candidates: list[Request], now_s: float) -> list[Request]:
        """S-EDF: feasible by earliest deadline, then infeasible by latest deadline."""
        def key(r: Request) -> tuple[int, float, float, int]:
            feasible = self.slack(r, now_s) >= 0
            d = r.ttft_deadline_s
            return (0, d, r.arrival_s, r.request_id) if feasible else (1, -d, r.arrival_s, r.request_id)
        return sorted(candidates, key=key)

    def _due_decodes(self, view: ServingView) -> list[Request]:
        due = view.now_s - self.params.max_decode_gap_s
        return [r for r in view.running if not r.in_prefill and r.token_times_s[-1] <= due]

    def should_preempt(self, view: ServingView, running: Step, since_s: float) -> bool:
        """Event-driven: only a request that arrived during the last block and outranks the
        running head (and fits in KV), or decodes falling due, suspend the running prefill."""
        if self._due_decodes(view):
            return True
        head = running.prefills[0][0]
        fresh = [r for r in view.waiting if r.arrival_s > since_s
                 and self.can_admit(r, r.prefill_left, view.free_blocks)]
        return bool(fresh) and self.order([head, *fresh], view.now_s)[0] is not head

    def schedule(self, view: ServingView) -> Step:
        decodes = [r for r in view.running if not r.in_prefill]
        prefill_cands = [r for r in view.running if r.in_prefill] + list(view.waiting)
        if not prefill_cands or (decodes and self._due_decodes(view)):
            return self._decode_step(view, decodes)
        for top in self.order(prefill_cands, view.now_s):
            if top.state is State.RUNNING:
                return Step(prefills=self._resume(view, top))
            if self.can_admit(top, top.prefill_left, view.free_blocks):
                return Step(prefills=self._batch(view, top))
        return self._decode_step(view, decodes)  # nothing admissible: serve decodes meanwhile

    def _decode_step(self, view: ServingView, decodes: list[Request]) -> Step:
        if not decodes:
            return Step()
        kept, _, preempted, _ = self.schedule_decodes(view.running, view.free_blocks)
        return Step(decodes=kept, preempt=preempted)

    def _resume(self, view: ServingView, top: Request) -> list[tuple[Request, int]]:
        if top.prefill_run < 0:  # an unfinished long request between chunks
            return [(top, min(top.prefill_left, self.params.execution_chunk))]
        members = [r for r in view.running if r.prefill_run == top.prefill_run]
        return [(r, r.chunk_tokens) for r in members]

    def _batch(self, view: ServingView, head: Request) -> list[tuple[Request, int]]:
        p, now = self.params, view.now_s
        batch = [(head, min(head.prefill_left, p.execution_chunk))]
        margin = p.slack_margin * (head.ttft_slo_s or 0.0)
        if head.prefill_left > p.token_bound or self.slack(head, now) < margin:
            return batch
        free = view.free_blocks - self.blocks_needed(head, head.prefill_left)
        total = head.prefill_left
        for req in self.order([r for r in view.waiting if r is not head], now):
            n = req.prefill_left
            if n > p.token_bound or total + n > p.token_bound:
                continue
            if head.ttft_deadline_s - now - self._predict(total + n, 0) < margin:
                break
            if not self.can_admit(req, n, free):
                break
            free -= self.blocks_needed(req, n)
            batch.append((req, n))
            total += n
        return batch
