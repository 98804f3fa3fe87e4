"""The runtime's piecewise CUDA graphs on the device: a pass replayed from graphs computes what
the same pass run eagerly computes, for prefill, chunked prefill with a prefix, decode, mixed
and layered passes, on a dense and an MoE model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from servesim.models.arch import load_model
from servesim.policies import Step
from servesim.request import Request
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import Lane, RuntimeModel
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


def test_partition_lanes_replay_graphs_on_their_sms() -> None:
    """Nexus's lanes: graphs captured on a green context's stream compute what eager passes on
    the whole GPU compute, run only on the partition's SMs (a 16-SM prefill is several times
    slower than on 132), and two passes on the two partitions of a split overlap in time."""
    from servesim.policies import EngineLimits
    from servesim.runtime.partitioned import PartitionLanes

    arch = dataclasses.replace(load_model("llama-3.1-8b"), num_layers=4)
    device = torch.device("cuda")
    limits = EngineLimits(block_size=BS, total_blocks=512, watermark_blocks=0, max_model_len=4096,
                          num_layers=arch.num_layers, num_sms=132)
    eager = RuntimeModel(arch, 512, BS, device, torch.bfloat16, seed=0)
    model = RuntimeModel(arch, 512, BS, device, torch.bfloat16, seed=0)
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
