"""Every kernel against its reference in bf16 at full model sizes, on the GPU."""

from __future__ import annotations

import pytest
import torch

from servesim.kernels import (
    decode_attention,
    decode_attention_ref,
    fused_moe,
    fused_moe_ref,
    gemm,
    gemm_ref,
    kv_cache_write,
    prefill_attention,
    prefill_attention_ref,
    rmsnorm,
    rmsnorm_ref,
    rope,
    rope_inv_freq,
    rope_ref,
    silu_and_mul,
    silu_and_mul_ref,
    slot_mapping_for,
    topk_softmax,
    topk_softmax_ref,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda"
BF16 = torch.bfloat16


def close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1.5e-2) -> None:
    assert torch.isfinite(out).all(), "non-finite (unwritten?) output elements"
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel <= tol, f"relative error {rel:.2e} > {tol:.0e}"


@pytest.mark.parametrize("m", [1, 7, 64, 127, 1000, 4096])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (7168, 5120), (1000, 200)])
@pytest.mark.parametrize("num_sms", [None, 16])
def test_gemm(m, n, k, num_sms):
    x = torch.randn(m, k, device=DEV, dtype=BF16)
    w = torch.randn(n, k, device=DEV, dtype=BF16) / k**0.5
    out = torch.full((m, n), float("nan"), device=DEV, dtype=BF16)
    gemm(x, w, out=out, num_sms=num_sms)
    close(out, gemm_ref(x, w))


@pytest.mark.parametrize("hq,hkv", [(32, 32), (32, 8), (40, 8), (32, 4)])
@pytest.mark.parametrize("new_lens,prefix", [([1000], [0]), ([127, 1, 7], [0, 500, 33]), ([2048], [1040])])
def test_prefill_attention(hq, hkv, new_lens, prefix):
    bs, d, nb = 16, 128, 1024
    kc = torch.randn(nb, bs, hkv, d, device=DEV, dtype=BF16)
    vc = torch.randn_like(kc)
    s = len(new_lens)
    need = max(-(-(n + p) // bs) for n, p in zip(new_lens, prefix, strict=True))
    bt = torch.randperm(nb, device=DEV)[: s * need].view(s, need).int()
    cu = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    pl = torch.tensor(prefix, device=DEV, dtype=torch.int32)
    t = sum(new_lens)
    q = torch.randn(t, hq, d, device=DEV, dtype=BF16)
    k, v = torch.randn(t, hkv, d, device=DEV, dtype=BF16), torch.randn(t, hkv, d, device=DEV, dtype=BF16)
    kv_cache_write(k, v, kc, vc, slot_mapping_for(bt, cu, pl, bs))
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, kc, vc, bt, cu, pl, max(new_lens), out=out)
    close(out, prefill_attention_ref(q, kc, vc, bt, cu, pl))


@pytest.mark.parametrize("hq,hkv", [(32, 32), (32, 8), (40, 8), (32, 4)])
@pytest.mark.parametrize("ctx", [[1], [2047, 5, 333], [8000] * 4])
@pytest.mark.parametrize("num_sms", [None, 8])
def test_decode_attention(hq, hkv, ctx, num_sms):
    bs, d = 16, 128
    need = -(-max(ctx) // bs)
    s = len(ctx)
    nb = s * need + 8
    kc = torch.randn(nb, bs, hkv, d, device=DEV, dtype=BF16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(nb, device=DEV)[: s * need].view(s, need).int()
    q = torch.randn(s, hq, d, device=DEV, dtype=BF16)
    cl = torch.tensor(ctx, device=DEV, dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, kc, vc, bt, cl, max(ctx), num_sms=num_sms, out=out)
    close(out, decode_attention_ref(q, kc, vc, bt, cl))


@pytest.mark.parametrize("t", [1, 7, 127, 4096])
@pytest.mark.parametrize("h", [4096, 5120])
def test_rmsnorm_rope_silu(t, h):
    x, res = torch.randn(t, h, device=DEV, dtype=BF16), torch.randn(t, h, device=DEV, dtype=BF16)
    w = torch.rand(h, device=DEV, dtype=BF16) + 0.5
    out, new_res = rmsnorm(x, w, 1e-5, res)
    ref, ref_res = rmsnorm_ref(x, w, 1e-5, res)
    close(out, ref)
    close(new_res, ref_res)
    q, k = torch.randn(t, 40, 128, device=DEV, dtype=BF16), torch.randn(t, 8, 128, device=DEV, dtype=BF16)
    pos = torch.randint(0, 32768, (t,), device=DEV)
    inv = rope_inv_freq(128, 1e6, DEV)
    q_ref, k_ref = rope_ref(q, k, pos, inv)
    rope(q, k, pos, inv)
    close(q, q_ref)
    close(k, k_ref)
    g = torch.randn(t, 2 * 14336, device=DEV, dtype=BF16)
    close(silu_and_mul(g), silu_and_mul_ref(g))


@pytest.mark.parametrize("t", [1, 7, 127, 1000])
@pytest.mark.parametrize("e,k,h,i", [(8, 2, 4096, 14336), (128, 8, 2048, 768)])
def test_moe(t, e, k, h, i):
    x = torch.randn(t, h, device=DEV, dtype=BF16)
    w13 = torch.randn(e, 2 * i, h, device=DEV, dtype=BF16) / h**0.5
    w2 = torch.randn(e, h, i, device=DEV, dtype=BF16) / i**0.5
    logits = torch.randn(t, e, device=DEV)
    logits[:, :2] -= 100.0  # two experts stay empty
    w, ids = topk_softmax(logits, k)
    w_ref, ids_ref = topk_softmax_ref(logits, k)
    assert torch.equal(ids, ids_ref)
    close(fused_moe(x, w13, w2, w, ids), fused_moe_ref(x, w13, w2, w, ids))
