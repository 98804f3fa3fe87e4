"""Rotary position embedding (NeoX layout: the two halves of each head are rotated as pairs),
applied in place to q and k. cos/sin are computed inside the kernel from the token positions
and the inverse frequencies, so no cos/sin cache is read."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_tensor, next_pow2


@triton.jit
def _rope_rotate(base_ptr, stride_h, n_heads, cos, sin, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    ptrs = base_ptr + heads[:, None] * stride_h + d[None, :]
    mask = heads[:, None] < n_heads
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, HALF]
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, (x1 * cos - x2 * sin).to(base_ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + HALF, (x2 * cos + x1 * sin).to(base_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, inv_freq_ptr, HQ, HKV,
    stride_qt, stride_qh, stride_kt, stride_kh,
    HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
):
    # q: [T, HQ, 2 * HALF], k: [T, HKV, 2 * HALF], positions: [T], inv_freq: [HALF]; grid (T,)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.float32)
    angle = pos * tl.load(inv_freq_ptr + tl.arange(0, HALF))  # [HALF]
    cos = tl.cos(angle)[None, :]
    sin = tl.sin(angle)[None, :]
    _rope_rotate(q_ptr + t * stride_qt, stride_qh, HQ, cos, sin, HALF, BLOCK_HQ)
    _rope_rotate(k_ptr + t * stride_kt, stride_kh, HKV, cos, sin, HALF, BLOCK_HKV)


def rope_inv_freq(head_dim: int, theta: float = 10000.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Plain RoPE inverse frequencies theta^(-2i/d), fp32 [head_dim / 2]. Scaled variants
    (Llama-3.1's, YaRN) are computed by the caller and passed to `rope` the same way."""
    exps = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    return (1.0 / theta**exps).to(torch.float32)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place at the given positions [T]."""
    check_tensor("q", q, 3)
    check_tensor("k", k, 3, (q.dtype,))
    check_tensor("positions", positions, 1, (torch.int32, torch.int64), last_contiguous=False)
    check_tensor("inv_freq", inv_freq, 1, (torch.float32,))
    t, hq, d = q.shape
    if k.shape[0] != t or k.shape[2] != d or positions.shape[0] != t:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, positions {tuple(positions.shape)} disagree")
    if d % 2 or d & (d - 1):
        raise ValueError(f"head_dim must be an even power of two, got {d}")
    if inv_freq.shape[0] != d // 2:
        raise ValueError(f"inv_freq must be [{d // 2}], got {tuple(inv_freq.shape)}")
    if t == 0:
        return
    hkv = k.shape[1]
    _rope_kernel[(t,)](
        q, k, positions, inv_freq, hq, hkv, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        HALF=d // 2, BLOCK_HQ=next_pow2(hq), BLOCK_HKV=next_pow2(hkv), num_warps=4,
    )


def rope_ref(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: returns rotated copies of q and k (fp32 math, same rounding points)."""
    angle = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]

    def rot(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rot(q), rot(k)
