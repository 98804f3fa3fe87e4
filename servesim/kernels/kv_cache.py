"""Writes new K/V rows into the paged KV cache.

Cache layout (kept by the runtime and the profiler): per layer `k_cache` and `v_cache` of
shape [num_blocks, block_size, num_kv_heads, head_dim]. Token t goes to slot
slot_mapping[t] = block * block_size + offset; a negative slot skips the token (padding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_same, check_tensor, next_pow2


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, HKV,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ct, stride_ch, stride_vcb, stride_vct, stride_vch,
    BLOCK_SIZE: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # k, v: [T, HKV, D]; caches: [num_blocks, BLOCK_SIZE, HKV, D]; slot_mapping: [T]; grid (T,)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, HEAD_D)[None, :]
    mask = h < HKV
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(kc_ptr + blk * stride_cb + off * stride_ct + h * stride_ch + d, k, mask=mask)
    tl.store(vc_ptr + blk * stride_vcb + off * stride_vct + h * stride_vch + d, v, mask=mask)


def kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter k, v [T, Hkv, D] into the caches at slot_mapping [T] (int32/int64)."""
    check_tensor("k", k, 3)
    check_tensor("v", v, 3, (k.dtype,))
    check_tensor("k_cache", k_cache, 4, (k.dtype,))
    check_tensor("v_cache", v_cache, 4, (k.dtype,))
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int32, torch.int64), last_contiguous=False)
    check_same("shapes of k and v", {"k": tuple(k.shape), "v": tuple(v.shape)})
    check_same("shapes of k_cache and v_cache", {"k_cache": tuple(k_cache.shape), "v_cache": tuple(v_cache.shape)})
    t, hkv, d = k.shape
    if tuple(k_cache.shape[2:]) != (hkv, d):
        raise ValueError(f"k_cache {tuple(k_cache.shape)} does not hold [*, *, {hkv}, {d}] heads")
    if slot_mapping.shape[0] != t:
        raise ValueError(f"slot_mapping must be [{t}], got {tuple(slot_mapping.shape)}")
    if d & (d - 1):
        raise ValueError(f"head_dim must be a power of two, got {d}")
    if t == 0:
        return
    _kv_write_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping, hkv, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        BLOCK_SIZE=k_cache.shape[1], HEAD_D=d, BLOCK_H=next_pow2(hkv), num_warps=4,
    )


def slot_mapping_for(
    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, prefix_lens: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Slots of the new tokens of packed sequences: token i of sequence s sits at position
    prefix_lens[s] + i, i.e. in block block_tables[s, pos // block_size]. Torch ops, int64 [T]."""
    lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
    pos = torch.arange(seq.numel(), device=lens.device) - cu_seqlens_q[:-1].long()[seq] + prefix_lens.long()[seq]
    return block_tables.long()[seq, pos // block_size] * block_size + pos % block_size


def kv_cache_write_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Reference scatter with torch indexing (in place)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    bs = k_cache.shape[1]
    k_cache[slots // bs, slots % bs] = k[keep]
    v_cache[slots // bs, slots % bs] = v[keep]
