"""CPU kernel tests: Triton's interpreter runs the kernels on the host.

TRITON_INTERPRET must be set before any servesim.kernels module is imported (the @triton.jit
decorator reads it), so it is set here, at collection time. Numerics are checked in fp16 and
fp32: triton 3.6's interpreter mishandles bf16 (tests/gpu/ covers bf16 on the device).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Relative Frobenius error allowed per dtype (METHOD.md: fp32 far under 1e-3; 16-bit operands
# between 1e-3 and 1e-2).
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Every element written and finite, and ||out - ref|| / ||ref|| within the dtype's tolerance."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite (unwritten?) elements in the output"
    o, r = out.double(), ref.double()
    rel = ((o - r).norm() / r.norm().clamp_min(1e-12)).item()
    assert rel <= REL_TOL[out.dtype], f"{what}: relative error {rel:.2e} > {REL_TOL[out.dtype]:.0e}"


@pytest.fixture
def close():
    return assert_close


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    # Fresh random inputs per test, reproducible per test id.
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))
