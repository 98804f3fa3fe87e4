"""Mixture-of-experts layer: top-k softmax routing, token alignment per expert, grouped GEMMs
for gate_up and down (routing weights applied in the down GEMM's epilogue) and the combine.

Pipeline of `fused_moe` (x: [T, H], w13: [E, 2I, H], w2: [E, H, I]):
  topk_softmax -> moe_align (entries t*k+j sorted by expert, each expert padded to BLOCK_M)
  -> grouped GEMM x[entry // k] @ w13[e].T -> silu_and_mul -> grouped GEMM @ w2[e].T * weight
  -> moe_combine (sum over the k entries of each token).
The grouped GEMM grids are sized from the static bound T*k + E*(BLOCK_M - 1) padded rows;
programs past the real padded count exit at once, so nothing waits on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_tensor, next_pow2
from servesim.kernels.activation import silu_and_mul


@triton.jit
def _topk_softmax_kernel(logits_ptr, w_ptr, ids_ptr, E, stride_l, TOP_K: tl.constexpr,
                         BLOCK_E: tl.constexpr, RENORMALIZE: tl.constexpr):
    # logits: [T, E] -> weights fp32 [T, TOP_K], ids int32 [T, TOP_K]; grid (T,)
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + t * stride_l + e, mask=e < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    p = tl.where(e < E, p, -1.0)
    total = 0.0
    if RENORMALIZE:
        q = p
        for _i in tl.static_range(TOP_K):
            total += tl.max(q, axis=0)
            q = tl.where(e == tl.argmax(q, axis=0), -1.0, q)
    for i in tl.static_range(TOP_K):
        best = tl.argmax(p, axis=0)
        val = tl.max(p, axis=0)
        if RENORMALIZE:
            val = val / total
        tl.store(w_ptr + t * TOP_K + i, val)
        tl.store(ids_ptr + t * TOP_K + i, best.to(tl.int32))
        p = tl.where(e == best, -1.0, p)


@triton.jit
def _moe_count_kernel(ids_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    # topk_ids (flat [T*k]) -> counts[E] += 1 per entry
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    e = tl.load(ids_ptr + offs, mask=mask, other=0)
    tl.atomic_add(counts_ptr + e, tl.full((BLOCK,), 1, tl.int32), mask=mask)


@triton.jit
def _moe_offsets_kernel(counts_ptr, offsets_ptr, ends_ptr, total_ptr, E,
                        BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    # One program: padded per-expert start and end rows and the padded total.
    e = tl.arange(0, BLOCK_E)
    cnt = tl.load(counts_ptr + e, mask=e < E, other=0)
    padded = tl.cdiv(cnt, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    tl.store(offsets_ptr + e, ends - padded, mask=e < E)
    tl.store(ends_ptr + e, ends, mask=e < E)
    tl.store(total_ptr, tl.sum(padded, axis=0))


@triton.jit
def _moe_expert_ids_kernel(ends_ptr, total_ptr, expert_ids_ptr, E, NUM_BLOCKS,
                           BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
    # Row block b belongs to the first expert whose padded end row exceeds b * BLOCK_M.
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    e = tl.arange(0, BLOCK_E)
    ends = tl.load(ends_ptr + e, mask=e < E, other=2**30)
    expert = tl.sum((ends[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32), axis=1)
    expert = tl.where(b * BLOCK_M < tl.load(total_ptr), expert, -1)
    tl.store(expert_ids_ptr + b, expert, mask=b < NUM_BLOCKS)


@triton.jit
def _moe_scatter_kernel(ids_ptr, cursor_ptr, sorted_ptr, N, BLOCK: tl.constexpr):
    # Each entry takes the next free row of its expert (order within an expert is irrelevant:
    # every output row depends on its own entry only).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    e = tl.load(ids_ptr + offs, mask=mask, other=0)
    row = tl.atomic_add(cursor_ptr + e, tl.full((BLOCK,), 1, tl.int32), mask=mask)
    tl.store(sorted_ptr + row, offs.to(tl.int32), mask=mask)


@triton.jit
def _moe_gemm_kernel(
    a_ptr, w_ptr, c_ptr, topk_w_ptr, sorted_ptr, expert_ids_ptr, total_ptr, N, K, num_entries,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_cm, stride_cn,
    ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # c[entry] = a[entry // ROW_DIV] @ w[expert].T (* topk_w[entry]); grid (N tiles, row blocks)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    entry = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    ok = entry < num_entries
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = tl.where(ok, entry // ROW_DIV, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = w_ptr + expert * stride_we + (offs_n % N)[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=ok[:, None] & (offs_k[None, :] < k_left), other=0.0)  # [BM, BK]
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)  # [BK, BN]
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_wk
    if MUL_WEIGHT:
        acc *= tl.load(topk_w_ptr + entry, mask=ok, other=0.0)[:, None]
    c_ptrs = c_ptr + entry.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=ok[:, None] & (offs_n[None, :] < N))


@triton.jit
def _moe_combine_kernel(y_ptr, out_ptr, H, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    # y: [T * TOP_K, H] -> out: [T, H], summed in fp32; grid (T, H / BLOCK)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    acc = tl.zeros((BLOCK,), tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + (t * TOP_K + j) * H + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def topk_softmax(logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts, then the top_k (descending). Returns (weights fp32 [T, k],
    ids int32 [T, k]); with renormalize the k weights sum to 1 (Mixtral, Qwen3-MoE)."""
    check_tensor("logits", logits, 2)
    t, e = logits.shape
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k must be in [1, {e}], got {top_k}")
    weights = torch.empty((t, top_k), device=logits.device, dtype=torch.float32)
    ids = torch.empty((t, top_k), device=logits.device, dtype=torch.int32)
    if t:
        _topk_softmax_kernel[(t,)](logits, weights, ids, e, logits.stride(0), TOP_K=top_k,
                                   BLOCK_E=next_pow2(e), RENORMALIZE=renormalize, num_warps=1)
    return weights, ids


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the T*k entries by expert, padding each expert's rows to a multiple of block_m.
    Returns sorted_ids int32 [bound] (padding = T*k), expert_ids int32 [bound / block_m]
    (-1 past the end) and total int32 [1], the padded row count."""
    check_tensor("topk_ids", topk_ids, 2, (torch.int32,))
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    bound = triton.cdiv(n + num_experts * (block_m - 1), block_m) * block_m
    dev = topk_ids.device
    counts = torch.zeros(num_experts, device=dev, dtype=torch.int32)
    offsets = torch.empty(num_experts, device=dev, dtype=torch.int32)
    ends = torch.empty(num_experts, device=dev, dtype=torch.int32)
    sorted_ids = torch.full((bound,), n, device=dev, dtype=torch.int32)
    expert_ids = torch.empty((bound // block_m,), device=dev, dtype=torch.int32)
    total = torch.zeros(1, device=dev, dtype=torch.int32)
    if n == 0:
        return sorted_ids, expert_ids.fill_(-1), total
    block = 256
    _moe_count_kernel[(triton.cdiv(n, block),)](flat, counts, n, BLOCK=block)
    block_e = next_pow2(num_experts)
    _moe_offsets_kernel[(1,)](counts, offsets, ends, total, num_experts, BLOCK_M=block_m, BLOCK_E=block_e)
    n_blocks = expert_ids.numel()
    _moe_expert_ids_kernel[(triton.cdiv(n_blocks, 64),)](
        ends, total, expert_ids, num_experts, n_blocks, BLOCK_M=block_m, BLOCK_B=64, BLOCK_E=block_e
    )
    _moe_scatter_kernel[(triton.cdiv(n, block),)](flat, offsets, sorted_ids, n, BLOCK=block)
    return sorted_ids, expert_ids, total


def moe_block_config(num_tokens: int, top_k: int, num_experts: int, on_gpu: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) by mean tokens per expert: BLOCK_M 16 at
    decode sizes (few padded rows), 64 for prefill, as in vLLM's H200 tables."""
    if not on_gpu:
        return 16, 32, 32, 4, 1
    per_expert = num_tokens * top_k / num_experts
    if per_expert <= 16:
        return 16, 64, 128, 4, 4
    if per_expert <= 64:
        return 32, 64, 128, 4, 4
    return 64, 128, 64, 8, 3


