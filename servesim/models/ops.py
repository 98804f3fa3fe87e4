"""The operators of one forward pass, with shapes, FLOPs and HBM bytes.

Per layer, in execution order: fused residual-add + RMSNorm, QKV GEMM, (q/k norm,) RoPE, KV-cache
write, prefill attention (one entry per chunk), decode attention (one entry for all decodes),
O GEMM, post-attention RMSNorm, then the MLP: gate_up GEMM, SiLU-mul, down GEMM, or for MoE the
router GEMM, top-k softmax, align, grouped gate_up, SiLU-mul, grouped down and combine. Before
the first layer (layer -1): embedding. After the last (layer num_layers): final norm, LM head on
`num_logits` rows, sampling.

Bytes are what one kernel reads and writes in HBM once: a GEMM reads its weights once plus its
activations in and out; grouped MoE GEMMs read only the experts that receive a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from servesim.models.arch import ModelArch
from servesim.models.shapes import BatchShape

OpKind = Literal[
    "gemm", "attn_prefill", "attn_decode", "kv_write", "norm", "rope", "act", "moe_gemm",
    "router", "sample", "embed",
]

# Rough FLOPs per element of the elementwise kernels (they are memory-bound by ~100x anyway):
# RMSNorm with residual add = add, square, sum, scale, weight; RoPE = 2 mul + 1 add; SiLU-mul =
# exp, add, div, mul, mul.
_NORM_FLOPS = 5
_ROPE_FLOPS = 3
_SILU_MUL_FLOPS = 5
_ROUTING_ID_BYTES = 8
"""Per (token, expert) assignment: a 4-byte expert id and a 4-byte fp32 weight."""
_LOGIT_BYTES = 4
"""Logits reach the sampler in fp32."""


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One kernel launch: what it computes and what it moves."""

    name: str
    kind: OpKind
    shape: Mapping[str, float]
    """Named dimensions, e.g. gemm {m, n, k}; attn_prefill {q, prefix}; moe_gemm {rows, ...}."""
    flops: float
    hbm_bytes: float
    weight_bytes: float = 0.0
    """Part of hbm_bytes that is weights (for MoE: only the experts hit)."""


def gemm_shapes(arch: ModelArch) -> dict[str, tuple[int, int]]:
    """GEMM operator -> (N, K) of out[M, N] = x[M, K] @ W[N, K].T."""
    h = arch.hidden_size
    shapes = {"qkv": (arch.q_size + 2 * arch.kv_size, h), "o": (h, arch.q_size)}
    if arch.is_moe:
        shapes["router"] = (arch.num_experts, h)
        if arch.shared_expert_intermediate_size:
            shapes["shared_gate_up"] = (2 * arch.shared_expert_intermediate_size, h)
            shapes["shared_down"] = (h, arch.shared_expert_intermediate_size)
    else:
        shapes["gate_up"] = (2 * arch.intermediate_size, h)
        shapes["down"] = (h, arch.intermediate_size)
    shapes["lm_head"] = (arch.vocab_size, h)
    return shapes


def gemm(name: str, m: int, n: int, k: int, dtype_bytes: int, bias: bool = False) -> OpSpec:
    """y[m, n] = x[m, k] @ W[k, n]: 2*m*n*k FLOPs; W read once, x read and y written once."""
    weight_bytes = (n * k + (n if bias else 0)) * dtype_bytes
    io_bytes = (m * k + m * n) * dtype_bytes
    shape = {"m": m, "n": n, "k": k}
    return OpSpec(name, "gemm", shape, 2.0 * m * n * k, weight_bytes + io_bytes, weight_bytes)


def _elementwise(
    name: str, kind: OpKind, read_elems: int, write_elems: int, flops: float, arch: ModelArch
) -> OpSpec:
    shape = {"read": read_elems, "write": write_elems}
    return OpSpec(name, kind, shape, flops, (read_elems + write_elems) * arch.dtype_bytes)


def _norm(name: str, arch: ModelArch, num_tokens: int) -> OpSpec:
    # Fused add + RMSNorm: reads x and the residual, writes the new residual and the output.
    elems = num_tokens * arch.hidden_size
    weight_bytes = arch.hidden_size * arch.dtype_bytes
    hbm_bytes = 4 * elems * arch.dtype_bytes + weight_bytes
    shape = {"read": 2 * elems, "write": 2 * elems}
    return OpSpec(name, "norm", shape, _NORM_FLOPS * elems, hbm_bytes, weight_bytes)


def attention_in_ops(arch: ModelArch, num_tokens: int) -> list[OpSpec]:
    """Input norm to KV-cache write: every op of a layer before attention."""
    t, dt = num_tokens, arch.dtype_bytes
    qk_elems = t * (arch.q_size + arch.kv_size)
    ops = [
        _norm("input_norm", arch, t),
        gemm("qkv", t, arch.q_size + 2 * arch.kv_size, arch.hidden_size, dt, arch.attention_bias),
    ]
    if arch.qk_norm:
        ops.append(_elementwise("qk_norm", "norm", qk_elems, qk_elems, _NORM_FLOPS * qk_elems, arch))
    ops.append(_elementwise("rope", "rope", qk_elems, qk_elems, _ROPE_FLOPS * qk_elems, arch))
    kv_elems = 2 * t * arch.kv_size
    ops.append(_elementwise("kv_write", "kv_write", kv_elems, kv_elems, 0.0, arch))
    return ops


