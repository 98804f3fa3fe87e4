"""The profile table schema: the contract between `servesim.profiler` (writes) and
`servesim.sim.profiled` (reads). Neither imports the other; both import this module, and
tests/test_profiler.py pins it.

A profile is a directory per (GPU, model) holding `meta.json` and one parquet file per table.
Every table row names an operator table (`op`) and up to three axes `a`, `b`, `c` whose meaning
`OP_AXES` gives. Times are microseconds (converted to seconds once, by the reader).
Per operator, the rows of `ops` form a full cartesian grid over its axes.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

META_FILE = "meta.json"
REPORT_FILE = "validation_report.json"

TABLES: dict[str, tuple[str, ...]] = {
    # Whole GPU, one operator timed alone.
    "ops": ("op", "a", "b", "c", "median_us", "p20_us", "p80_us", "reps", "method"),
    # Inside a green-context partition of `sms` SMs (a coarse subset of the ops grid).
    "sm_shares": ("op", "a", "b", "c", "sms", "median_us", "p20_us", "p80_us", "reps", "method"),
    # Target `op` on a partition of `sms` SMs while `corunner` loops on the complementary one.
    "contention": ("op", "a", "b", "c", "sms", "corunner", "corunner_sms", "alone_us",
                   "corun_us", "slowdown"),
    # Whole-model passes on a small grid (every layer, as --validate times its iterations):
    # decode-only ones on the whole GPU and on partitions of `sms` SMs, prompts on the whole
    # GPU, prompts on partitions alone and beside a decode-only pass of `corunner_decodes`
    # sequences (`corunner_context` tokens in all) looping on the other `corunner_sms` SMs, and
    # decode-only passes on partitions beside a prompt of `corunner_prompt` tokens looping
    # there: what the operators cost inside a pass, against their sum timed one by one.
    # (Profiles before a column: NaN.)
    "passes": ("batch_id", "prefill_tokens", "prefill_prefix", "num_decodes",
               "decode_context", "max_decode_context", "num_logits", "median_us",
               "p20_us", "p80_us", "reps", "method", "sms", "corunner_decodes",
               "corunner_context", "corunner_sms", "corunner_prompt"),
    # --validate: held-out operator shapes (not on the grid), whole GPU.
    "validation_ops": ("op", "a", "b", "c", "median_us", "p20_us", "p80_us", "reps", "method"),
    # --validate: whole-model iterations of random mixed batches (every layer).
    "validation_iters": ("batch_id", "prefill_tokens", "prefill_prefix", "num_decodes",
                         "decode_context", "max_decode_context", "num_logits", "median_us",
                         "p20_us", "p80_us", "reps", "method"),
}
"""Table name -> its columns, in order. `prefill_tokens` / `prefill_prefix` are
space-separated integers (one per chunk)."""

GEMM_OPS = ("qkv", "o", "gate_up", "down", "router", "lm_head", "shared_gate_up", "shared_down")
"""GEMM operators; axis a = rows (tokens; LM head: sequences producing logits)."""

OP_AXES: dict[str, tuple[str, ...]] = {
    **{op: ("m",) for op in GEMM_OPS},
    "rmsnorm": ("tokens",),  # fused residual add + RMSNorm over the hidden size
    "qk_norm": ("tokens",),  # per-head RMSNorm of q and k (Qwen3)
    "rope": ("tokens",),
    "kv_write": ("tokens",),
    "silu_mul": ("tokens",),
    "shared_silu_mul": ("tokens",),
    "embedding": ("tokens",),
    "attn_prefill": ("q", "prefix"),  # one sequence: q new tokens over a cached prefix
    "attn_prefill_packed": ("q", "prefix", "seqs"),  # seqs equal sequences in one launch
    "attn_decode": ("batch", "context", "skew"),  # mean context per sequence; max / mean
    "topk_softmax": ("tokens",),
    "moe_align": ("tokens",),
    "moe_gate_up": ("tokens", "skew"),  # skew 0 = uniform routing, 1 = skewed (see below)
    "moe_silu_mul": ("tokens",),
    "moe_down": ("tokens", "skew"),
    "moe_combine": ("tokens",),  # fused MoE minus its parts (the combine kernel is private)
    "moe_fused": ("tokens", "skew"),
    "sample": ("rows",),
    "iteration_fixed": (),  # per step: input copies in, graph launch, sampled ids out
}

OP_TABLE: dict[str, str] = {
    "input_norm": "rmsnorm", "post_attn_norm": "rmsnorm", "final_norm": "rmsnorm",
}
"""Operator names of `servesim.models.ops` that share a table with another name."""

MOE_SKEW_ZIPF = 1.2
"""Skewed routing (skew = 1): expert e is chosen with probability proportional to
1 / rank(e) ** MOE_SKEW_ZIPF, ranks shuffled per layer."""

CONTENTION_TARGETS = ("attn_decode", "gemm_small", "elementwise", "gemm_large", "attn_prefill")
"""Classes of target operators in the contention table (`op` column)."""
CORUNNERS = ("decode_attn", "decode_gemm", "prefill_gemm", "prefill_attn")
"""Classes of co-runners in the contention table (`corunner` column)."""
SMALL_GEMM_ROWS = 256
"""GEMMs of at most this many rows count as weight-streaming (decode-side) in contention."""
GEMM_ROW_CLASSES = (16, 32, 64)
"""Row counts at which servesim's GEMMs change their tiling (kernels.configs: 16-row split-K
tiles up to 16 rows, 32-row up to 32, 64-row up to 64, TMA tiles beyond). A decode pass's
pressure on a prompt beside it steps at these counts rather than varying smoothly: a 2,048-token
prompt on 40 H200 SMs ran 1.48-1.50x beside 8-16 decodes and 1.24-1.27x beside 20-32
(benchmarks/results/h200-pass-contention-batch.json)."""


def table_for(op_name: str) -> str:
    """The table that prices an operator of `servesim.models.ops` by name."""
    return OP_TABLE.get(op_name, op_name)


def gpu_key(device_name: str) -> str:
    """The GpuSpec name of a CUDA device name: 'NVIDIA H200' -> 'h200'."""
    words = device_name.lower().replace("nvidia", "").split()
    return words[0] if words else device_name.lower()
