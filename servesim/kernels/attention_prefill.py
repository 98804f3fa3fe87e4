"""Prefill attention over packed variable-length sequences with a KV prefix (chunked prefill),
reading every K/V row from the paged cache through block tables.

Sequence s owns the query rows cu_seqlens_q[s]:cu_seqlens_q[s+1] (its L_s new tokens) and a
prefix of prefix_lens[s] tokens already cached; the new tokens' K/V have been written into the
cache first (kv_cache.py), so the cache holds P_s + L_s tokens. New token i sits at position
P_s + i and attends to cached positions 0..P_s + i (causal within the new tokens).

One program handles BLOCK_M rows = BLOCK_M // G query tokens x the G query heads that share one
KV head (GQA packing), so each K/V tile is loaded once for the whole group. Keys below the
program's first query position need no causal mask; only the last (diagonal) tiles are masked.
Softmax runs in base 2 with the scale folded into log2(e).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_tensor


@triton.jit
def _attn_tile(acc, m_i, l_i, q, kc_ptr, vc_ptr, bt_row_ptr, start, q_pos, kv_end, kv_off, d,
               stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
               MASKED: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    j = start + tl.arange(0, BLOCK_N)  # key positions
    if MASKED:
        page = tl.load(bt_row_ptr + j // PAGE, mask=j < kv_end, other=0).to(tl.int64)
    else:
        page = tl.load(bt_row_ptr + j // PAGE).to(tl.int64)
    slot = j % PAGE
    k = tl.load(kc_ptr + (page * stride_kb + slot * stride_kt + kv_off)[:, None] + d[None, :])  # [BN, D]
    qk = tl.dot(q, tl.trans(k)) * qk_scale  # [BM, BN], log2 units
    if MASKED:
        qk = tl.where((j[None, :] <= q_pos[:, None]) & (j[None, :] < kv_end), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(vc_ptr + (page * stride_vb + slot * stride_vt + kv_off)[:, None] + d[None, :])  # [BN, D]
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _prefill_attn_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr, cu_q_ptr, prefix_ptr, bt_ptr, qk_scale, num_q_blocks,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_bt,
    G: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr,
):
    # q, out: [T, HQ, D]; caches: [blocks, PAGE, HKV, D]; grid (query blocks, seqs, HKV)
    BLOCK_Q: tl.constexpr = BLOCK_M // G
    qb = num_q_blocks - 1 - tl.program_id(0)  # longest (most causal work) blocks first
    s = tl.program_id(1)
    kvh = tl.program_id(2)
    q_begin = tl.load(cu_q_ptr + s)
    q_len = tl.load(cu_q_ptr + s + 1) - q_begin
    q0 = qb * BLOCK_Q
    if q0 >= q_len:
        return
    prefix = tl.load(prefix_ptr + s)
    rows = tl.arange(0, BLOCK_M)
    tok = q0 + rows // G
    head = kvh * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (tok < q_len)
    d = tl.arange(0, HEAD_D)
    q_rows = (q_begin + tok).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)  # [BM, D]
    q_pos = prefix + tok
    kv_end = prefix + tl.minimum(q0 + BLOCK_Q, q_len)
    free_end = ((prefix + q0) // BLOCK_N) * BLOCK_N  # keys every row may see
    bt_row = bt_ptr + s.to(tl.int64) * stride_bt
    kv_off = kvh * stride_kh
    acc = tl.zeros((BLOCK_M, HEAD_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, free_end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, kc_ptr, vc_ptr, bt_row, start, q_pos, kv_end,
                                   kv_off, d, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
                                   False, BLOCK_N, PAGE)
    for start in range(free_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, kc_ptr, vc_ptr, bt_row, start, q_pos, kv_end,
                                   kv_off, d, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
                                   True, BLOCK_N, PAGE)
    out = acc / l_i[:, None]
    o_rows = (q_begin + tok).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(out_ptr + o_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _check_paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor) -> None:
    check_tensor("q", q, 3)
    check_tensor("k_cache", k_cache, 4, (q.dtype,))
    check_tensor("v_cache", v_cache, 4, (q.dtype,))
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"head_dim of q ({d}) and of the cache ({k_cache.shape[3]}) differ")
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if d & (d - 1) or d < 16:
        raise ValueError(f"head_dim must be a power of two >= 16, got {d}")
    if k_cache.shape[1] & (k_cache.shape[1] - 1):
        raise ValueError(f"block_size must be a power of two, got {k_cache.shape[1]}")


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_seqlen_q: int,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal GQA attention of packed new tokens q [T, Hq, D] over the paged cache.

    cu_seqlens_q int32 [S+1]; prefix_lens int32 [S]; block_tables int32 [S, max_blocks];
    max_seqlen_q >= the longest new-token run (given by the caller, so no device sync)."""
    _check_paged(q, k_cache, v_cache, block_tables)
    check_tensor("cu_seqlens_q", cu_seqlens_q, 1, (torch.int32,))
    check_tensor("prefix_lens", prefix_lens, 1, (torch.int32,))
    s = prefix_lens.shape[0]
    if cu_seqlens_q.shape[0] != s + 1 or block_tables.shape[0] != s:
        raise ValueError(
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)}, prefix_lens {tuple(prefix_lens.shape)} and "
            f"block_tables {tuple(block_tables.shape)} must describe the same {s} sequences"
        )
    t, hq, d = q.shape
    hkv = k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    check_tensor("out", out, 3, (q.dtype,))
    if out.shape != q.shape:
        raise ValueError(f"out must be {tuple(q.shape)}, got {tuple(out.shape)}")
    if t == 0 or s == 0 or max_seqlen_q <= 0:
        return out
    g = hq // hkv
    on_gpu = q.device.type == "cuda"
    block_m = 128 if on_gpu else 16 * triton.next_power_of_2(g)
    block_m = max(block_m, triton.next_power_of_2(g))
    block_n = 64 if on_gpu else 16
    block_q = block_m // g
    num_q_blocks = triton.cdiv(max_seqlen_q, block_q)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    _prefill_attn_kernel[(num_q_blocks, s, hkv)](
        q, k_cache, v_cache, out, cu_seqlens_q, prefix_lens, block_tables, scale * math.log2(math.e),
        num_q_blocks, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0),
        G=g, HEAD_D=d, BLOCK_M=block_m, BLOCK_N=block_n, PAGE=k_cache.shape[1],
        num_warps=8 if on_gpu else 4, num_stages=3 if on_gpu else 1,
    )
    return out


