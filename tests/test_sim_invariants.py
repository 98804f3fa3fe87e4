"""Invariants over random traces, policies and KV sizes (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simkit import limits, requests, run

from servesim.policies import REGISTRY
from servesim.request import State
from servesim.sim.cost_model import ConstantCostModel

request_specs = st.lists(
    st.tuples(st.floats(0, 2.0), st.integers(1, 300), st.integers(1, 40)), min_size=1, max_size=25
)


def _run(policy: str, specs: list[tuple[float, int, int]], blocks: int, budget: int,
         fast_forward: bool = True):
    specs = sorted(specs, key=lambda s: s[0])
    knobs = {
        "sarathi": {"token_budget": budget},
        "vllm_v1": {"max_num_batched_tokens": budget},
        "vllm": {"max_num_batched_tokens": max(budget, 64)},
        "orca": {"max_num_seqs": 4},
        "layered": {"max_cohort_tokens": budget},
        "flowprefill": {"execution_chunk": budget, "token_bound": max(budget // 2, 1)},
        "nexus": {"token_budget": budget, "tick_s": 0.01},
    }[policy]
    lim = limits(total_blocks=blocks, block_size=4, watermark_blocks=1, max_model_len=360)
    cost = ConstantCostModel(fixed_s=0.005, per_prefill_token_s=1e-4, per_decode_s=1e-4)
    return run(policy, requests(specs), cost, lim, fast_forward, **knobs)


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(sorted(REGISTRY)),
    specs=request_specs,
    blocks=st.integers(30, 400),
    budget=st.integers(1, 512),
)
def test_every_request_ends_once_and_books_balance(policy, specs, blocks, budget) -> None:
    res = _run(policy, specs, blocks, budget)
    ends = [(what, rid) for _, what, rid in res.events if what in ("finish", "reject")]
    assert sorted(rid for _, rid in ends) == list(range(len(specs)))  # exactly once each
    for r in res.requests:
        assert r.state in (State.FINISHED, State.REJECTED)
        if r.state is State.REJECTED:
            # Only a recompute victim can be rejected after emitting tokens (vLLM V0 drops a
            # re-prefill of prompt + output longer than max_num_batched_tokens, as vLLM does).
            assert r.rejected_reason and (not r.token_times_s or r.num_preemptions > 0)
            continue
        assert r.num_generated_tokens == r.num_output_tokens == len(r.token_times_s)
        assert r.arrival_s <= r.first_scheduled_s <= r.token_times_s[0]
        assert r.token_times_s == sorted(r.token_times_s)
        assert r.token_times_s[0] - r.arrival_s <= r.finish_s - r.arrival_s
        assert r.kv_blocks == 0
    assert res.peak_used_blocks <= res.limits.total_blocks
    assert max(res.log.used_blocks, default=0) <= res.limits.total_blocks
    for part in set(res.log.partition):  # one iteration at a time on each SM partition
        rows = [i for i, p in enumerate(res.log.partition) if p == part]
        starts = [res.log.start_s[i] for i in rows]
        ends_s = [res.log.end_s[i] for i in rows]
        assert all(a <= b for a, b in zip(starts, ends_s, strict=True))
        assert all(b <= a for a, b in zip(starts[1:], ends_s, strict=False))
    times = [t for t, _, _ in res.events]
    assert times == sorted(times)


@settings(max_examples=15, deadline=None)
@given(policy=st.sampled_from(sorted(REGISTRY)), specs=request_specs, blocks=st.integers(30, 400))
def test_same_input_same_output(policy, specs, blocks) -> None:
    a, b = _run(policy, specs, blocks, 64), _run(policy, specs, blocks, 64)
    assert [r.token_times_s for r in a.requests] == [r.token_times_s for r in b.requests]
    assert a.events == b.events


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(sorted(REGISTRY)),
    specs=request_specs,
    blocks=st.integers(30, 400),
    budget=st.integers(1, 512),
)
def test_fast_forward_changes_nothing(policy, specs, blocks, budget) -> None:
    """Batching steady decode iterations into one event gives the one-by-one loop's results."""
    fast, slow = _run(policy, specs, blocks, budget), _run(policy, specs, blocks, budget, False)
    assert [e[1:] for e in fast.events] == [e[1:] for e in slow.events]
    for a, b in zip(fast.requests, slow.requests, strict=True):
        assert a.token_times_s == pytest.approx(b.token_times_s, abs=1e-9)
    assert list(fast.log.num_decodes) == list(slow.log.num_decodes)
    assert list(fast.log.used_blocks) == list(slow.log.used_blocks)
    assert fast.peak_used_blocks == slow.peak_used_blocks
