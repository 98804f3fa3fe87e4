"""RMSNorm (with and without the fused residual add), RoPE, SiLU-and-mul, KV-cache write."""

from __future__ import annotations

import itertools

import pytest
import torch

from servesim.kernels import (
    kv_cache_write,
    kv_cache_write_ref,
    rmsnorm,
    rmsnorm_ref,
    rope,
    rope_inv_freq,
    rope_ref,
    silu_and_mul,
    silu_and_mul_ref,
)

DTYPES = [torch.float16, torch.float32]
TOKENS = [1, 7, 127, 1000]
# The interpreter is slow: at 1000 tokens only some cases run here; tests/gpu runs them all.
RMSNORM_CASES = [(t, h, d) for t, h, d in itertools.product(TOKENS, [96, 320], DTYPES)
                 if not (t == 1000 and h == 320 and d == torch.float32)]
SILU_CASES = [(t, i, d) for t, i, d in itertools.product(TOKENS, [48, 1100], DTYPES)
              if not (t == 1000 and i == 1100)]
ROPE_CASES = [(t, hq, hkv, d) for t, (hq, hkv), d in
              itertools.product(TOKENS, [(4, 4), (8, 2), (10, 2)], DTYPES)
              if t < 1000 or (hq, hkv, d) == (10, 2, torch.float16)]


@pytest.mark.parametrize("t,h,dtype", RMSNORM_CASES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm(t, h, dtype, with_residual, close):
    x = torch.randn(t, h, dtype=dtype)
    w = torch.rand(h, dtype=dtype) + 0.5
    res = torch.randn(t, h, dtype=dtype) if with_residual else None
    out, new_res = rmsnorm(x, w, 1e-5, res)
    ref, ref_res = rmsnorm_ref(x, w, 1e-5, res)
    close(out, ref, "rmsnorm")
    if with_residual:
        close(new_res, ref_res, "residual")
    else:
        assert new_res is None


@pytest.mark.parametrize("t,i,dtype", SILU_CASES)
def test_silu_and_mul(t, i, dtype, close):
    x = torch.randn(t, 2 * i, dtype=dtype)
    out = torch.full((t, i), float("nan"), dtype=dtype)
    silu_and_mul(x, out=out)
    close(out, silu_and_mul_ref(x), "silu_and_mul")


@pytest.mark.parametrize("t,hq,hkv,dtype", ROPE_CASES)
def test_rope_in_place(t, hq, hkv, dtype, close):
    d = 32
    q = torch.randn(t, hq, d, dtype=dtype)
    k = torch.randn(t, hkv, d, dtype=dtype)
    pos = torch.randint(0, 4096, (t,), dtype=torch.int64)
    inv = rope_inv_freq(d, 500000.0)
    q_ref, k_ref = rope_ref(q, k, pos, inv)
    rope(q, k, pos, inv)
    close(q, q_ref, "rope q")
    close(k, k_ref, "rope k")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1, 7, 127])
def test_kv_cache_write_skips_negative_slots(t, dtype):
    nb, bs, hkv, d = 20, 16, 2, 32
    kc = torch.full((nb, bs, hkv, d), float("nan"), dtype=dtype)
    vc = kc.clone()
    k, v = torch.randn(t, hkv, d, dtype=dtype), torch.randn(t, hkv, d, dtype=dtype)
    slots = torch.randperm(nb * bs)[:t].to(torch.int32)
    slots[::3] = -1
    kr, vr = kc.clone(), vc.clone()
    kv_cache_write(k, v, kc, vc, slots)
    kv_cache_write_ref(k, v, kr, vr, slots)
    torch.testing.assert_close(kc, kr, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(vc, vr, equal_nan=True, rtol=0, atol=0)


def test_launchers_reject_bad_shapes():
    with pytest.raises(ValueError, match="weight"):
        rmsnorm(torch.randn(3, 8), torch.randn(9))
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(3, 7))
    with pytest.raises(ValueError, match="inv_freq"):
        rope(torch.randn(3, 2, 16), torch.randn(3, 1, 16), torch.arange(3), torch.ones(4))
    with pytest.raises(ValueError, match="k_cache"):
        kv_cache_write(torch.randn(2, 2, 16), torch.randn(2, 2, 16), torch.randn(4, 16, 3, 16),
                       torch.randn(4, 16, 3, 16), torch.zeros(2, dtype=torch.int32))
