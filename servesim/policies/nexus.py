"""Nexus (Shi et al., arXiv 2507.06608): prefill and decode as two concurrent batches on disjoint
SM partitions of one GPU, with a controller that re-splits the SMs.

Prefill partition: shortest-prompt-first with aging (score = remaining tokens - aging x seconds
waited), greedily filled up to `token_budget`; decode partition: every running decode, FCFS. The
controller picks the prefill share: below `kv_switch` KV usage it favours prefill (largest
prefill share whose decode slowdown stays within `beta` of decode on all SMs), above it favours
decode (within `alpha` for prefill). An empty phase costs nothing, so the other one then gets
every SM but the minimum partition. The prefill share is a multiple of the hardware's 8-SM step
and moves only by more than `hysteresis_sms` (policies.md §6; the paper gives no value), unless
the current split breaks the bound: the buffer damps oscillation, it never keeps a split that
slows the other phase past `beta` or `alpha`. The executor asks every `tick_s` and before each
prefill batch, when the requests that prefill just finished join the decode batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from servesim.models.shapes import BatchShape
from servesim.policies.base import Policy, PolicyParams, ServingView, Step, knob
from servesim.request import Request, State

Phase = Literal["prefill", "decode"]


@dataclass(frozen=True)
class NexusParams(PolicyParams):
    token_budget: int = knob(2048, "prompt tokens per prefill batch (vLLM's chunk size)")
    max_num_seqs: int = knob(256, "max requests running at once")
    prefill_order: Literal["spf", "fcfs"] = knob("spf", "prefill queue order: SPF with aging, or FCFS")
    aging_tokens_per_s: float = knob(15000.0, "SPF aging: tokens of priority per second waited (gamma=15/ms)")
    adaptive: bool = knob(True, "re-split SMs with the controller; False keeps initial_prefill_sms")
    initial_prefill_sms: int = knob(64, "prefill partition at start (the rest decodes)")
    kv_switch: float = knob(0.7, "KV usage above which the controller favours decode")
    beta: float = knob(1.1, "prefill-first: allowed decode slowdown vs decode on all SMs")
    alpha: float = knob(1.3, "decode-first: allowed prefill slowdown vs prefill on all SMs")
    hysteresis_sms: int = knob(8, "apply a new split only if it moves more SMs than this (or the bound is broken)")
    tick_s: float = knob(0.05, "controller period (s); it also runs before each prefill batch")

    def __post_init__(self) -> None:
        if self.token_budget < 1 or self.max_num_seqs < 1 or self.tick_s <= 0:
            raise ValueError("token_budget, max_num_seqs >= 1 and tick_s > 0 required")
        if not 0 < self.kv_switch <= 1 or self.beta < 1 or self.alpha < 1 or self.hysteresis_sms < 0:
            raise ValueError("kv_switch in (0, 1], beta and alpha >= 1, hysteresis_sms >= 0")
        if self.initial_prefill_sms < 8 or self.aging_tokens_per_s < 0:
            raise ValueError("initial_prefill_sms >= 8 and aging_tokens_per_s >= 0 required")


class Nexus(Policy):
    name = "nexus"
    Params = NexusParams
    kv_mode = "prompt"
    granularity = "partitioned"
    decode_steady_state = False
    params: NexusParams
    sm_step = 8

    def schedule(self, view: ServingView) -> Step:
        """On one unpartitioned GPU: alternate decode and prefill batches."""
        step = self.schedule_phase(view, "decode")
        return step if not step.is_empty else self.schedule_phase(view, "prefill")

    def schedule_phase(self, view: ServingView, phase: Phase) -> Step:
        if phase == "decode":
            decoding = [r for r in view.running if not r.in_prefill]
            decodes, _, preempted, _ = self.schedule_decodes(decoding, view.free_blocks)
            return Step(decodes=decodes, preempt=preempted)
        return Step(prefills=self.prefill_batch(view))

    def prefill_batch(self, view: ServingView) -> list[tuple[Request, int]]:
        p, now = self.params, view.now_s
        cands = [r for r in view.running if r.in_prefill] + list(view.waiting)
        if p.prefill_order == "spf":
            cands.sort(key=lambda r: (r.prefill_left - p.aging_tokens_per_s * (now - r.arrival_s),
                                      r.arrival_s, r.request_id))
        batch, used, free, num_running = [], 0, view.free_blocks, len(view.running)
        for req in cands:
            n = min(req.prefill_left, p.token_budget - used)
            if n <= 0:
                break
            if req.state is State.WAITING:
                if num_running >= p.max_num_seqs or not self.can_admit(req, n, free):
                    continue
                free -= self.blocks_needed(req, n)
                num_running += 1
            batch.append((req, n))
            used += n
        return batch

    def initial_split(self) -> int:
        """The prefill partition's SMs at the start: initial_prefill_sms, leaving each side at
        least one SM step."""
        step = self.sm_step
        return min(max(self.params.initial_prefill_sms, step), self.limits.num_sms - step)

    def shares(self) -> list[int]:
        """Every prefill share a run can use: the initial one and, with the controller, each
        multiple of the SM step it may choose."""
        step = self.sm_step
        if not self.params.adaptive:
            return [self.initial_split()]
        return sorted({self.initial_split(), *range(step, self._highest_share() + 1, step)})

    def _highest_share(self) -> int:
        return (self.limits.num_sms - self.sm_step) // self.sm_step * self.sm_step

    def split(self, view: ServingView, prefill_sms: int) -> int:
        """The controller: the prefill partition's SMs for the next period, a multiple of the
        hardware's SM step (the partition sizes a static split can have too)."""
        p, total, step, predict = self.params, self.limits.num_sms, self.sm_step, self.predict
        if not p.adaptive or predict is None:
            return prefill_sms
        low, high = step, self._highest_share()
        batch = self.prefill_batch(view)
        ctx = [r.decode_context for r in view.running if not r.in_prefill]
        decode = BatchShape(num_decodes=len(ctx), decode_context=sum(ctx),
                            max_decode_context=max(ctx, default=0), num_logits=len(ctx))
        prefill = BatchShape(tuple(n for _, n in batch), tuple(r.num_computed_tokens for r, _ in batch),
                             num_logits=len(batch))
        prefill_first = 1.0 - view.free_blocks / max(self.limits.total_blocks, 1) < p.kv_switch
        other, slack = (decode, p.beta) if prefill_first else (prefill, p.alpha)
        budget = slack * predict(other, total)
        grow = step if prefill_first else -step  # the move that gives the favoured phase more SMs

        def within(sms: int) -> bool:  # the other phase's slowdown bound, at prefill share sms
            return low <= sms <= high and predict(other, total - sms if prefill_first else sms) <= budget

        new = min(max(prefill_sms // step * step, low), high)
        while not within(new) and low <= new - grow <= high:
            new -= grow
        while within(new + grow):
            new += grow
        # Hysteresis damps moves towards a better split; a split that breaks the bound always moves.
        return new if abs(new - prefill_sms) > p.hysteresis_sms or not within(prefill_sms) else prefill_sms
