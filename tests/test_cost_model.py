"""Cost models: the fast path agrees with op-by-op pricing, and the roofline behaves physically."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servesim.errors import InputError
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.sim.cost_model import ConstantCostModel, RooflineCostModel, make_cost_model
from servesim.sim.hardware import get_gpu

H200 = get_gpu("h200")
LLAMA = load_model("llama-3.1-8b")
QWEN3 = load_model("qwen3-30b-a3b")
MODELS = {"llama": RooflineCostModel(LLAMA, H200), "qwen3": RooflineCostModel(QWEN3, H200)}


def prefill(*chunks: tuple[int, int], **fields: int) -> BatchShape:
    """A batch of prefill chunks given as (new tokens, prefix tokens)."""
    return BatchShape(prefill_tokens=tuple(q for q, _ in chunks),
                      prefill_prefix=tuple(p for _, p in chunks), num_logits=len(chunks),
                      **fields)


def decodes(num_decodes: int, context: int) -> BatchShape:
    return BatchShape(num_decodes=num_decodes, decode_context=num_decodes * context,
                      max_decode_context=context, num_logits=num_decodes)


@st.composite
def batches(draw: st.DrawFn, num_layers: int = 32) -> BatchShape:
    chunks = draw(st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 6000)), max_size=3))
    contexts = draw(st.lists(st.integers(1, 6000), max_size=40))
    layers = None
    if draw(st.booleans()):
        start = draw(st.integers(0, num_layers - 1))
        layers = (start, draw(st.integers(start + 1, num_layers)))
    return BatchShape(
        prefill_tokens=tuple(q for q, _ in chunks), prefill_prefix=tuple(p for _, p in chunks),
        num_decodes=len(contexts), decode_context=sum(contexts),
        max_decode_context=max(contexts, default=0), num_logits=len(contexts) + len(chunks),
        prefill_layers=layers,
    )


@settings(max_examples=40, deadline=None)
@given(batch=batches(), model=st.sampled_from(sorted(MODELS)),
       sms=st.sampled_from([None, 16, 64, 100]), with_corunner=st.booleans())
def test_fast_path_equals_op_by_op_breakdown(
    batch: BatchShape, model: str, sms: int | None, with_corunner: bool
) -> None:
    cost_model = MODELS[model]
    corunner = Corunner(prefill((512, 0)), 32) if with_corunner else None
    cost = cost_model.batch_cost(batch, sms, corunner)
    assert cost.total_s == cost_model.step_time(batch, sms, corunner)
    assert cost.total_s == pytest.approx(sum(op.seconds for op in cost.ops), rel=1e-9)
    inside = [op.seconds for op in cost.ops if 0 <= op.layer < cost_model.arch.num_layers]
    assert sum(cost.layer_s) == pytest.approx(sum(inside), rel=1e-9)
    assert cost.hbm_bytes == pytest.approx(sum(op.hbm_bytes for op in cost.ops), rel=1e-9)
    assert cost.flops == pytest.approx(sum(op.flops for op in cost.ops), rel=1e-9)


def _more_tokens(batch: BatchShape, which: int, context: int) -> BatchShape:
    """The batch plus one decode (which < 0) or one more token in chunk `which`."""
    if which < 0 or not batch.prefill_tokens:
        return dataclasses.replace(batch, num_decodes=batch.num_decodes + 1,
                                   decode_context=batch.decode_context + context,
                                   num_logits=batch.num_logits + 1)
    tokens = list(batch.prefill_tokens)
    tokens[which % len(tokens)] += 1
    return dataclasses.replace(batch, prefill_tokens=tuple(tokens))


@settings(max_examples=60, deadline=None)
@given(batch=batches(), model=st.sampled_from(sorted(MODELS)), which=st.integers(-2, 2),
       context=st.integers(1, 5000))
def test_more_work_is_never_cheaper(batch: BatchShape, model: str, which: int, context: int) -> None:
    cost_model = MODELS[model]
    base = cost_model.step_time(batch)
    assert cost_model.step_time(_more_tokens(batch, which, context)) >= base
    if batch.num_decodes:
        longer = dataclasses.replace(batch, decode_context=batch.decode_context + context)
        assert cost_model.step_time(longer) > base
    if batch.prefill_tokens:
        deeper = dataclasses.replace(batch, prefill_prefix=tuple(
            p + context for p in batch.prefill_prefix))
        assert cost_model.step_time(deeper) >= base


@settings(max_examples=40, deadline=None)
@given(batch=batches(), model=st.sampled_from(sorted(MODELS)),
       sms=st.sampled_from([16, 40, 48, 56, 64, 96, 124]), corunner=batches())
def test_fewer_sms_or_a_corunner_never_speed_up(
    batch: BatchShape, model: str, sms: int, corunner: BatchShape
) -> None:
    cost_model = MODELS[model]
    alone = cost_model.step_time(batch, sms)
    assert cost_model.step_time(batch, sms - 8) >= alone
    assert cost_model.step_time(batch, sms + 4) <= alone
    assert cost_model.step_time(batch, sms, Corunner(corunner, 132 - sms)) >= alone


def test_empty_batch_is_free() -> None:
    assert MODELS["llama"].step_time(BatchShape()) == 0.0
    assert MODELS["llama"].batch_cost(BatchShape()).ops == ()


def test_gemm_tile_quantisation() -> None:
    cost_model = MODELS["llama"]
    assert cost_model.step_time(prefill((257, 0))) > cost_model.step_time(prefill((256, 0)))

    def gate_up_s(tokens: int) -> float:
        ops = cost_model.batch_cost(prefill((tokens, 0))).ops
        return next(op.seconds for op in ops if op.layer == 0 and op.name == "gate_up")

    # Compute-bound at 8k tokens: 8191 and 8192 fill the same 128-row tiles, 8193 adds one.
    assert gate_up_s(8191) == gate_up_s(8192)
    assert gate_up_s(8193) / gate_up_s(8192) == pytest.approx(8320 / 8192, rel=1e-3)


def test_decode_batch_one_streams_the_weights() -> None:
    # Llama-3.1-8B decode at batch 1 is weight streaming: no faster than all weights at the
    # 4.24 TB/s copy, no slower than at the worst cuBLAS decode-GEMM rate in H200.md (2.2 TB/s).
    step_s = MODELS["llama"].step_time(decodes(1, 1024))
    assert LLAMA.weight_bytes / 4.24e12 < step_s < LLAMA.weight_bytes / 2.2e12


# H200.md: cuBLAS Llama-3-8B GEMMs (ms) at M tokens, for qkv, o, gate_up, down.
CUBLAS_MS = {
    1: (0.0229, 0.0191, 0.0688, 0.0421),  # o at M=1 not measured: its M=16 value
    16: (0.0227, 0.0191, 0.0689, 0.0420),
    128: (0.0242, 0.0195, 0.0738, 0.0456),
    512: (0.0385, 0.0291, 0.163, 0.0832),
    2048: (0.138, 0.0927, 0.680, 0.317),
    8192: (0.585, 0.376, 2.74, 1.34),
}


@pytest.mark.parametrize("tokens", sorted(CUBLAS_MS))
def test_gemms_match_the_cublas_table(tokens: int) -> None:
    # One affine memory fit and one compute efficiency serve all 24 measurements within 12%.
    ops = MODELS["llama"].batch_cost(prefill((tokens, 0))).ops
    model_ms = {op.name: op.seconds * 1e3 for op in ops if op.layer == 0}
    for name, measured_ms in zip(("qkv", "o", "gate_up", "down"), CUBLAS_MS[tokens], strict=True):
        assert model_ms[name] == pytest.approx(measured_ms, rel=0.12), name


def test_layered_prefill_costs_less_with_fewer_layers() -> None:
    cost_model, chunk = MODELS["llama"], ((2048, 0),)
    full = cost_model.step_time(prefill(*chunk, num_decodes=8, decode_context=8000))
    times = [cost_model.step_time(prefill(*chunk, num_decodes=8, decode_context=8000,
                                          prefill_layers=(0, end))) for end in (4, 8, 16)]
    assert times == sorted(times) and times[-1] < full
    per_layer = cost_model.batch_cost(prefill(*chunk, prefill_layers=(0, 4))).layer_s
    assert per_layer[3] > 0 and per_layer[4] == 0


def test_moe_expert_bytes_grow_with_batch() -> None:
    expert_bytes = [MODELS["qwen3"].batch_cost(decodes(b, 512)).expert_bytes for b in (1, 8, 64)]
    assert expert_bytes == sorted(expert_bytes)
    assert expert_bytes[0] == pytest.approx(48 * 8 * QWEN3.expert_bytes)


def test_bandwidth_saturates_but_compute_scales_with_sms() -> None:
    cost_model = MODELS["llama"]
    big_prefill, decode = prefill((8192, 0)), decodes(32, 1024)
    assert cost_model.step_time(big_prefill, 64) / cost_model.step_time(big_prefill) > 1.8
    assert cost_model.step_time(decode, 64) == pytest.approx(cost_model.step_time(decode), rel=0.02)


def test_corunner_slowdown_is_calibrated() -> None:
    # A copy-like co-runner (decodes streaming weights) slows a memory-bound step by up to 1.65x
    # (H200.md: 1.62x next to a copy); a compute-bound co-runner by about 1.16x.
    cost_model, decode = MODELS["llama"], decodes(8, 1024)
    alone = cost_model.step_time(decode, 64)
    next_to_decode = cost_model.step_time(decode, 64, Corunner(decodes(64, 4096), 64))
    next_to_prefill = cost_model.step_time(decode, 64, Corunner(prefill((8192, 0)), 64))
    assert 1.3 < next_to_decode / alone <= 1.65
    assert 1.1 < next_to_prefill / alone < next_to_decode / alone


def test_sms_out_of_range() -> None:
    with pytest.raises(ValueError, match="sms=0"):
        MODELS["llama"].step_time(decodes(1, 10), 0)


def test_constant_cost_model() -> None:
    model = ConstantCostModel(fixed_s=1e-3, per_prefill_token_s=1e-5, per_decode_s=1e-4,
                              per_context_token_s=1e-7, per_chunk_s=5e-4, num_layers=4)
    batch = prefill((100, 0), (50, 10), num_decodes=3, decode_context=600)
    expected = 1e-3 + 150 * 1e-5 + 3 * 1e-4 + 600 * 1e-7 + 2 * 5e-4
    assert model.step_time(batch) == pytest.approx(expected)
    cost = model.batch_cost(batch, sms=8)
    assert cost.total_s == model.step_time(batch)
    assert sum(cost.layer_s) == pytest.approx(expected) and len(cost.ops) == 4
    assert model.step_time(BatchShape()) == 0.0


def test_make_cost_model() -> None:
    assert isinstance(make_cost_model("roofline", LLAMA, H200), RooflineCostModel)
    constant = make_cost_model("constant", LLAMA, H200, per_decode_s=1e-3)
    assert constant == ConstantCostModel(per_decode_s=1e-3, num_layers=32)
    with pytest.raises(InputError, match="unknown cost model 'magic'.*roofline"):
        make_cost_model("magic", LLAMA, H200)
    with pytest.raises(InputError, match="unknown parameter 'per_token_s'"):
        make_cost_model("constant", LLAMA, H200, per_token_s=1.0)


def test_gpus() -> None:
    assert get_gpu("H200").num_sms == 132
    assert MODELS["llama"].step_time(decodes(1, 1024)) < RooflineCostModel(
        LLAMA, get_gpu("h100")).step_time(decodes(1, 1024))
    with pytest.raises(InputError, match="unknown GPU 'b300'.*h100, h200"):
        get_gpu("b300")
