"""The qualitative results of the seed papers (shared/research/policies.md §9), reproduced on
the H200 roofline cost model. Each test fails if the effect is absent or reversed; the numbers
in the comments are what this suite measured when it was written. V15, which a direct H200
measurement does not show, is held to that measurement on the shipped profile instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from servesim.config import from_mapping
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.runner import RunOutput, run
from servesim.sim.cost_model import RooflineCostModel
from servesim.sim.hardware import get_gpu
from servesim.sim.profiled import ProfiledCostModel


def sim(policy: dict[str, Any], workload: dict[str, Any], model: str = "llama-3.1-8b",
        **sections: Any) -> RunOutput:
    """These cases reproduce the papers' effects on the H200 roofline (the hardware the papers
    reason about), not on servesim's own kernels: the shipped profiles, the default cost model,
    describe those, whose slower prefill attention and SM scaling change some outcomes (V10's
    chunked prefill pays more for re-reading long prefixes; decode keeps gaining from SMs past
    48, which V16's beta-bounded Nexus split then hands to decode)."""
    sections = {"cost_model": {"kind": "roofline"}, **sections}
    return run(from_mapping({"model": model, "workload": workload, "policy": policy, "seed": 1,
                             **sections}, "validation"))


def synthetic(rate: float, prompt_mean: float, output_mean: float, n: int, prompt_max: int = 16000,
              prompt_sigma: float = 0.3) -> dict[str, Any]:
    return {"synthetic": {
        "arrival": "poisson", "rate_rps": rate,
        "prompt": {"dist": "lognormal", "mean": prompt_mean, "sigma": prompt_sigma, "max": prompt_max},
        "output": {"dist": "lognormal", "mean": output_mean, "sigma": 0.5, "max": 1000},
    }, "max_requests": n}


ARXIV = synthetic(1.5, 9000, 200, 150)  # long prompts, input ~ 45x output
AZURE = {"trace": "azure_conv", "duration_s": 300, "rate_scale": 2.0}
LLAMA = RooflineCostModel(load_model("llama-3.1-8b"), get_gpu("h200"))


def test_v1_prefill_first_stalls_decodes_chunking_does_not() -> None:
    # Qwen2.5-32B (a Yi-34B-like dense model), arXiv-like prompts at 0.5 req/s.
    # Measured: vllm p99 ITL 837 ms, max 7982 ms; sarathi-512 p99 80 ms, max 86 ms.
    work = synthetic(0.5, 9000, 200, 150)
    vllm = sim({"name": "vllm"}, work, "qwen2.5-32b").summary
    sarathi = sim({"name": "sarathi", "token_budget": 512}, work, "qwen2.5-32b").summary
    assert vllm["p99_itl_ms"] > 5 * sarathi["p99_itl_ms"]
    assert vllm["max_itl_ms"] > 20 * sarathi["max_itl_ms"]
    cm = RooflineCostModel(load_model("qwen2.5-32b"), get_gpu("h200"))
    one_iteration_s = cm.step_time(BatchShape((512,), (15000,), num_decodes=128, decode_context=128 * 17000,
                                              max_decode_context=17000, num_logits=129))
    assert sarathi["max_itl_ms"] <= one_iteration_s * 1000  # bounded by one tau-sized iteration
    assert vllm["mean_ttft_ms"] < sarathi["mean_ttft_ms"]  # the price chunking pays in TTFT


def test_v2_larger_token_budget_raises_tbt_and_lowers_ttft() -> None:
    # Measured p99 ITL 11.7 / 17.8 / 29.5 / 50.4 / 55.5 ms; median TTFT 57 / 44 / 38 / 31 / 31 ms.
    runs = [sim({"name": "sarathi", "token_budget": tau}, AZURE).summary
            for tau in (256, 512, 1024, 2048, 4096)]
    itl = [s["p99_itl_ms"] for s in runs]
    ttft = [s["median_ttft_ms"] for s in runs]
    assert all(a < b for a, b in zip(itl, itl[1:], strict=False)), itl
    assert all(b <= a * 1.02 for a, b in zip(ttft, ttft[1:], strict=False)), ttft
    assert ttft[0] > 1.5 * ttft[-1]


def test_v5_piggybacked_decodes_cost_like_prefill_tokens() -> None:
    hybrid = LLAMA.step_time(BatchShape((1021,), (0,), 3, 3000, 1000, 4))
    prefill = LLAMA.step_time(BatchShape((1024,), (0,), num_logits=1))
    decode_only = LLAMA.step_time(BatchShape((), (), 4, 4000, 1000, 4))
    assert hybrid == pytest.approx(prefill, rel=0.05)
    # A decode token alone costs >> one in a hybrid batch (Sarathi: ~80x on A100; here ~65x).
    assert (decode_only / 4) / (hybrid / 1024) > 30


def test_v7_layered_reads_fewer_expert_bytes_on_moe() -> None:
    # Qwen3-30B-A3B, arXiv-like. Measured: expert bytes 174 -> 100 TB (-43 %), mean TTFT
    # 1859 -> 607 ms, p99 ITL 40.8 -> 28.1 ms.
    chunked = sim({"name": "sarathi", "token_budget": 512}, ARXIV, "qwen3-30b-a3b").summary
    layered = sim({"name": "layered"}, ARXIV, "qwen3-30b-a3b").summary
    assert layered["expert_bytes_read"] < 0.8 * chunked["expert_bytes_read"]
    assert layered["mean_ttft_ms"] < chunked["mean_ttft_ms"]
    assert layered["p99_itl_ms"] < 1.25 * chunked["p99_itl_ms"]  # TBT about equal or better


def test_v9_fewer_layer_groups_trade_tbt_for_ttft() -> None:
    # Measured G=2: TTFT 274 ms, p99 ITL 92 ms; G=16: 671 ms, 28 ms.
    two = sim({"name": "layered", "groups": 2}, ARXIV, "qwen3-30b-a3b").summary
    sixteen = sim({"name": "layered", "groups": 16}, ARXIV, "qwen3-30b-a3b").summary
    assert two["mean_ttft_ms"] < sixteen["mean_ttft_ms"]
    assert two["p99_itl_ms"] > 2 * sixteen["p99_itl_ms"]


def test_v10_layered_loses_ttft_on_a_dense_model() -> None:
    # Measured on Llama-3.1-8B: chunked 903 ms vs layered 1349 ms mean TTFT (paper: 0.955 vs 1.45 s).
    work = synthetic(2.5, 9000, 200, 150)
    chunked = sim({"name": "sarathi", "token_budget": 512}, work).summary
    layered = sim({"name": "layered"}, work).summary
    assert layered["mean_ttft_ms"] > 1.2 * chunked["mean_ttft_ms"]
    assert layered["expert_bytes_read"] == chunked["expert_bytes_read"] == 0


@pytest.fixture
def hol_trace(tmp_path: Path) -> dict[str, Any]:
    """A 16k-token low-priority prompt at 0 s, then a 100-token tight-SLO one at 53 ms."""
    pd.DataFrame({"arrival_s": [0.0, 0.053], "num_prompt_tokens": [16000, 100],
                  "num_output_tokens": [5, 5], "slo_class": ["batch", "chat"]}).to_csv(
        tmp_path / "hol.csv", index=False)
    return {"trace": str(tmp_path / "hol.csv")}


HOL_SLO = {"default": {}, "classes": {"batch": {"ttft_s": 10.0}, "chat": {"ttft_s": 0.1}}}


def test_v11_head_of_line_blocking(hol_trace: dict[str, Any]) -> None:
    def short_ttft_s(policy: dict[str, Any]) -> float:
        return float(sim(policy, hol_trace, slo=HOL_SLO).requests.ttft_s[1])

    own = LLAMA.step_time(BatchShape((100,), (0,), num_logits=1))
    flow = short_ttft_s({"name": "flowprefill"})
    chunk = short_ttft_s({"name": "flowprefill", "preemption": "chunk", "execution_chunk": 512})
    fcfs = short_ttft_s({"name": "vllm"})
    sub_layer_s = 0.0045  # the longest sub-layer block of an 8k chunk of Llama-3.1-8B here
    assert flow <= own + sub_layer_s + 1e-3  # own prefill + about one operator block
    assert own + sub_layer_s < chunk <= own + LLAMA.step_time(BatchShape((512,), (15488,), num_logits=1)) * 1.05
    assert fcfs > 0.3  # waits for the rest of the 16k prefill (~400 ms)
    assert flow < chunk < fcfs


def test_v12_preemption_blocking_orders_by_granularity() -> None:
    work = synthetic(6.0, 3000, 50, 200, prompt_sigma=1.0)
    classes = {"rules": [{"name": "chat", "when": "num_prompt_tokens <= 1500", "priority": 0}]}
    slo = {"default": {"ttft_s": 20.0}, "classes": {"chat": {"ttft_s": 0.3}}}
    runs = {g: sim({"name": "flowprefill", "preemption": g}, {**work, "classes": classes}, slo=slo).summary
            for g in ("operator", "sublayer", "layer", "chunk")}
    blocking = [runs[g]["mean_preemption_blocking_ms"] for g in ("operator", "sublayer", "layer", "chunk")]
    assert all(a < b for a, b in zip(blocking, blocking[1:], strict=False)), blocking
    throughput = [s["output_throughput"] for s in runs.values()]
    assert max(throughput) < 1.05 * min(throughput)  # about flat


def test_v14_latency_vs_sm_share() -> None:
    prefill = BatchShape((4096,), (0,), num_logits=1)
    decode = BatchShape((), (), 64, 64 * 2048, 2048, 64)
    assert LLAMA.step_time(prefill, 66) / LLAMA.step_time(prefill, 132) == pytest.approx(2.0, rel=0.15)
    assert LLAMA.step_time(decode, 64) / LLAMA.step_time(decode, 128) < 1.05  # flat past ~50 %
    assert LLAMA.step_time(decode, 16) > 2 * LLAMA.step_time(decode, 64)


def test_v15_decode_beside_a_prefill_does_not_slow_more_as_the_prefill_kv_grows() -> None:
    """V15 (Nexus's motivation: decode latency +36 % as the co-running prefill's KV grows from
    2k to 10k) does not hold on the H200 with servesim's kernels, so the simulator must not show
    it either. Measured (benchmarks/pass_contention.py --cases v15, CUDA-graph replays on two
    green-context partitions; benchmarks/results/h200-pass-contention-v15.json): 32 decodes of
    2k on 60 SMs beside a 512-token prompt on 68 slow 1.14x with no prefix and 1.07 / 1.07 /
    1.05x after 2k / 6k / 10k of prefix; the prefix's attention is compute-bound and presses
    on HBM less than the prompt's GEMMs do. This holds the shipped profile's prediction to
    that: a slowdown that does not grow with the prefix, within 0.05 of the measured."""
    model = ProfiledCostModel(load_model("llama-3.1-8b"), get_gpu("h200"))
    decode = BatchShape((), (), 32, 32 * 2048, 2048, 32)
    alone = model.step_time(decode, 60)
    measured = {2048: 1.07, 6144: 1.07, 10240: 1.05}
    slowdown = {prefix: model.step_time(decode, 60, Corunner(BatchShape((512,), (prefix,), num_logits=1), 68)) / alone
                for prefix in measured}
    for prefix, meas in measured.items():
        assert slowdown[prefix] == pytest.approx(meas, abs=0.05), (prefix, slowdown)
    assert slowdown[10240] <= slowdown[2048] + 0.01  # no growth with the prefix (V15: +36 %)
    assert min(slowdown.values()) > 1.0  # but a co-runner does slow it


def test_v16_nexus_ablation_spf_and_sm_adaptation() -> None:
    # Measured (rate 4/s, LDC-like prompts): mean / median TTFT spf 2190 / 1326 ms, fcfs
    # 2315 / 1419 ms; at rate 3/s: adaptive 523 ms vs static 64/68 split 2328 ms.
    heavy = synthetic(4.0, 5900, 180, 400, prompt_sigma=0.6)
    spf = sim({"name": "nexus"}, heavy).summary
    fcfs = sim({"name": "nexus", "prefill_order": "fcfs"}, heavy).summary
    assert spf["mean_ttft_ms"] < fcfs["mean_ttft_ms"] and spf["median_ttft_ms"] < fcfs["median_ttft_ms"]
    work = synthetic(3.0, 5900, 180, 400, prompt_sigma=0.6)
    adaptive = sim({"name": "nexus"}, work).summary
    static = sim({"name": "nexus", "adaptive": False}, work).summary
    assert adaptive["mean_ttft_ms"] < 0.6 * static["mean_ttft_ms"]
    assert adaptive["repartitions"] > 0 and static["repartitions"] == 0


@pytest.fixture
def shifting_trace(tmp_path: Path) -> dict[str, Any]:
    """200 long-prompt requests at 3/s, then 400 short-prompt long-output ones at 12/s."""
    rng = np.random.default_rng(0)
    a1 = np.cumsum(rng.exponential(1 / 3.0, 200))
    a2 = a1[-1] + np.cumsum(rng.exponential(1 / 12.0, 400))
    pd.DataFrame({
        "arrival_s": np.r_[a1, a2],
        "num_prompt_tokens": np.r_[rng.integers(4000, 9000, 200), rng.integers(100, 400, 400)],
        "num_output_tokens": np.r_[rng.integers(20, 80, 200), rng.integers(300, 900, 400)],
    }).to_csv(tmp_path / "shift.csv", index=False)
    return {"trace": str(tmp_path / "shift.csv")}


def test_v17_adaptive_split_beats_every_static_split(shifting_trace: dict[str, Any]) -> None:
    # Measured SLO attainment: adaptive 0.982 (159 repartitions); static prefill SMs 32: 0.003,
    # 48: 0.378, 64: 0.827, 80: 0.962, 96: 0.937, 112: 0.327 (and 88, off this list: 0.980).
    # Phase 1 (long prompts) is best at 104 (0.985 of its requests), phase 2 (long outputs) at
    # 72-88 (1.0); adaptive holds 88 while both phases run (decode saturates HBM at 48 SMs, so
    # beta = 1.1 allows 44) and gives prefill 120 whenever nothing decodes. Hysteresis 40:
    # 0.980 with 4 repartitions.
    slo = {"ttft_s": 1.0, "tbt_s": 0.025}
    adaptive = sim({"name": "nexus"}, shifting_trace, slo=slo).summary
    statics = [sim({"name": "nexus", "adaptive": False, "initial_prefill_sms": s}, shifting_trace,
                   slo=slo).summary["slo_attainment"] for s in range(32, 113, 16)]
    assert adaptive["slo_attainment"] > max(statics), (adaptive["slo_attainment"], statics)
    calm = sim({"name": "nexus", "hysteresis_sms": 40}, shifting_trace, slo=slo).summary
    assert calm["repartitions"] < adaptive["repartitions"]
    assert calm["slo_attainment"] > adaptive["slo_attainment"] - 0.01  # fewer switches, same latency


def test_v18_mixed_iterations_are_much_slower_than_decode_only() -> None:
    mixed = LLAMA.step_time(BatchShape((8192,), (0,), 32, 32000, 1000, 33))
    decode = LLAMA.step_time(BatchShape((), (), 32, 32000, 1000, 32))
    assert mixed / decode > 10  # Nexus measured ~17x (251 vs 15 ms); here ~30x


def test_v20_kv_pressure_preempts_the_latest_arrivals() -> None:
    work = {"synthetic": {"arrival": "poisson", "rate_rps": 20.0, "prompt": {"dist": "fixed", "value": 2000},
                          "output": {"dist": "fixed", "value": 2000}}, "max_requests": 300}
    out = sim({"name": "vllm_v1"}, work, hardware={"memory_utilization": 0.2})
    table = out.requests
    assert out.summary["preemptions"] > 0
    hit, spared = table[table.num_preemptions > 0], table[table.num_preemptions == 0]
    assert hit.max_tbt_s.median() > 10 * spared.max_tbt_s.median()  # mid-stream stalls
    running: set[int] = set()
    for _, what, rid in out.result.events:  # each victim is the latest arrival among running
        if what == "admit":
            running.add(rid)
        elif what == "finish":
            running.discard(rid)
        elif what == "preempt":
            assert rid == max(running), (rid, sorted(running)[-3:])
            running.discard(rid)


def test_flowprefill_as_a_prefill_only_instance(hol_trace: dict[str, Any]) -> None:
    out = sim({"name": "flowprefill"}, hol_trace, slo=HOL_SLO, engine={"role": "prefill"})
    assert list(out.requests.num_generated_tokens) == [1, 1]
    own = LLAMA.step_time(BatchShape((100,), (0,), num_logits=1))
    assert out.requests.ttft_s[1] <= own + 0.0055
    assert out.summary["max_itl_ms"] == 0.0
