"""RMSNorm, optionally fused with the residual add that precedes it in a transformer block.

Without a residual: out = x / rms(x) * weight. With one: h = x + residual is formed in fp32,
stored (it is the next residual) and normalised: out = h / rms(h) * weight. One program per
row; the row is held in registers (hidden sizes up to 16k).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from servesim.kernels._common import check_same, check_tensor, next_pow2


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, H, eps,
    stride_x, stride_r, stride_o, stride_ro,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    # x, residual, out, residual_out: [T, H]; weight: [H]
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    h = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(res_out_ptr + row * stride_ro + offs, h.to(res_out_ptr.dtype.element_ty), mask=mask)
    inv_rms = tl.rsqrt(tl.sum(h * h, axis=0) / H + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (h * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)


def _check_like(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    check_tensor(name, t, 2)
    check_same(f"shapes of x and {name}", {"x": tuple(x.shape), name: tuple(t.shape)})
    check_same(f"dtypes of x and {name}", {"x": x.dtype, name: t.dtype})


def rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of x (or of x + residual). Returns (out, new_residual); new_residual is None
    without a residual, else x + residual in x's dtype. `out` and `residual_out` may be given
    (preallocated, e.g. the static buffers of a CUDA graph); residual_out may be residual itself
    (each row is read before it is written)."""
    check_tensor("x", x, 2)
    check_tensor("weight", weight, 1)
    t, h = x.shape
    if weight.shape[0] != h:
        raise ValueError(f"weight must be [{h}], got {tuple(weight.shape)}")
    if h > 65536:
        raise ValueError(f"hidden size {h} > 65536 is not supported by the one-row kernel")
    out = torch.empty_like(x) if out is None else out
    _check_like("out", out, x)
    res_out = None
    if residual is not None:
        _check_like("residual", residual, x)
        res_out = torch.empty_like(x) if residual_out is None else residual_out
        _check_like("residual_out", res_out, x)
    if t == 0:
        return out, res_out
    block = next_pow2(h)
    warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    r = residual if residual is not None else x
    ro = res_out if res_out is not None else out
    _rmsnorm_kernel[(t,)](
        x, r, weight, out, ro, h, eps, x.stride(0), r.stride(0), out.stride(0), ro.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps,
    )
    return out, res_out


def rmsnorm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference in fp32, with the same rounding points as the kernel."""
    h = x.float() if residual is None else x.float() + residual.float()
    out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype), (None if residual is None else h.to(x.dtype))
