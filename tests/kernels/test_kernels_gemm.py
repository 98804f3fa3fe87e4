"""GEMM kernels (tiled, persistent TMA, split-K) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from servesim.kernels import GemmConfig, gemm, gemm_config, gemm_ref
from servesim.kernels.configs import SMALL_M_MAX, m_bucket

SMALL = {
    "splitk": GemmConfig("splitk", 16, 32, 32, 4, 1, split_k=3),
    "splitk1": GemmConfig("splitk", 16, 32, 32, 4, 1, split_k=1),
    "tma": GemmConfig("tma", 32, 32, 32, 4, 1, group_m=2),
    "tiled": GemmConfig("tiled", 32, 32, 32, 4, 1, group_m=2),
}


SHAPES = [(1, 96, 128), (7, 40, 72), (127, 64, 96), (1000, 32, 64)]
# Split-K serves decode sizes only; the large M runs through the tiled and TMA kernels.
GEMM_CASES = [(m, n, k, kind) for (m, n, k) in SHAPES for kind in SMALL
              if not (m == 1000 and kind.startswith("splitk"))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k,kind", GEMM_CASES)
def test_gemm_matches_reference(m, n, k, kind, dtype, close):
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype) / k**0.5
    out = torch.full((m, n), float("nan"), dtype=dtype)
    gemm(x, w, out=out, config=SMALL[kind])
    close(out, gemm_ref(x, w), f"{kind} {m}x{n}x{k}")


def test_gemm_default_config_and_sm_budget(close):
    x = torch.randn(7, 200, dtype=torch.float16)  # K=200: not a multiple of any BLOCK_K
    w = torch.randn(48, 200, dtype=torch.float16) / 14
    close(gemm(x, w, num_sms=1), gemm_ref(x, w), "default config")


def test_frozen_configs_pick_split_k_only_for_decode_sizes():
    for m in (1, 16, 64, 65, 512, 32768):
        cfg = gemm_config(m, 4096, 4096, 132)
        assert (cfg.kind == "splitk") == (m <= SMALL_M_MAX)
    assert m_bucket(1) == 16 and m_bucket(100000) == 32768
    # A small partition gets smaller tiles than the whole GPU at the same M.
    assert gemm_config(512, 4096, 4096, 8).block_n >= gemm_config(512, 4096, 4096, 132).block_n


@pytest.mark.parametrize(
    "x_shape,w_shape,dtype_w,msg",
    [
        ((4, 8), (16, 9), torch.float16, "expected"),
        ((4, 8), (16, 8), torch.float32, "dtypes"),
        ((4, 8, 1), (16, 8), torch.float16, "dims"),
    ],
)
def test_gemm_rejects_bad_input(x_shape, w_shape, dtype_w, msg):
    with pytest.raises(ValueError, match=msg):
        gemm(torch.randn(x_shape, dtype=torch.float16), torch.randn(w_shape, dtype=dtype_w))


def test_gemm_rejects_non_unit_stride():
    x = torch.randn(8, 4, dtype=torch.float16).T
    with pytest.raises(ValueError, match="stride"):
        gemm(x, torch.randn(16, 8, dtype=torch.float16))
