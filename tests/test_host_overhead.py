"""The host-overhead wrapper: host-bound iterations take launches x launch cost, GPU-bound ones
their GPU time, and the op breakdown still sums to the total."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from servesim.config import from_mapping
from servesim.errors import InputError
from servesim.models import ops as model_ops
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.sim.cost_model import RooflineCostModel
from servesim.sim.hardware import get_gpu
from servesim.sim.host_overhead import (
    CONTENTION_DUTY_EXPONENT,
    FULL_DECODE_LAUNCHES,
    HostOverheadCostModel,
)
from servesim.sim.profiled import ProfiledCostModel

ARCH = load_model("llama-3.1-8b")
GPU_MODEL = RooflineCostModel(ARCH, get_gpu("h200"))
DECODE = BatchShape((), (), 8, 8000, 1000, 8)
PREFILL = BatchShape((8192,), (0,), num_logits=1)


def test_launches_count_the_ops_of_the_pass() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 0.0)
    assert host.launches(DECODE) == len(model_ops.forward_ops(ARCH, DECODE))
    two_chunks = BatchShape((100, 200), (0, 0), 8, 8000, 1000, 10)
    one_chunk = BatchShape((300,), (0,), 8, 8000, 1000, 9)
    assert host.launches(two_chunks) == host.launches(one_chunk)  # one varlen kernel per layer


def test_host_bound_decode_and_gpu_bound_prefill() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6)
    assert host.step_time(DECODE) == pytest.approx(300e-6 + host.launches(DECODE) * 50e-6)
    assert host.step_time(DECODE) > GPU_MODEL.step_time(DECODE)
    assert host.step_time(PREFILL) == pytest.approx(300e-6 + GPU_MODEL.step_time(PREFILL))
    assert host.step_time(BatchShape()) == 0.0


def test_breakdown_sums_to_the_total() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6)
    for batch in (DECODE, PREFILL):
        cost = host.batch_cost(batch)
        assert cost.total_s == pytest.approx(host.step_time(batch))
        assert sum(op.seconds for op in cost.ops) == pytest.approx(cost.total_s, rel=1e-9)


def test_graphed_passes_issue_replays_and_attention_only() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 0.0, graph_max_tokens=2048)
    layers = ARCH.num_layers
    # 8 decodes of up to 1000 tokens: ceil(264 / 64) = 5 splits wanted, 1000 // 256 = 3 -> split.
    assert host.launches(DECODE) == 2 * layers + 2 * layers + 9
    big_batch = BatchShape((), (), 64, 64 * 1000, 1000, 64)  # one split: no merging kernel
    assert host.launches(big_batch) == 2 * layers + layers + 9
    mixed = BatchShape((500,), (0,), 8, 8000, 1000, 9)
    assert host.launches(mixed) == 2 * layers + layers + 2 * layers + 9
    layered = BatchShape((500,), (0,), 0, 0, 0, 0, prefill_layers=(8, 16))
    assert host.launches(layered) == 2 * 8 + 8 + 9
    # Above the largest captured pass every kernel is launched again.
    assert host.launches(PREFILL) == host.eager_launches(PREFILL) > 4 * layers
    assert host.launches(DECODE) < host.eager_launches(DECODE) / 2


def test_full_decode_graphs_turn_a_host_bound_decode_step_gpu_bound() -> None:
    """A decode-only pass the engine replays whole issues a handful of launches and leaves no
    gaps between pieces; a larger batch, or any pass with a prompt, stays piecewise."""
    piecewise = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6, graph_max_tokens=2048, host_gap_s=4e-6)
    full = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6, graph_max_tokens=2048, host_gap_s=4e-6,
                                 graph_max_decodes=8)
    assert full.launches(DECODE) == FULL_DECODE_LAUNCHES < piecewise.launches(DECODE) / 10
    assert full.gaps_s(DECODE) == 0.0 < piecewise.gaps_s(DECODE)
    # piecewise: host-bound (launches x 50 us over the GPU time); whole: the GPU's time
    assert piecewise.step_time(DECODE) == pytest.approx(300e-6 + piecewise.launches(DECODE) * 50e-6)
    assert full.step_time(DECODE) == pytest.approx(300e-6 + GPU_MODEL.step_time(DECODE))
    # the inputs' copies and the replay are issued before the GPU has the pass: in series
    issued = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6, graph_max_tokens=2048, graph_max_decodes=8,
                                   host_graph_issue_s=150e-6)
    assert issued.step_time(DECODE) == pytest.approx(450e-6 + GPU_MODEL.step_time(DECODE))
    nine = BatchShape((), (), 9, 9000, 1000, 9)
    mixed = BatchShape((100,), (0,), 8, 8000, 1000, 9)
    for batch in (nine, mixed):
        assert full.launches(batch) == piecewise.launches(batch) and full.gaps_s(batch) > 0
    # The runtime's GPU span of a step starts at its first launch, so a whole-graph pass's span
    # holds the host's issue of it; a piecewise pass's issue overlaps its GPU work.
    from servesim.validate import _priced

    _, spans = _priced(issued, [(DECODE, None, None), (mixed, None, None)])
    assert spans == pytest.approx([150e-6 + GPU_MODEL.step_time(DECODE), issued.gpu_s(mixed)], rel=1e-12)


def test_host_time_grows_with_the_sequences_of_the_batch() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 0.0, 1e-3, graph_max_tokens=2048, host_per_seq_s=20e-6)
    assert host.step_time(DECODE) == pytest.approx(1e-3 + 8 * 20e-6 + GPU_MODEL.step_time(DECODE))
    mixed = BatchShape((100, 200), (0, 0), 8, 8000, 1000, 10)
    assert host.step_time(mixed) == pytest.approx(1e-3 + 10 * 20e-6 + GPU_MODEL.step_time(mixed))


def test_operator_level_checks_hide_behind_the_gpu_unless_the_host_is_slower(tmp_path) -> None:
    """The runtime decides on the next block while the GPU runs the one before: the checks
    hide behind the GPU, or, where the host is slower, set the pace."""
    from servesim.config import from_mapping
    from servesim.runner import run

    pd.DataFrame({"arrival_s": [0.0], "num_prompt_tokens": [1000], "num_output_tokens": [1]}).to_csv(
        tmp_path / "one.csv", index=False)

    pd.DataFrame({"arrival_s": [0.0, 0.0], "num_prompt_tokens": [500, 500], "num_output_tokens": [1, 1]}).to_csv(
        tmp_path / "two.csv", index=False)

    def ttft(check_us: float, launch_us: float = 0.0, gap_us: float = 0.0, per_seq_us: float = 0.0,
             trace: str = "one") -> float:
        config = from_mapping({"model": "llama-3.1-8b", "workload": {"trace": str(tmp_path / f"{trace}.csv")},
                               "policy": {"name": "flowprefill"},
                               "engine": {"cuda_graph_max_tokens": 2048},
                               "cost_model": {"kind": "roofline", "host_step_us": 100.0,
                                              "host_check_us": check_us, "host_launch_us": launch_us,
                                              "host_gap_us": gap_us, "host_check_per_seq_us": per_seq_us}}, "t")
        return float(run(config).requests.ttft_s[0])

    # A 1000-token prefill's blocks take far longer than 5 us on the GPU: the checks are hidden.
    assert ttft(5.0) == pytest.approx(ttft(0.0), rel=1e-12)
    # A check longer than any block sets the pace: FlowPrefill's sublayer spans, two per
    # layer plus the embedding's and the LM head's, each take the check, after the host's step.
    blocks = 2 * ARCH.num_layers + 2
    assert ttft(20_000.0) == pytest.approx(100e-6 + blocks * 20e-3, rel=1e-9)
    # The check's scan of the running requests costs per request: the prompt itself is running,
    # and two prompts prefilled together make each check scan two.
    assert ttft(0.0, per_seq_us=20_000.0) == pytest.approx(ttft(20_000.0), rel=1e-12)
    assert ttft(1_000.0, per_seq_us=20_000.0, trace="two") == pytest.approx(100e-6 + blocks * 41e-3, rel=1e-9)
    # The launches count too, spread over the blocks; the last block runs on the GPU after its
    # launches.
    from servesim.sim.op_executor import preemption_groups

    prompt = BatchShape((1000,), (0,), 0, 0, 0, 1)
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 1.0, 0.0, graph_max_tokens=2048)
    launches = host.launches(prompt)
    last = sum(op.seconds for op in preemption_groups(GPU_MODEL.batch_cost(prompt).ops, "sublayer")[-1])
    assert last > 1e-5 and ttft(0.0, 1e6) == pytest.approx(100e-6 + launches * 1.0 + last, rel=1e-9)
    # The GPU's gaps at the host's launches add to a GPU-bound pass, as in step_time.
    assert ttft(0.0, 0.0, 10.0) - ttft(0.0) == pytest.approx(launches * 10e-6, rel=1e-6)


def test_a_host_bound_co_runner_slows_a_pass_only_for_the_share_of_its_steps_it_keeps_the_gpu_busy() -> None:
    """Nexus's lanes: the contention a profile measures is beside a co-runner looping without
    pause. A decode lane that spends part of each step on the host (its step, its launches)
    presses on the prefill lane for its GPU time over its step only."""
    gpu = get_gpu("h200")
    inner = ProfiledCostModel(ARCH, gpu)
    prompt = BatchShape((1024,), (0,), num_logits=1)
    decode = Corunner(BatchShape((), (), 8, 8 * 1024, 1024, 8), 84)
    alone, beside = inner.step_time(prompt, 48), inner.step_time(prompt, 48, decode)
    assert beside > 1.1 * alone
    none = HostOverheadCostModel(inner, ARCH, 0.0, 0.0, num_sms=132)
    assert none.duty(decode) == 1.0 and none.step_time(prompt, 48, decode) == pytest.approx(beside, rel=1e-12)
    for launch_us, step_us in ((30.0, 300.0), (45.0, 500.0), (80.0, 1000.0)):
        host = HostOverheadCostModel(inner, ARCH, launch_us * 1e-6, step_us * 1e-6, num_sms=132)
        duty = inner.step_time(decode.batch, 84) / host.step_time(decode.batch, 84)
        assert host.duty(decode) == pytest.approx(duty, rel=1e-12) and 0.2 < duty < 1.0
        gpu_s = host.gpu_s(prompt, 48, decode)
        assert gpu_s == pytest.approx(alone + duty ** CONTENTION_DUTY_EXPONENT * (beside - alone), rel=1e-12)
        assert host.step_time(prompt, 48, decode) - host.step_time(prompt, 48) == pytest.approx(gpu_s - alone, rel=1e-9)
    slower = HostOverheadCostModel(inner, ARCH, 80e-6, 1e-3, num_sms=132)
    faster = HostOverheadCostModel(inner, ARCH, 30e-6, 3e-4, num_sms=132)
    assert slower.gpu_s(prompt, 48, decode) < faster.gpu_s(prompt, 48, decode) < beside


def test_a_graphed_pass_issues_its_launches_in_the_spans_the_runtime_issues_them() -> None:
    """FlowPrefill's spans in the runtime: the attention span ends with the attention kernels
    (a graph piece, then prefill and decode attention launched), the MLP span starts with the
    output projection (one piece); the spans' launches add up to the pass's."""
    from servesim.sim.op_executor import graphed_group_launches, preemption_groups

    host = HostOverheadCostModel(GPU_MODEL, ARCH, 30e-6, 0.0, graph_max_tokens=2048)
    for batch in (BatchShape((500,), (0,), 0, 0, 0, 1), BatchShape((300,), (100,), 16, 16000, 2000, 17)):
        ops = GPU_MODEL.batch_cost(batch).ops
        groups = preemption_groups(ops, "sublayer")
        assert len(groups) == 2 * ARCH.num_layers + 2  # embedding, two spans per layer, head
        layer0 = [[op.name for op in g] for g in groups if g[0].layer == 0]
        assert layer0[0][-1] in ("attn_prefill", "attn_decode") and layer0[1][0] == "o"
        kernels = 1 + (host.decode_splits(batch) > 1) if batch.num_decodes else 0
        counts = [graphed_group_launches(g, ARCH.num_layers, kernels) for g in groups]
        assert sum(counts) == host.graphed_launches(batch)
        assert counts[1] == 2 + kernels and counts[2] == 1  # layer 0: piece + attention, piece
        per_layer = [graphed_group_launches(g, ARCH.num_layers, kernels) for g in preemption_groups(ops, "layer")]
        assert sum(per_layer) == host.graphed_launches(batch) and per_layer[1] == 3 + kernels


def test_the_duty_exponent_is_the_one_the_paced_co_runner_measured() -> None:
    """CONTENTION_DUTY_EXPONENT against the committed H200 measurement it comes from: the
    least-squares exponent of excess(duty) / excess(back to back) over the paced rows."""
    result = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-pass-contention-paced.json"
    rows = json.loads(result.read_text())["rows"]
    back_to_back = {(r["prompt"], r["decodes"]): r["slowdown"] for r in rows if r["gap_us"] == 0}
    paced = [r for r in rows if r["gap_us"] > 0]
    assert len(paced) >= 6 and all(0.5 < r["duty"] < 1.0 for r in paced)
    xs = [math.log(r["duty"]) for r in paced]
    ys = [math.log((r["slowdown"] - 1) / (back_to_back[(r["prompt"], r["decodes"])] - 1)) for r in paced]
    fitted = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    assert fitted == pytest.approx(CONTENTION_DUTY_EXPONENT, abs=0.1)
    assert fitted > 1.2  # faster than linear in the duty, the reason for the exponent


def test_a_graphed_pass_runs_its_graphed_operators_on_the_padding_rows() -> None:
    """Graphs captured at a few row counts (the runtime's GRAPH_SIZES; vLLM's capture sizes):
    a pass of 20 decodes replays the graph of 24 rows, so each layer's operators but attention
    run on 24 rows; a pass at a captured size, an eager one and a roofline inner model add
    nothing; a layered prompt pays only on the layers it runs."""
    from servesim.runtime.model import GRAPH_SIZES
    from servesim.validate import runtime_config

    inner = ProfiledCostModel(ARCH, get_gpu("h200"))
    sizes = tuple(GRAPH_SIZES)
    host = HostOverheadCostModel(inner, ARCH, 0.0, 0.0, graph_max_tokens=2048, graph_max_decodes=256,
                                 graph_sizes=sizes)
    exact = HostOverheadCostModel(inner, ARCH, 0.0, 0.0, graph_max_tokens=2048, graph_max_decodes=256)

    def decodes(n: int) -> BatchShape:
        return BatchShape((), (), n, n * 1024, 1024, n)

    layers = ARCH.num_layers
    extra = host.step_time(decodes(20)) - exact.step_time(decodes(20))
    assert extra == pytest.approx(layers * (inner.dense_layer_s(24) - inner.dense_layer_s(20)), rel=1e-9)
    assert host.padding_s(decodes(24)) == 0.0 and host.padding_s(decodes(16)) == 0.0
    assert host.padding_s(decodes(70)) == pytest.approx(layers * (inner.dense_layer_s(96) - inner.dense_layer_s(70)))
    assert host.padding_s(decodes(70)) > 0  # 70 rows run as 96
    prompt = BatchShape((3000,), (0,), num_logits=1)  # above graph_max_tokens: eager
    assert host.padding_s(prompt) == 0.0
    layered = BatchShape((300,), (0,), num_logits=1, prefill_layers=(0, 8))
    assert host.padding_s(layered) == pytest.approx(8 * (inner.dense_layer_s(320) - inner.dense_layer_s(300)))
    # With decodes: the prompt's 8 layers run 310 rows (padded to 320), the other 24 the 20
    # decodes' rows alone (padded to 24), as the runtime parks the prompt's rows outside its layers.
    both = BatchShape((290,), (0,), 20, 20 * 1024, 1024, 21, prefill_layers=(0, 8))
    expected = 8 * (inner.dense_layer_s(320) - inner.dense_layer_s(310)) \
        + 24 * (inner.dense_layer_s(24) - inner.dense_layer_s(20))
    assert host.padding_s(both) == pytest.approx(expected)
    roofline = HostOverheadCostModel(GPU_MODEL, ARCH, 0.0, 0.0, graph_max_tokens=2048, graph_sizes=sizes)
    assert roofline.padding_s(decodes(20)) == 0.0
    # servesim validate prices the runtime with the runtime's sizes unless the config names some.
    config = from_mapping({"model": "llama-3.1-8b", "engine": {"cuda_graph_max_tokens": 2048}}, "test")
    assert runtime_config(config).engine.cuda_graph_sizes == sizes
    named = from_mapping({"model": "llama-3.1-8b", "engine": {"cuda_graph_max_tokens": 2048,
                                                             "cuda_graph_sizes": [8, 64]}}, "test")
    assert runtime_config(named).engine.cuda_graph_sizes == (8, 64)
    with pytest.raises(InputError, match="cuda_graph_sizes"):
        from_mapping({"model": "llama-3.1-8b", "engine": {"cuda_graph_sizes": [64, 8]}}, "test")


def test_paced_blocks_hide_one_blocks_host_behind_the_next_blocks_gpu() -> None:
    """The runtime's operator-level loop (one block queued beyond the one it waits for): the
    host issues the next attention block (and checks) while the GPU runs an MLP block, so only
    what it does after that block ends (a check and the next MLP block's launch) shows, where
    the GPU runs the attention block in less; a host slower over every block sets the pace; a
    GPU slower over every block does."""
    from servesim.sim.op_executor import paced_blocks

    gpu, host = [0.03, 0.18] * 32, [0.09, 0.045] * 32  # ms: attention, MLP blocks of 32 layers
    paced = paced_blocks(gpu, host, 0.023)
    # The first layer: issue 0.09, attention 0.03, then the MLP block waits for its launch
    # (0.09 + 0.023 + 0.045 = 0.158) and runs 0.18; every later layer the MLP's 0.18 plus the
    # check and launch after it (0.068), which the 0.03 attention block does not cover.
    assert sum(paced) == pytest.approx(0.158 + 0.18 + 31 * (0.18 + 0.068), rel=1e-9)
    per_block = sum(max(g, 0.023 + h) for g, h in zip(gpu, host, strict=True))  # each block alone: 9.38
    assert sum(gpu) < sum(paced) < per_block - 1.3
    slow = paced_blocks([0.01] * 10, [0.05] * 10, 0.02)  # host-bound: 70 us a block
    assert sum(slow) == pytest.approx(10 * 0.07, rel=1e-9) and len(slow) == 10
    fast = paced_blocks([0.2] * 10, [0.05] * 10, 0.02)  # GPU-bound after the first issue
    assert sum(fast) == pytest.approx(0.05 + 10 * 0.2, rel=1e-9)
