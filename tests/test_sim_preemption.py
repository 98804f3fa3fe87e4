"""Exact event logs for recompute preemption under KV pressure (hand-computed).

KV: 5 blocks of 2 tokens, no watermark. R0 and R1 arrive at 0 with 4-token prompts and 4 output
tokens each; iteration = 10 ms + 1 ms per prefill token.
  0-18 ms: both prompts (2 blocks each, 1 left) -> first tokens at 18.
  18: R0's decode needs a 3rd block (takes the last); R1 needs one too, none is left and no
      request arrived later, so R1 (the latest arrival) is preempted and frees its 2 blocks.
  18-28, 28-38, 38-48: R0 decodes alone (its 4th block at 38); R1 must re-prefill prompt + its
      1 generated token = 5 tokens = 3 blocks, which only fit once R0 finishes at 48.
  48-63: R1 re-prefills 5 tokens -> its 2nd token at 63; 73 and 83 follow.
"""

from __future__ import annotations

import pytest
from simkit import limits, requests, run, token_times

SPECS = [(0.0, 4, 4), (0.0, 4, 4)]
EVENTS = [
    (0.0, "admit", 0), (0.0, "admit", 1), (0.018, "preempt", 1), (0.048, "finish", 0),
    (0.048, "admit", 1), (0.083, "finish", 1),
]


@pytest.mark.parametrize("policy", ["vllm_v1", "sarathi"])
def test_latest_arrival_is_preempted_and_recomputed(policy: str) -> None:
    res = run(policy, requests(SPECS), lim=limits(total_blocks=5, block_size=2))
    assert [(round(t, 9), what, rid) for t, what, rid in res.events] == EVENTS
    assert token_times(res) == {0: [0.018, 0.028, 0.038, 0.048], 1: [0.018, 0.063, 0.073, 0.083]}
    assert [r.num_preemptions for r in res.requests] == [0, 1]
    assert res.peak_used_blocks == 4  # R1 frees its 2 blocks before R0 takes its 3rd and 4th


def test_victim_is_the_latest_arrival_not_the_requester() -> None:
    # R0 (prompt 3) and R1 (prompt 4) fill 4 of 4 blocks; R0's 1st decode crosses into a new
    # block, so R1, the later arrival, is evicted even though R0 is the one asking.
    res = run("vllm_v1", requests([(0.0, 3, 3), (0.001, 4, 2)]), lim=limits(total_blocks=4, block_size=2))
    preempts = [(rid) for _, what, rid in res.events if what == "preempt"]
    assert preempts == [1]
    assert [r.num_generated_tokens for r in res.requests] == [3, 2]
