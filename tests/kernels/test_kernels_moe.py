"""MoE: top-k softmax routing, per-expert alignment, the fused pipeline (with empty experts)."""

from __future__ import annotations

import pytest
import torch

from servesim.kernels import fused_moe, fused_moe_ref, moe_align, topk_softmax, topk_softmax_ref


@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (7, 16, 4), (1000, 8, 2), (40, 128, 8)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_softmax(t, e, k, renormalize):
    logits = torch.randn(t, e, dtype=torch.float32)
    w, ids = topk_softmax(logits, k, renormalize)
    w_ref, ids_ref = topk_softmax_ref(logits, k, renormalize)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,e,k,block_m", [(1, 8, 2, 16), (7, 16, 4, 16), (127, 8, 2, 32), (50, 128, 8, 16)])
def test_moe_align_groups_entries_by_expert(t, e, k, block_m):
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32)
    sorted_ids, expert_ids, total = moe_align(ids, e, block_m)
    n, flat = t * k, ids.reshape(-1)
    rows = int(total)
    assert rows % block_m == 0 and rows <= sorted_ids.numel()
    real = sorted_ids[:rows]
    assert sorted(real[real < n].tolist()) == list(range(n))  # every entry exactly once
    assert (sorted_ids[rows:] == n).all()
    for b in range(rows // block_m):
        blk = real[b * block_m : (b + 1) * block_m]
        blk = blk[blk < n].long()
        assert blk.numel() > 0 and (flat[blk] == expert_ids[b]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (7, 16, 4), (127, 8, 2)])
def test_fused_moe(t, e, k, dtype, close):
    h, i = 64, 48
    x = torch.randn(t, h, dtype=dtype)
    w13 = torch.randn(e, 2 * i, h, dtype=dtype) / h**0.5
    w2 = torch.randn(e, h, i, dtype=dtype) / i**0.5
    logits = torch.randn(t, e)
    logits[:, : e // 2] -= 100.0  # half the experts get no tokens
    w, ids = topk_softmax(logits, k)
    out = fused_moe(x, w13, w2, w, ids)
    assert (ids >= e // 2).all()
    close(out, fused_moe_ref(x, w13, w2, w, ids), "fused_moe")


def test_fused_moe_rejects_mismatched_weights():
    x = torch.randn(3, 16)
    with pytest.raises(ValueError, match="w13"):
        fused_moe(x, torch.randn(4, 8, 16), torch.randn(4, 16, 5), torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.int32))