def attention_out_ops(arch: ModelArch, num_tokens: int) -> list[OpSpec]:
    """O projection to the end of the MLP: every op of a layer after attention."""
    t, dt, h = num_tokens, arch.dtype_bytes, arch.hidden_size
    ops = [gemm("o", t, h, arch.q_size, dt), _norm("post_attn_norm", arch, t)]
    if not arch.is_moe:
        return ops + _swiglu("", arch, t, arch.intermediate_size)
    ops += _moe_ops(arch, t)
    if arch.shared_expert_intermediate_size:
        ops += _swiglu("shared_", arch, t, arch.shared_expert_intermediate_size)
    return ops


def dense_layer_ops(arch: ModelArch, num_tokens: int) -> list[OpSpec]:
    """Every op of a layer whose cost depends only on the token count (all but attention)."""
    if num_tokens == 0:
        return []
    return attention_in_ops(arch, num_tokens) + attention_out_ops(arch, num_tokens)


def _swiglu(prefix: str, arch: ModelArch, num_tokens: int, width: int) -> list[OpSpec]:
    t, dt, h = num_tokens, arch.dtype_bytes, arch.hidden_size
    act_elems = t * width
    return [
        gemm(f"{prefix}gate_up", t, 2 * width, h, dt),
        _elementwise(f"{prefix}silu_mul", "act", 2 * act_elems, act_elems,
                     _SILU_MUL_FLOPS * act_elems, arch),
        gemm(f"{prefix}down", t, h, width, dt),
    ]


def expected_experts_hit(num_experts: int, top_k: int, num_tokens: int) -> float:
    """Distinct experts that receive >= 1 of T tokens under uniform top-k routing:
    E * (1 - (1 - k/E)^T). An upper bound: real routing is skewed (policies.md 4.3)."""
    if num_experts == 0 or num_tokens == 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** num_tokens)


def _moe_ops(arch: ModelArch, num_tokens: int) -> list[OpSpec]:
    t, dt, h = num_tokens, arch.dtype_bytes, arch.hidden_size
    e, k, w = arch.num_experts, arch.num_experts_per_tok, arch.moe_intermediate_size
    rows = t * k
    hit = expected_experts_hit(e, k, t)
    route_bytes = rows * _ROUTING_ID_BYTES

    def grouped(name: str, n: int, kdim: int) -> OpSpec:
        weight_bytes = hit * n * kdim * dt
        shape = {"rows": rows, "n": n, "k": kdim, "experts_hit": hit}
        io_bytes = (rows * kdim + rows * n) * dt + route_bytes
        return OpSpec(name, "moe_gemm", shape, 2.0 * rows * n * kdim, weight_bytes + io_bytes,
                      weight_bytes)

    return [
        gemm("router", t, e, h, dt),
        OpSpec("topk_softmax", "router", {"tokens": t, "experts": e}, 5.0 * t * e,
               t * e * dt + route_bytes),
        # Sort assignments by expert, padded per expert to the grouped GEMM's row tile.
        OpSpec("moe_align", "router", {"rows": rows, "experts": e}, float(rows), 2 * route_bytes),
        grouped("moe_gate_up", 2 * w, h),
        _elementwise("moe_silu_mul", "act", 2 * rows * w, rows * w, _SILU_MUL_FLOPS * rows * w,
                     arch),
        grouped("moe_down", h, w),
        # Weighted sum of each token's k expert outputs.
        _elementwise("moe_combine", "act", rows * h, t * h, 2.0 * rows * h, arch),
    ]


def prefill_attention(arch: ModelArch, q_tokens: int, prefix_tokens: int) -> OpSpec:
    """Causal attention of one chunk of q new tokens over prefix + q keys.

    New token i (0-based) attends to prefix + i + 1 keys, so the chunk attends to
    q*prefix + q*(q+1)/2 positions; each costs 4*heads*head_dim FLOPs (QK^T and PV). Reads the
    prefix KV and the new KV once, reads Q and writes the output.
    """
    q, p = q_tokens, prefix_tokens
    attended = q * p + q * (q + 1) // 2
    flops = 4.0 * arch.num_heads * arch.head_dim * attended
    kv_bytes = (p + q) * arch.kv_bytes_per_token_per_layer
    io_bytes = 2 * q * arch.q_size * arch.dtype_bytes
    shape = {"q": q, "prefix": p, "attended": attended}
    return OpSpec("attn_prefill", "attn_prefill", shape, flops, kv_bytes + io_bytes)


