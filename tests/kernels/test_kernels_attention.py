"""Prefill (varlen, chunked over a cached prefix) and decode (split-KV) attention over the
paged cache, against per-sequence torch references."""

from __future__ import annotations

import pytest
import torch

from servesim.kernels import (
    decode_attention,
    decode_attention_ref,
    decode_num_splits,
    decode_split_plan,
    kv_cache_write,
    prefill_attention,
    prefill_attention_ref,
    slot_mapping_for,
)

GQA = [(4, 4), (8, 2), (8, 1), (10, 2)]  # ratios 1, 4, 8 and a non-power-of-two 5 (Qwen2.5-32B)
D, BS = 32, 16


def _paged_cache(num_blocks, hkv, dtype, seqs, max_blocks):
    kc = torch.randn(num_blocks, BS, hkv, D, dtype=dtype)
    vc = torch.randn(num_blocks, BS, hkv, D, dtype=dtype)
    bt = torch.randperm(num_blocks)[: seqs * max_blocks].view(seqs, max_blocks).to(torch.int32)
    return kc, vc, bt


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hkv", GQA)
@pytest.mark.parametrize(
    "new_lens,prefix_lens",
    [([1], [0]), ([7], [0]), ([127], [0]), ([7, 1, 40], [5, 0, 33]), ([3, 0, 20], [16, 4, 0])],
)
def test_prefill_attention(new_lens, prefix_lens, hq, hkv, dtype, close):
    s = len(new_lens)
    kc, vc, bt = _paged_cache(96, hkv, dtype, s, 10)
    cu = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    pl = torch.tensor(prefix_lens, dtype=torch.int32)
    t = int(cu[-1])
    q = torch.randn(t, hq, D, dtype=dtype)
    k, v = torch.randn(t, hkv, D, dtype=dtype), torch.randn(t, hkv, D, dtype=dtype)
    kv_cache_write(k, v, kc, vc, slot_mapping_for(bt, cu, pl, BS))
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, kc, vc, bt, cu, pl, max(new_lens), out=out)
    close(out, prefill_attention_ref(q, kc, vc, bt, cu, pl), "prefill")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hkv", GQA)
@pytest.mark.parametrize("ctx", [[1], [17, 100, 5], [700, 33]])
@pytest.mark.parametrize("num_sms", [1, 64])
def test_decode_attention(ctx, hq, hkv, num_sms, dtype, close):
    s = len(ctx)
    kc, vc, bt = _paged_cache(160, hkv, dtype, s, 48)
    cl = torch.tensor(ctx, dtype=torch.int32)
    q = torch.randn(s, hq, D, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, kc, vc, bt, cl, max(ctx), num_sms=num_sms, out=out)
    close(out, decode_attention_ref(q, kc, vc, bt, cl), f"decode sms={num_sms}")


def test_decode_splits_follow_the_sm_budget():
    assert decode_num_splits(1, 8, 8192, 8) == 2
    assert decode_num_splits(1, 8, 8192, 132) == 32
    assert decode_num_splits(64, 8, 8192, 132) == 1
    assert decode_num_splits(1, 8, 100, 132) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_decode_attention_with_a_fixed_split_count_reads_its_split_size_from_memory(dtype, close):
    """What a full CUDA graph of a decode pass replays: the split count fixed at capture, the
    tokens per split read from a device tensor, so one launch serves other contexts. Each of
    three steps reuses the launch's tensors (padded rows at context 1) and matches the
    reference on its real rows, the split size written for that step."""
    hq, hkv, rows, splits = 8, 2, 4, 3
    kc, vc, bt = _paged_cache(200, hkv, dtype, rows, 48)
    q = torch.randn(rows, hq, D, dtype=dtype)
    lens = torch.ones(rows, dtype=torch.int32)
    tokens = torch.zeros(1, dtype=torch.int32)
    for ctx in ([700, 33], [5], [300, 301, 2]):
        n = len(ctx)
        lens.fill_(1)
        lens[:n] = torch.tensor(ctx, dtype=torch.int32)
        tiles = -(-max(ctx) // 16)  # BLOCK_N is 16 in the interpreter
        tokens.fill_(-(-tiles // splits) * 16)  # the last split may be short or empty
        out = torch.full_like(q, float("nan"))
        decode_attention(q, kc, vc, bt, lens, 48 * BS, out=out, num_splits=splits, split_tokens=tokens)
        close(out[:n], decode_attention_ref(q[:n], kc, vc, bt[:n], lens[:n]), f"fixed splits ctx={ctx}")
    with pytest.raises(ValueError, match="together"):
        decode_attention(q, kc, vc, bt, lens, 16, num_splits=2)


def test_split_plan_covers_the_context_in_whole_tiles():
    for n, ctx, sms in ((1, 8192, 132), (1, 2049, 132), (16, 3000, 64), (64, 8192, 132), (1, 1, 8)):
        splits, tokens = decode_split_plan(n, 8, ctx, sms)
        assert tokens % 64 == 0 and splits * tokens >= ctx > (splits - 1) * tokens
        assert splits <= decode_num_splits(n, 8, ctx, sms)
    assert decode_split_plan(1, 8, 2049, 132) == (7, 320)  # 8 wanted, 7 tiles of 320 cover it


def test_attention_rejects_bad_gqa_and_tables():
    kc = torch.randn(4, BS, 3, D)
    bt = torch.zeros(1, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(torch.randn(1, 4, D), kc, kc, bt, torch.ones(1, dtype=torch.int32), 1)
    with pytest.raises(ValueError, match="capacity"):
        decode_attention(torch.randn(1, 3, D), kc, kc, bt, torch.ones(1, dtype=torch.int32), 40)
    with pytest.raises(ValueError, match="int32"):
        prefill_attention(torch.randn(1, 3, D), kc, kc, bt.long(), torch.tensor([0, 1], dtype=torch.int32),
                          torch.zeros(1, dtype=torch.int32), 1)
