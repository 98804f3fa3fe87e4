"""The runtime's piecewise CUDA graphs on the device: a pass replayed from graphs computes what
the same pass run eagerly computes, for prefill, chunked prefill with a prefix, decode, mixed
and layered passes, on a dense and an MoE model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from servesim.models.arch import load_model
from servesim.policies import EngineLimits, Step
from servesim.request import Request
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import Lane, RuntimeModel
from servesim.runtime.partitioned import PartitionLanes
from servesim.runtime.plan import build_plan

BS = 16


def _logits(model: RuntimeModel, step: Step, blocks: BlockTables) -> torch.Tensor:
    run = model.forward(build_plan(step, blocks, BS, model.arch.num_layers, model.arch.vocab_size,
                                   model.device))
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value.float()


def _serve(model: RuntimeModel) -> list[torch.Tensor]:
    """Logits of a fixed script of passes: whole, chunked with a prefix, decode, mixed, layered."""
    blocks = BlockTables(256)
    a, b, c = Request(0, 0.0, 300, 4), Request(1, 0.0, 77, 4), Request(2, 0.0, 40, 4)
    for r in (a, b, c):
        r.kv_blocks = 24
        blocks.sync(r)
    out = [_logits(model, Step(prefills=[(a, 300)]), blocks)]
    out.append(_logits(model, Step(prefills=[(b, 50)]), blocks))
    b.num_computed_tokens = 50
    out.append(_logits(model, Step(prefills=[(b, 27)]), blocks))
    b.num_computed_tokens, b.num_generated_tokens = 77, 1
    a.num_computed_tokens, a.num_generated_tokens = 300, 1
    out.append(_logits(model, Step(decodes=[a, b]), blocks))
    out.append(_logits(model, Step(prefills=[(c, 40)], decodes=[a, b]), blocks))
    layers = model.arch.num_layers
    half = (0, layers // 2), (layers // 2, layers)
    c.num_computed_tokens = 0
    for group in half:  # the cohort parks between its two layer groups
        out.append(_logits(model, Step(prefills=[(c, 40)], decodes=[a, b], prefill_layers=group), blocks))
    return out


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-30b-a3b"])
def test_graph_replays_match_eager_passes(name: str) -> None:
    arch = dataclasses.replace(load_model(name), num_layers=2)  # real shapes, two layers
    device = torch.device("cuda")
    eager = RuntimeModel(arch, 256, BS, device, torch.bfloat16, seed=0)
    graphed = RuntimeModel(arch, 256, BS, device, torch.bfloat16, seed=0)
    assert graphed.capture_graphs(512) == 2 * arch.num_layers * 19
    for got, want in zip(_serve(graphed), _serve(eager), strict=True):
        assert got.shape == want.shape and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def _on_lane(run, stream):  # type: ignore[no-untyped-def]
    """Drive a pass with `stream` current at every step (as the partitioned runtime does);
    synchronise before handing back its logits (other streams do not wait for a partition's)."""
    while True:
        with torch.cuda.stream(stream):
            try:
                next(run)
            except StopIteration as stop:
                torch.cuda.synchronize()
                return stop.value


def _two_models(num_layers: int):  # type: ignore[no-untyped-def]
    """Llama-3.1-8B's shapes over `num_layers` layers, twice with the same weights (one to
    run eagerly on the whole GPU, one for partition lanes), and the limits of 512 KV blocks."""
    arch = dataclasses.replace(load_model("llama-3.1-8b"), num_layers=num_layers)
    device = torch.device("cuda")
    limits = EngineLimits(block_size=BS, total_blocks=512, watermark_blocks=0, max_model_len=4096,
                          num_layers=arch.num_layers, num_sms=132)
    models = [RuntimeModel(arch, 512, BS, device, torch.bfloat16, seed=0) for _ in range(2)]
    return arch, device, limits, *models


def test_partition_lanes_replay_graphs_on_their_sms() -> None:
    """Nexus's lanes: graphs captured on a green context's stream compute what eager passes on
    the whole GPU compute, run only on the partition's SMs (a 16-SM prefill is several times
    slower than on 132), and two passes on the two partitions of a split overlap in time."""
    arch, device, limits, eager, model = _two_models(4)
    lanes = PartitionLanes(model, limits).get([16, 64], 2048, 64)
    blocks = BlockTables(512)
    long, short, other = Request(0, 0.0, 2048, 4), Request(1, 0.0, 300, 4), Request(2, 0.0, 2048, 4)
    for r in (long, short, other):
        r.kv_blocks = 130
        blocks.sync(r)

    def plan(step: Step, stream: object = None):  # type: ignore[no-untyped-def]
        """Inputs copied on the stream that reads them (a partition's stream does not wait
        for the default one), as the partitioned runtime builds them."""
        with torch.cuda.stream(stream or torch.cuda.current_stream()):  # type: ignore[arg-type]
            return build_plan(step, blocks, BS, arch.num_layers, arch.vocab_size, device)

    def reference(step: Step, sms: int) -> torch.Tensor:
        """The same pass eagerly on the default stream, kernels sized for the same SMs."""
        run = eager.forward(plan(step), Lane(sms))
        return _on_lane(run, torch.cuda.current_stream()).float()

    prefill16, decode116 = lanes[16]
    step = Step(prefills=[(short, 300)])
    got = _on_lane(model.forward(plan(step, prefill16.stream), prefill16), prefill16.stream)
    # (Padded rows may pick another GEMM tile config than the exact count: close, not equal.)
    torch.testing.assert_close(got.float(), reference(step, 16), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.float(), _logits(eager, step, blocks), rtol=2e-2, atol=2e-2)
    short.num_computed_tokens, short.num_generated_tokens = 300, 1
    step = Step(decodes=[short])
    got = _on_lane(model.forward(plan(step, decode116.stream), decode116), decode116.stream)
    torch.testing.assert_close(got.float(), reference(step, 116), rtol=2e-2, atol=2e-2)

    def timed(*runs: tuple[object, object]) -> float:
        torch.cuda.synchronize()
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        gens = [(model.forward(plan(step, lane.stream), lane), lane)  # type: ignore[attr-defined]
                for step, lane in runs]
        while gens:  # round-robin, one piece each, as the runtime launches them
            for item in list(gens):
                with torch.cuda.stream(item[1].stream):  # type: ignore[attr-defined]
                    try:
                        next(item[0])
                    except StopIteration:
                        gens.remove(item)
        torch.cuda.synchronize()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)

    prefill = Step(prefills=[(long, 2048)])
    timed((prefill, lanes[16][0]))  # warm
    small = min(timed((prefill, lanes[16][0])) for _ in range(3))
    large = min(timed((prefill, lanes[64][1])) for _ in range(3))  # 68 SMs
    assert small > 2.5 * large, (small, large)
    second = Step(prefills=[(other, 2048)])  # as heavy, so overlap shows clearly
    alone = [min(timed(run) for _ in range(3)) for run in ((prefill, lanes[64][0]), (second, lanes[64][1]))]
    both = min(timed((prefill, lanes[64][0]), (second, lanes[64][1])) for _ in range(3))
    assert both < 0.75 * sum(alone), (both, alone)


