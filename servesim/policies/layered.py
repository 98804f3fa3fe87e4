"""Layered prefill (Lee et al., arXiv 2510.08055): stall-free scheduling by layers, not tokens.

Decodes run every layer every iteration. New prompts form one cohort (up to
`max_cohort_tokens`) whose prefill advances through one contiguous group of layers per iteration,
so each prompt token passes each layer once: an MoE layer loads its experts for the cohort once
instead of once per chunk. Only one cohort is in flight; KV for whole prompts is allocated at
admission; the cohort's hidden states stay in GPU memory between iterations (policies.md §4).
Groups per cohort: `paper` = max(1, ceil(tokens / 512)); `buckets` = the released code's
<=512 -> 1, <=1024 -> 2, <=2048 -> 4, <=4096 -> 8, else `max_groups`; or a fixed count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servesim.policies.base import EngineLimits, Policy, PolicyParams, ServingView, Step, knob
from servesim.request import Request, State

_BUCKETS = ((512, 1), (1024, 2), (2048, 4), (4096, 8))


@dataclass(frozen=True)
class LayeredParams(PolicyParams):
    max_cohort_tokens: int = knob(8192, "prompt tokens in one cohort (the paper's 8192)")
    max_num_seqs: int = knob(256, "max requests running at once")
    groups: str | int = knob("paper", "'paper' (ceil(L/512)), 'buckets' (released code) or a count")
    max_groups: int = knob(16, "cap on groups per cohort (the code's num_stages)")

    def __post_init__(self) -> None:
        if self.max_cohort_tokens < 1 or self.max_num_seqs < 1 or self.max_groups < 1:
            raise ValueError("max_cohort_tokens, max_num_seqs and max_groups must be >= 1")
        if isinstance(self.groups, str) and self.groups not in ("paper", "buckets"):
            raise ValueError(f"groups must be 'paper', 'buckets' or a count, got '{self.groups}'")
        if isinstance(self.groups, int) and self.groups < 1:
            raise ValueError("groups must be >= 1")


def num_groups(tokens: int, rule: str | int, max_groups: int, num_layers: int) -> int:
    if isinstance(rule, int):
        g = rule
    elif rule == "paper":
        g = max(1, math.ceil(tokens / 512))
    else:
        g = next((n for limit, n in _BUCKETS if tokens <= limit), max_groups)
    return max(1, min(g, max_groups, num_layers))


def layer_groups(num_layers: int, groups: int) -> list[tuple[int, int]]:
    """Near-equal contiguous [start, end) ranges, larger ones first (numpy.array_split's rule)."""
    base, extra = divmod(num_layers, groups)
    bounds, start = [], 0
    for i in range(groups):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class Layered(Policy):
    name = "layered"
    Params = LayeredParams
    kv_mode = "prompt"
    granularity = "layer"
    params: LayeredParams

    def __init__(self, params: PolicyParams, limits: EngineLimits) -> None:
        super().__init__(params, limits)
        self._cohort: list[tuple[Request, int]] = []
        self._groups: list[tuple[int, int]] = []
        self._next = 0

    def schedule(self, view: ServingView) -> Step:
        decodes, in_flight, preempted, free = self.schedule_decodes(view.running, view.free_blocks)
        step = Step(decodes=decodes, preempt=preempted)
        gone = set(map(id, preempted))
        self._cohort = [(r, n) for r, n in self._cohort if id(r) not in gone and r.state is State.RUNNING]
        if not self._cohort and not preempted:
            self._form_cohort(view, in_flight, free)
        if self._cohort:
            step.prefills = list(self._cohort)
            step.prefill_layers = self._groups[self._next]
            self._next += 1
            if self._next == len(self._groups):  # the cohort's last group runs in this step
                self._cohort = []
        return step

    def _form_cohort(self, view: ServingView, in_flight: list[Request], free: int) -> None:
        cap, tokens, members = self.params.max_cohort_tokens, 0, []
        for req in in_flight:  # partially prefilled requests (a cohort cap cut them) first
            take = min(req.prefill_left, cap - tokens)
            if take <= 0:
                break
            members.append((req, take))
            tokens += take
        num_running = len(view.running)
        for req in view.waiting:
            take = min(req.prefill_left, cap - tokens)
            if take <= 0 or num_running >= self.params.max_num_seqs:
                break
            if not self.can_admit(req, take, free):
                break
            free -= self.blocks_needed(req, take)
            members.append((req, take))
            tokens += take
            num_running += 1
        if members:
            p, layers = self.params, self.limits.num_layers
            self._cohort = members
            self._groups = layer_groups(layers, num_groups(tokens, p.groups, p.max_groups, layers))
            self._next = 0
