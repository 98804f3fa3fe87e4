"""Decode attention: one query token per sequence over the paged KV cache, GQA, split-KV.

Stage 1 runs one program per (sequence, KV head, split): the G query heads sharing the KV head
are padded to BLOCK_H >= 16 rows so QK and PV use tensor-core dots, and the program walks its
slice of the context with an online softmax, writing a partial output and its log-sum-exp.
Stage 2 merges the splits. The split count comes from the SM budget of the launch (a green
context of 8..132 SMs or the whole GPU): about two programs per SM, never slices below 256
tokens. With one split stage 1 writes the final output and stage 2 is skipped.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_tensor, next_pow2, resolve_num_sms
from servesim.kernels.attention_prefill import _check_paged, gather_kv_ref


@triton.jit
def _decode_attn_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr, part_ptr, lse_ptr, bt_ptr, ctx_ptr, qk_scale, tokens_per_split,
    split_tokens_ptr, stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_os, stride_oh, stride_bt,
    G: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLIT_TOKENS_IN_MEMORY: tl.constexpr,
):
    # q, out: [S, HQ, D]; part: [S, HQ, NUM_SPLITS, D] fp32; lse: [S, HQ, NUM_SPLITS] (log2)
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(ctx_ptr + s)
    if SPLIT_TOKENS_IN_MEMORY:  # a CUDA graph replays with the step's split size
        tokens_per_split = tl.load(split_tokens_ptr)
    begin = split * tokens_per_split
    end = tl.minimum(begin + tokens_per_split, ctx)
    h = tl.arange(0, BLOCK_H)
    head = kvh * G + h
    h_ok = h < G
    d = tl.arange(0, HEAD_D)
    q = tl.load(q_ptr + s.to(tl.int64) * stride_qs + head[:, None] * stride_qh + d[None, :],
                mask=h_ok[:, None], other=0.0)  # [BH, D]
    bt_row = bt_ptr + s.to(tl.int64) * stride_bt
    acc = tl.zeros((BLOCK_H, HEAD_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for start in range(begin, end, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < end
        page = tl.load(bt_row + j // PAGE, mask=j_ok, other=0).to(tl.int64)
        k_off = page * stride_kb + (j % PAGE) * stride_kt + kvh * stride_kh
        k = tl.load(kc_ptr + k_off[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)  # [BN, D]
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        qk = tl.where(j_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_off = page * stride_vb + (j % PAGE) * stride_vt + kvh * stride_vh
        v = tl.load(vc_ptr + v_off[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if NUM_SPLITS == 1:
        o_ptrs = out_ptr + s.to(tl.int64) * stride_os + head[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    else:
        # An empty split (begin >= ctx) leaves l_i = 0: it stores zeros and lse = -inf.
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        row = (s.to(tl.int64) * G * tl.num_programs(1) + head) * NUM_SPLITS + split
        tl.store(part_ptr + row[:, None] * HEAD_D + d[None, :], acc / safe_l[:, None], mask=h_ok[:, None])
        lse = tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf"))
        tl.store(lse_ptr + row, lse, mask=h_ok)


@triton.jit
def _decode_reduce_kernel(part_ptr, lse_ptr, out_ptr, HQ, stride_os, stride_oh,
                          NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_D: tl.constexpr):
    # grid (S, HQ): out[s, h] = sum_i 2^(lse_i - max) part_i / sum_i 2^(lse_i - max)
    s = tl.program_id(0)
    h = tl.program_id(1)
    row = s.to(tl.int64) * HQ + h
    sp = tl.arange(0, BLOCK_S)
    sp_ok = sp < NUM_SPLITS
    lse = tl.load(lse_ptr + row * NUM_SPLITS + sp, mask=sp_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    d = tl.arange(0, HEAD_D)
    part = tl.load(part_ptr + (row * NUM_SPLITS + sp)[:, None] * HEAD_D + d[None, :], mask=sp_ok[:, None], other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + s.to(tl.int64) * stride_os + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, num_sms: int) -> int:
    """Splits of the context per (sequence, KV head): about two programs per SM, >= 256 tokens
    per split, at most 64."""
    want = -(-2 * num_sms // max(1, num_seqs * num_kv_heads))
    return max(1, min(want, max_context_len // 256, 64))


def decode_split_plan(num_seqs: int, num_kv_heads: int, max_context_len: int, num_sms: int,
                      block_n: int = 64) -> tuple[int, int]:
    """(splits, tokens per split) of a launch: decode_num_splits' count, each split a whole
    number of BLOCK_N tiles, and only as many splits as those tiles need."""
    context = max(max_context_len, 1)
    splits = decode_num_splits(num_seqs, num_kv_heads, context, num_sms)
    tokens = triton.cdiv(triton.cdiv(context, splits), block_n) * block_n
    return triton.cdiv(context, tokens), tokens


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    max_context_len: int,
    sm_scale: float | None = None,
    num_sms: int | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    split_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one new token per sequence, q [S, Hq, D], over its context_lens[s] cached
    tokens (the new token's K/V included). max_context_len bounds context_lens (caller-given,
    so no device sync); num_sms is the SM budget (partition size), the device's by default.

    For a CUDA graph that replays with other contexts: `num_splits` fixes the split count and
    `split_tokens` (int32 [1] on the device) holds the tokens per split the kernel reads at
    each replay (`decode_split_plan` gives both for a step); padded rows need a context >= 1."""
    _check_paged(q, k_cache, v_cache, block_tables)
    check_tensor("context_lens", context_lens, 1, (torch.int32,))
    s, hq, d = q.shape
    if context_lens.shape[0] != s or block_tables.shape[0] != s:
        raise ValueError(
            f"q has {s} sequences but context_lens is {tuple(context_lens.shape)} and "
            f"block_tables {tuple(block_tables.shape)}"
        )
    if max_context_len > block_tables.shape[1] * k_cache.shape[1]:
        raise ValueError(f"max_context_len {max_context_len} exceeds the block tables' capacity")
    if out is None:
        out = torch.empty_like(q)
    check_tensor("out", out, 3, (q.dtype,))
    if out.shape != q.shape:
        raise ValueError(f"out must be {tuple(q.shape)}, got {tuple(out.shape)}")
    if s == 0 or max_context_len <= 0:
        return out
    hkv = k_cache.shape[2]
    g = hq // hkv
    on_gpu = q.device.type == "cuda"
    block_n = 64 if on_gpu else 16
    if (num_splits is None) != (split_tokens is None):
        raise ValueError("num_splits and split_tokens go together")
    if num_splits is None:
        splits, tokens_per_split = decode_split_plan(s, hkv, max_context_len,
                                                     resolve_num_sms(num_sms, q.device), block_n)
    else:
        assert split_tokens is not None
        check_tensor("split_tokens", split_tokens, 1, (torch.int32,))
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        splits, tokens_per_split = num_splits, block_n
    part = lse = out  # placeholders when there is one split
    if splits > 1:
        part = torch.empty((s, hq, splits, d), device=q.device, dtype=torch.float32)
        lse = torch.empty((s, hq, splits), device=q.device, dtype=torch.float32)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    _decode_attn_kernel[(s, hkv, splits)](
        q, k_cache, v_cache, out, part, lse, block_tables, context_lens, scale * math.log2(math.e),
        tokens_per_split, context_lens if split_tokens is None else split_tokens, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0),
        G=g, HEAD_D=d, BLOCK_H=max(16, next_pow2(g)), BLOCK_N=block_n, PAGE=k_cache.shape[1],
        NUM_SPLITS=splits, SPLIT_TOKENS_IN_MEMORY=split_tokens is not None, num_warps=4,
        num_stages=3 if on_gpu else 1,
    )
    if splits > 1:
        _decode_reduce_kernel[(s, hq)](
            part, lse, out, hq, out.stride(0), out.stride(1),
            NUM_SPLITS=splits, BLOCK_S=next_pow2(splits), HEAD_D=d, num_warps=4,
        )
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Reference: per sequence, gather its context, expand GQA heads, softmax in fp32."""
    s, hq, d = q.shape
    g = hq // k_cache.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    for i, n in enumerate(context_lens.tolist()):
        k = gather_kv_ref(k_cache, block_tables[i], n, g)  # [n, HQ, D]
        v = gather_kv_ref(v_cache, block_tables[i], n, g)
        p = (torch.einsum("hd,nhd->hn", q[i].float(), k) * scale).softmax(-1)
        out[i] = torch.einsum("hn,nhd->hd", p, v).to(q.dtype)
    return out
