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
from servesim.runtime.model import RuntimeModel
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
