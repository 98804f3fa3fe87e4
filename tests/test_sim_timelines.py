"""Hand-computed timelines: each expected time below was worked out on paper from the policy's
rules and a constant cost model (iteration = 10 ms + 1 ms per prefill token)."""

from __future__ import annotations

import pytest
from simkit import limits, requests, run, token_times

# R0 arrives at 0 with a 6-token prompt and 3 output tokens; R1 at 5 ms, 2-token prompt, 2 out.
SPECS = [(0.0, 6, 3), (0.005, 2, 2)]


def test_sarathi_chunks_the_prompt_and_piggybacks() -> None:
    # 0-14 ms: R0 chunk 4 (R1 waits). 14-28: R0's last 2 + R1's 2 -> both first tokens at 28.
    # 28-38: decodes R0, R1 (R1 done). 38-48: decode R0 (done).
    res = run("sarathi", requests(SPECS), token_budget=4)
    assert token_times(res) == {0: [0.028, 0.038, 0.048], 1: [0.028, 0.038]}


def test_vllm_prefill_first_runs_whole_prompts_alone() -> None:
    # 0-16: R0 prefill 6. 16-28: R1 prefill 2 (prefill first). 28-38: decode both. 38-48: R0.
    res = run("vllm", requests(SPECS))
    assert token_times(res) == {0: [0.016, 0.038, 0.048], 1: [0.028, 0.038]}


def test_orca_mixes_whole_prompts_with_decodes() -> None:
    # 0-16: R0 prefill. 16-28: R0 decode + R1 whole prompt (10 + 2 ms). 28-38: both decode.
    res = run("orca", requests(SPECS), lim=limits(max_model_len=64))
    assert token_times(res) == {0: [0.016, 0.028, 0.038], 1: [0.028, 0.038]}


def test_vllm_v1_budget_counts_decodes() -> None:
    # Budget 3. 0-13: R0 chunk 3. 13-26: R0 chunk 3 -> first token at 26 (R1 gets no room).
    # 26-38: R0 decode (1) + R1 chunk 2 -> R0 token 2, R1 token 1 at 38. 38-48: both decode.
    res = run("vllm_v1", requests(SPECS), max_num_batched_tokens=3)
    assert token_times(res) == {0: [0.026, 0.038, 0.048], 1: [0.038, 0.048]}


def test_sarathi_budget_excludes_decodes_by_default() -> None:
    # Budget 2, R0 (0 s, 2 tokens, 3 out), R1 (1 ms, 2 tokens, 1 out).
    # 0-12: R0 prefill -> t1. 12-24: R0 decode + R1 chunk 2 (decodes are free) -> R0 t2, R1 t1.
    # 24-34: R0 decode -> t3. With decodes counted, R1 would get only 1 token of room at 12 ms.
    specs = [(0.0, 2, 3), (0.001, 2, 1)]
    assert token_times(run("sarathi", requests(specs), token_budget=2)) == {
        0: [0.012, 0.024, 0.034], 1: [0.024]}
    # Counted: 12-23: R0 decode + R1 chunk 1; 23-34: R0 decode + R1 chunk 1 -> R1 t1 at 34.
    counted = run("sarathi", requests(specs), token_budget=2, decodes_count_against_budget=True)
    assert token_times(counted) == {0: [0.012, 0.023, 0.034], 1: [0.034]}


@pytest.mark.parametrize("policy", ["vllm", "vllm_v1", "sarathi", "orca"])
def test_idle_gpu_waits_for_the_next_arrival(policy: str) -> None:
    # One request at 1 s with 4 prompt tokens and 1 output: first token at 1 + 0.014 s.
    res = run(policy, requests([(1.0, 4, 1)]), lim=limits(max_model_len=64))
    assert token_times(res) == {0: [1.014]}
    assert res.end_s == pytest.approx(1.014)


def test_nexus_asks_its_controller_around_prefill_batches_only() -> None:
    """The simulated Nexus asks its controller when a prefill batch ends (before the decode
    partition's next step) and before the next one, as servesim's runtime does: not when its
    idle prefill partition wakes after each decode step. (No tick falls inside this run.)"""
    from servesim.policies import REGISTRY
    from servesim.sim.cost_model import ConstantCostModel
    from servesim.sim.engine import simulate

    lim = limits()
    cls = REGISTRY["nexus"]
    policy = cls(cls.Params(tick_s=100.0), lim)
    asked: list[float] = []
    split = policy.split

    def counted(view, prefill_sms):  # type: ignore[no-untyped-def]
        asked.append(view.now_s)
        return split(view, prefill_sms)

    policy.split = counted  # type: ignore[method-assign]
    res = simulate(requests([(0.0, 6, 12), (0.03, 4, 12), (0.09, 8, 6)]), policy,
                   ConstantCostModel(fixed_s=0.01, per_prefill_token_s=0.001), lim)
    prefill_ends = [e for s, e, p, part in zip(res.log.start_s, res.log.end_s, res.log.prefill_tokens,
                                                res.log.partition, strict=True) if part == 0 and p]
    decode_steps = sum(1 for part in res.log.partition if part == 1)
    assert len(prefill_ends) == 3 and decode_steps > 6
    # before each prefill batch and when it ends; the controller's one tick falls after the run,
    # which ends with its last pass
    assert len(asked) <= 2 * len(prefill_ends), asked
    assert all(any(abs(t - e) < 1e-12 for t in asked) for e in prefill_ends)
    assert res.end_s == max(res.log.end_s) < 1.0