def moe_grouped_gemm(a, w, sorted_ids, expert_ids, total, num_entries, row_div, topk_weights, block) -> torch.Tensor:
    """out [num_entries, N] = a[entry // row_div] @ w[expert].T (times topk_weights if given)."""
    bm, bn, bk, warps, stages = block
    n, k = w.shape[1], w.shape[2]
    out = torch.empty((num_entries, n), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(n, bn), expert_ids.numel())
    _moe_gemm_kernel[grid](
        a, w, out, topk_weights if topk_weights is not None else a, sorted_ids, expert_ids, total,
        n, k, num_entries, a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2),
        out.stride(0), out.stride(1), ROW_DIV=row_div, MUL_WEIGHT=topk_weights is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return out


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """MoE MLP of x [T, H]: sum_j topk_weights[t, j] * down_e(silu(gate_e) * up_e) over the
    experts e = topk_ids[t, j]; w13: [E, 2I, H] (gate rows then up rows), w2: [E, H, I].
    `out` [T, H] may be given (it must not overlap x)."""
    check_tensor("x", x, 2)
    check_tensor("w13", w13, 3, (x.dtype,))
    check_tensor("w2", w2, 3, (x.dtype,))
    check_tensor("topk_weights", topk_weights, 2, (torch.float32,))
    check_tensor("topk_ids", topk_ids, 2, (torch.int32,))
    t, h = x.shape
    e, two_i, _ = w13.shape
    if w13.shape[2] != h or tuple(w2.shape) != (e, h, two_i // 2) or two_i % 2:
        raise ValueError(f"x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}: expected "
                         f"w13 [E, 2I, {h}] and w2 [E, {h}, I]")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_weights {tuple(topk_weights.shape)} must be [{t}, k]")
    top_k = topk_ids.shape[1]
    if out is None:
        out = torch.empty_like(x)
    check_tensor("out", out, 2, (x.dtype,))
    if out.shape != x.shape or out.stride(0) != h:
        raise ValueError(f"out must be a contiguous {tuple(x.shape)}, got {tuple(out.shape)} "
                         f"with strides {out.stride()}")
    if t == 0:
        return out
    block = moe_block_config(t, top_k, e, x.device.type == "cuda")
    sorted_ids, expert_ids, total = moe_align(topk_ids, e, block[0])
    n_entries = t * top_k
    inter = moe_grouped_gemm(x, w13, sorted_ids, expert_ids, total, n_entries, top_k, None, block)
    act = silu_and_mul(inter)  # [T*k, I]
    y = moe_grouped_gemm(act, w2, sorted_ids, expert_ids, total, n_entries, 1, topk_weights.reshape(-1), block)
    cb = min(1024, next_pow2(h))
    _moe_combine_kernel[(t, triton.cdiv(h, cb))](y, out, h, TOP_K=top_k, BLOCK=cb)
    return out


def topk_softmax_ref(logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference routing with torch.topk."""
    w, ids = logits.float().softmax(-1).topk(top_k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids.int()


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """Reference: loop over experts, with the kernel's rounding points (bf16/fp16 between ops)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    i = w2.shape[2]
    for ex in range(w13.shape[0]):
        tok, slot = (topk_ids == ex).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        inter = (x[tok].float() @ w13[ex].float().T).to(x.dtype).float()
        act = (torch.nn.functional.silu(inter[:, :i]) * inter[:, i:]).to(x.dtype).float()
        y = (act @ w2[ex].float().T * topk_weights[tok, slot, None]).to(x.dtype).float()
        out.index_add_(0, tok, y)
    return out.to(x.dtype)
