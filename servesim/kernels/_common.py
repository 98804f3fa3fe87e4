"""Shared checks for the kernel launchers: shapes, dtypes, strides and the SM count."""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_num_sms(device: torch.device) -> int:
    """Number of SMs of the whole device (a stand-in of 4 under the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def resolve_num_sms(num_sms: int | None, device: torch.device) -> int:
    """The SM budget a launch may use: the caller's partition size or the whole device."""
    if num_sms is None:
        return device_num_sms(device)
    if num_sms < 1:
        raise ValueError(f"num_sms must be >= 1, got {num_sms}")
    return num_sms


def check_tensor(
    name: str,
    t: torch.Tensor,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    last_contiguous: bool = True,
) -> None:
    """Raise ValueError unless t has ndim dims, an allowed dtype and unit last-dim stride."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; expected one of {dtypes}")
    if last_contiguous and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dim, got strides {t.stride()}")
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{name} is on {t.device}; Triton kernels need CUDA or TRITON_INTERPRET=1")


def check_same(name: str, values: dict[str, object]) -> None:
    """Raise ValueError unless all values (e.g. dtypes or sizes of several tensors) agree."""
    distinct = set(values.values())
    if len(distinct) > 1:
        raise ValueError(f"{name} must agree: {values}")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