def decode_attention_cost(
    arch: ModelArch, num_decodes: int, context_tokens: int
) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of decode attention: each decode reads its whole context's KV."""
    flops = 4.0 * arch.num_heads * arch.head_dim * context_tokens
    io_bytes = 2 * num_decodes * arch.q_size * arch.dtype_bytes
    return flops, context_tokens * arch.kv_bytes_per_token_per_layer + io_bytes


def decode_attention(arch: ModelArch, batch: BatchShape) -> OpSpec:
    flops, hbm_bytes = decode_attention_cost(arch, batch.num_decodes, batch.decode_context)
    shape = {"num_decodes": batch.num_decodes, "context": batch.decode_context,
             "max_context": batch.max_decode_context}
    return OpSpec("attn_decode", "attn_decode", shape, flops, hbm_bytes)


def runs_prefill(arch: ModelArch, batch: BatchShape, layer: int) -> bool:
    """Whether the prefill chunks pass through this layer (layered prefill runs a range)."""
    if not batch.prefill_tokens:
        return False
    start, end = batch.prefill_layers or (0, arch.num_layers)
    return start <= layer < end


def layer_ops(arch: ModelArch, batch: BatchShape, layer: int) -> list[OpSpec]:
    """The ops of one transformer layer; outside `prefill_layers` only the decodes run."""
    with_prefill = runs_prefill(arch, batch, layer)
    tokens = batch.num_decodes + (batch.num_prefill_tokens if with_prefill else 0)
    if tokens == 0:
        return []
    attention: list[OpSpec] = []
    if with_prefill:
        chunks = zip(batch.prefill_tokens, batch.prefill_prefix, strict=True)
        attention += [prefill_attention(arch, q, p) for q, p in chunks if q > 0]
    if batch.num_decodes:
        attention.append(decode_attention(arch, batch))
    return attention_in_ops(arch, tokens) + attention + attention_out_ops(arch, tokens)


def embedding_ops(arch: ModelArch, num_tokens: int) -> list[OpSpec]:
    """Layer -1: gather one embedding row per token entering the first layer."""
    if num_tokens == 0:
        return []
    elems = num_tokens * arch.hidden_size
    return [_elementwise("embedding", "embed", elems, elems, 0.0, arch)]


def head_ops(arch: ModelArch, num_tokens: int, num_logits: int) -> list[OpSpec]:
    """Layer num_layers: final norm of the tokens leaving the last layer, LM head and sampler
    on the `num_logits` rows that produce a token."""
    ops = [_norm("final_norm", arch, num_tokens)] if num_tokens else []
    if num_logits:
        ops.append(gemm("lm_head", num_logits, arch.vocab_size, arch.hidden_size, arch.dtype_bytes))
        logit_bytes = num_logits * arch.vocab_size * _LOGIT_BYTES
        ops.append(OpSpec("sample", "sample", {"rows": num_logits, "vocab": arch.vocab_size},
                          5.0 * num_logits * arch.vocab_size, logit_bytes))
    return ops


def boundary_tokens(arch: ModelArch, batch: BatchShape) -> tuple[int, int]:
    """Tokens entering the first layer and leaving the last one (layered prefill: a cohort
    is embedded on its first layer group and normed on its last)."""
    entering = leaving = batch.num_decodes
    if runs_prefill(arch, batch, 0):
        entering += batch.num_prefill_tokens
    if runs_prefill(arch, batch, arch.num_layers - 1):
        leaving += batch.num_prefill_tokens
    return entering, leaving


def forward_ops(arch: ModelArch, batch: BatchShape) -> list[tuple[int, OpSpec]]:
    """Every op of the pass as (layer, op); layer -1 is before the first, num_layers after."""
    if batch.is_empty:
        return []
    entering, leaving = boundary_tokens(arch, batch)
    ops = [(-1, op) for op in embedding_ops(arch, entering)]
    for layer in range(arch.num_layers):
        ops += [(layer, op) for op in layer_ops(arch, batch, layer)]
    ops += [(arch.num_layers, op) for op in head_ops(arch, leaving, batch.num_logits)]
    return ops


def expert_bytes_read(arch: ModelArch, batch: BatchShape) -> float:
    """Bytes of routed-expert weights one pass reads (0 for dense models): per layer, the
    experts its tokens hit. Layered prefill reads the cohort's experts only in its layer group,
    which is where its saving over chunked prefill comes from (policies.md §4.3)."""
    if not arch.is_moe or batch.is_empty:
        return 0.0
    e, k = arch.num_experts, arch.num_experts_per_tok
    start, end = batch.prefill_layers or (0, arch.num_layers)
    prefill_layers = end - start if batch.prefill_tokens else 0
    mixed = expected_experts_hit(e, k, batch.num_decodes + batch.num_prefill_tokens)
    decode_only = expected_experts_hit(e, k, batch.num_decodes)
    hit = prefill_layers * mixed + (arch.num_layers - prefill_layers) * decode_only
    return hit * arch.expert_bytes
