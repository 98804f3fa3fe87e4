"""The Perfetto/Chrome timeline: one slice per iteration on its partition's track, request
events as instants, KV usage and SM splits as counters."""

from __future__ import annotations

import json

import pytest

from servesim.config import from_mapping
from servesim.runner import run
from servesim.sim.trace_export import chrome_trace

WORK = {"trace": "azure_conv", "max_requests": 40, "rate_scale": 4.0}


def _trace(policy: dict[str, object]) -> tuple[dict, object]:
    out = run(from_mapping({"workload": WORK, "policy": policy}, "t"))
    trace = chrome_trace(out.result)
    json.dumps(trace, allow_nan=False)  # valid JSON
    return trace, out


def test_every_iteration_is_a_slice_with_its_work() -> None:
    trace, out = _trace({"name": "sarathi"})
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == out.summary["num_iterations"]
    busy_s = sum(e["dur"] for e in slices) / 1e6
    assert busy_s == pytest.approx(out.summary["gpu_busy_fraction"] * out.summary["duration"], rel=1e-9)
    assert sum(e["args"]["prefill_tokens"] for e in slices) >= out.requests.num_prompt_tokens.sum()
    starts = [e["ts"] for e in slices]
    assert starts == sorted(starts)
    instants = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    assert sum(e["args"]["event"] == "finish" for e in instants) == 40
    counters = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert all(0 <= e["args"]["used_fraction"] <= 1 for e in counters)


def test_partitions_have_their_own_tracks() -> None:
    trace, _ = _trace({"name": "nexus", "tick_s": 0.01})
    tids = {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert tids == {0, 1}
    kinds = {(e["tid"], e["name"]) for e in trace["traceEvents"] if e["ph"] == "X"}
    assert kinds == {(0, "prefill"), (1, "decode")}
    assert any(e["name"] == "prefill SMs" for e in trace["traceEvents"])
