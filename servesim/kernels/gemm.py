"""Dense GEMM out = x @ w.T (torch.nn.functional.linear without bias) for QKV, O, gate_up,
down and the LM head, at 1 to 32k tokens.

Three kernels, one frozen configuration each per (N, K, M bucket) (see configs.py):
- `_gemm_tma_kernel`: persistent, one program per SM of the partition, tiles in grouped order,
  operands through tensor descriptors (TMA on Hopper). Used for M > 64.
- `_gemm_tiled_kernel`: one program per output tile in grouped order with pointer loads; the
  fallback when strides are not 16-byte aligned for TMA.
- `_gemm_splitk_kernel` + `_splitk_reduce_kernel`: decode sizes (M <= 64). Few output tiles
  exist there, so K is split to give every SM work; fp32 partials are summed by a second kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from servesim.kernels._common import check_same, check_tensor, resolve_num_sms
from servesim.kernels.configs import GemmConfig, gemm_config, split_k_for


@triton.jit
def _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Walk GROUP_M rows of tiles column by column so that W tiles are reused from L2.
    per_group = GROUP_M * num_pid_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % group_rows
    pid_n = (tile % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _gemm_tma_kernel(
    x_desc, w_desc, out_desc, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
):
    # x: [M, K], w: [N, K], out: [M, N]; grid = NUM_PROGRAMS <= SMs of the partition.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(k_tiles):
            a = x_desc.load([pid_m * BLOCK_M, kt * BLOCK_K])  # [BM, BK]
            b = w_desc.load([pid_n * BLOCK_N, kt * BLOCK_K])  # [BN, BK]
            acc = tl.dot(a, b.T, acc)
        out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_desc.dtype))


@triton.jit
def _gemm_tiled_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Row indices wrap (mod M, N) so the loads need no row mask; the store masks them.
    a_ptrs = x_ptr + (offs_m % M)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    b_ptrs = w_ptr + (offs_n % N)[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)  # [BM, BK]
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)  # [BK, BN]
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_wk
    o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _gemm_splitk_kernel(
    x_ptr, w_ptr, part_ptr, M, N, K, K_PER_SPLIT,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ps, stride_pm, stride_pn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid: (N tiles, splits, M tiles); part: [splits, M, N] fp32, or out [M, N] with 1 split.
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_begin = split * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    a_ptrs = x_ptr + (offs_m % M)[:, None] * stride_xm + (k_begin + offs_k)[None, :] * stride_xk
    b_ptrs = w_ptr + (offs_n % N)[None, :] * stride_wn + (k_begin + offs_k)[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k_left = k_end - k0
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)  # [BM, BK]
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)  # [BK, BN]
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_wk
    p_ptrs = part_ptr + split * stride_ps + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc.to(part_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _splitk_reduce_kernel(part_ptr, out_ptr, MN, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    # part: [SPLITS, M*N] fp32 (contiguous) -> out: [M*N]
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _tma_ok(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> bool:
    # Tensor descriptors need 16-byte aligned bases and row strides.
    for t in (x, w, out):
        if t.stride(-1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    return True


def _launch_tma(x, w, out, cfg: GemmConfig, num_sms: int) -> None:
    m, k = x.shape
    n = w.shape[0]
    x_desc = TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor.from_tensor(w, [cfg.block_n, cfg.block_k])
    o_desc = TensorDescriptor.from_tensor(out, [cfg.block_m, cfg.block_n])
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    programs = min(num_sms, tiles)
    _gemm_tma_kernel[(programs,)](
        x_desc, w_desc, o_desc, m, n, k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        NUM_PROGRAMS=programs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _launch_tiled(x, w, out, cfg: GemmConfig) -> None:
    m, k = x.shape
    n = w.shape[0]
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _gemm_tiled_kernel[grid](
        x, w, out, m, n, k, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _launch_splitk(x, w, out, cfg: GemmConfig, num_sms: int) -> None:
    m, k = x.shape
    n = w.shape[0]
    splits = split_k_for(m, n, k, cfg, num_sms)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.block_k), splits) * cfg.block_k
    splits = triton.cdiv(k, k_per_split)
    part = out if splits == 1 else torch.empty((splits, m, n), device=x.device, dtype=torch.float32)
    ps = 0 if splits == 1 else part.stride(0)
    grid = (triton.cdiv(n, cfg.block_n), splits, triton.cdiv(m, cfg.block_m))
    _gemm_splitk_kernel[grid](
        x, w, part, m, n, k, k_per_split, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
        ps, part.stride(-2), part.stride(-1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if splits > 1:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](
            part, out, m * n, SPLITS=splits, BLOCK=block, num_warps=4
        )


def gemm(
    x: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor | None = None,
    num_sms: int | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """out[M, N] = x[M, K] @ w[N, K].T with fp32 accumulation, on at most num_sms SMs.

    `config` overrides the frozen choice (for the config search in benchmarks/kernels.py).
    """
    check_tensor("x", x, 2)
    check_tensor("w", w, 2)
    check_same("dtypes of x and w", {"x": x.dtype, "w": w.dtype})
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"x is [M={m}, K={k}] but w is {tuple(w.shape)}; expected [N, {k}]")
    if m == 0 or n == 0 or k == 0:
        raise ValueError(f"empty GEMM: x {tuple(x.shape)}, w {tuple(w.shape)}")
    if out is None:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    check_tensor("out", out, 2, (x.dtype,))
    if tuple(out.shape) != (m, n):
        raise ValueError(f"out must be [{m}, {n}], got {tuple(out.shape)}")
    sms = resolve_num_sms(num_sms, x.device)
    cfg = config or gemm_config(m, n, k, sms)
    if cfg.kind == "splitk":
        _launch_splitk(x, w, out, cfg, sms)
    elif cfg.kind == "tma" and _tma_ok(x, w, out):
        _launch_tma(x, w, out, cfg, sms)
    else:
        _launch_tiled(x, w, out, cfg)
    return out


def gemm_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Reference: fp32 matmul of the same operands, cast to x's dtype."""
    return (x.float() @ w.float().T).to(x.dtype)
