"""Small golden tables per policy: 200 Azure-conv requests at 4x rate on Llama-3.1-8B / H200
(the shipped profile, the default cost model). They pin today's behaviour so that any change to a policy, the executor or the cost
model shows up as a diff that someone has to explain. Regenerate with
SERVESIM_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py (and say why in the commit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from servesim.config import from_mapping
from servesim.policies import REGISTRY
from servesim.runner import run

GOLDEN = Path(__file__).parent / "golden"
KEYS = ("completed", "failed", "duration", "mean_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
        "p99_itl_ms", "max_itl_ms", "preemptions", "num_iterations", "slo_attainment")
KNOBS = {"sarathi": {"token_budget": 512}, "vllm_v1": {"max_num_batched_tokens": 2048},
         "vllm": {}, "orca": {"max_num_seqs": 16}, "layered": {}, "flowprefill": {},
         "nexus": {}}


@pytest.mark.parametrize("policy", sorted(KNOBS))
def test_golden_summary(policy: str) -> None:
    raw = {
        "workload": {"trace": "azure_conv", "max_requests": 200, "rate_scale": 4.0},
        "policy": {"name": policy, **KNOBS[policy]},
        "engine": {"max_model_len": 16384},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.03},
    }
    summary = run(from_mapping(raw, f"golden-{policy}")).summary
    got = {k: round(float(summary[k]), 6) for k in KEYS}
    path = GOLDEN / f"{policy}.json"
    if os.environ.get("SERVESIM_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(path.read_text())


def test_every_policy_has_a_golden_table() -> None:
    assert set(REGISTRY) == set(KNOBS)