def _same_random_cache(*models: RuntimeModel) -> None:
    """The same random K/V in every model's cache, so attention reads something to get wrong."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    for caches in zip(*(m.k_cache + m.v_cache for m in models), strict=True):
        caches[0].normal_(generator=gen)
        for other in caches[1:]:
            other.copy_(caches[0])


def _decoding(blocks: BlockTables, contexts: list[int], first_id: int) -> list[Request]:
    """Requests past their prompt of `contexts` tokens, each with its KV blocks."""
    reqs = []
    for i, ctx in enumerate(contexts):
        r = Request(first_id + i, 0.0, ctx, 4)
        r.num_computed_tokens, r.num_generated_tokens, r.kv_blocks = ctx, 1, -(-(ctx + 1) // BS)
        blocks.sync(r)
        reqs.append(r)
    return reqs


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-30b-a3b"])
def test_full_decode_graphs_match_piecewise_passes(name: str) -> None:
    """A decode-only pass replayed whole from one graph (contexts, tables and split size read
    from its buffers) computes what the piecewise pass computes, for batches that pad (3 of 4
    rows) or fill their graph, with one split and with several (one long context), and a step
    after it with other contexts reuses the same graph."""
    arch = dataclasses.replace(load_model(name), num_layers=2)
    device = torch.device("cuda")
    piecewise = RuntimeModel(arch, 4096, BS, device, torch.bfloat16, seed=0)
    full = RuntimeModel(arch, 4096, BS, device, torch.bfloat16, seed=0)
    _same_random_cache(piecewise, full)
    piecewise.capture_graphs(64)
    full.capture_graphs(64)
    graphs = full.capture_decode_graphs(64, 4096)
    assert graphs == sum(len(full.decode_split_counts(s, None, 4096)) for s in (1, 2, 4, 8, 16, 24, 32, 48, 64))
    assert (1, 16) in full.lane.decode_graphs  # one 4k context on 132 SMs: 16 splits of 256
    for contexts in ([3000], [40, 2000, 700], [100] * 4, [5, 6], [1500] * 33):
        blocks = BlockTables(4096)
        reqs = _decoding(blocks, contexts, 0)
        plan = build_plan(Step(decodes=reqs), blocks, BS, arch.num_layers, arch.vocab_size, device)
        assert full._full_decode(plan, full.lane) is not None, contexts
        got, want = _logits(full, Step(decodes=reqs), blocks), _logits(piecewise, Step(decodes=reqs), blocks)
        assert got.shape == (len(contexts), arch.vocab_size) and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_full_decode_graphs_on_a_partition_lane() -> None:
    """Nexus's decode lane replays its full decode graphs on its green context, with kernels
    sized for its SMs, and computes what an eager pass with kernels sized so computes."""
    arch, device, limits, eager, model = _two_models(2)
    _same_random_cache(eager, model)
    _, decode = PartitionLanes(model, limits).get([64], 512, 32, 32, 4096)[64]
    assert decode.decode_graphs and all(size <= 32 for size, _ in decode.decode_graphs)
    blocks = BlockTables(512)
    reqs = _decoding(blocks, [2500, 90, 400], 0)
    with torch.cuda.stream(decode.stream):
        plan = build_plan(Step(decodes=reqs), blocks, BS, arch.num_layers, arch.vocab_size, device)
    assert model._full_decode(plan, decode) is not None
    got = _on_lane(model.forward(plan, decode), decode.stream).float()
    torch.cuda.synchronize()
    # eagerly, kernels sized for the same SMs (the split count changes bf16 rounding)
    plan = build_plan(Step(decodes=reqs), blocks, BS, arch.num_layers, arch.vocab_size, device)
    want = _on_lane(eager.forward(plan, Lane(decode.num_sms)), torch.cuda.current_stream()).float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