def gather_kv_ref(cache: torch.Tensor, block_table_row: torch.Tensor, n: int, group: int) -> torch.Tensor:
    """The first n cached tokens of one sequence, fp32 [n, Hkv * group, D] (GQA heads expanded)."""
    bs = cache.shape[1]
    pos = torch.arange(n, device=cache.device)
    return cache[block_table_row.long()[pos // bs], pos % bs].float().repeat_interleave(group, dim=1)


def prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Reference: per sequence, gather K/V, expand GQA heads, masked softmax in fp32."""
    t, hq, d = q.shape
    g = hq // k_cache.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for s, p in enumerate(prefix_lens.tolist()):
        n_new = cu[s + 1] - cu[s]
        if n_new == 0:
            continue
        k = gather_kv_ref(k_cache, block_tables[s], p + n_new, g)
        v = gather_kv_ref(v_cache, block_tables[s], p + n_new, g)
        qs = q[cu[s] : cu[s + 1]].float()  # [L, HQ, D]
        scores = torch.einsum("lhd,nhd->hln", qs, k) * scale
        allowed = torch.arange(p + n_new)[None, :] <= (p + torch.arange(n_new))[:, None]
        scores = scores.masked_fill(~allowed.to(q.device)[None], float("-inf"))
        out[cu[s] : cu[s + 1]] = torch.einsum("hln,nhd->lhd", scores.softmax(-1), v).to(q.dtype)
    return out
