"""The real runtime on the CPU interpreter, with tiny dense and MoE models: the paged forward
pass agrees with itself however a prompt is split (chunks, layer groups), and the wall-clock
engine serves every request under the same policy objects as the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from servesim.models.arch import load_model
from servesim.policies import REGISTRY, EngineLimits, Step
from servesim.request import Request, State
from servesim.runtime.blocks import BlockTables
from servesim.runtime.engine import Runtime
from servesim.runtime.model import Plan, RuntimeModel
from servesim.runtime.plan import build_plan

TINY = Path(__file__).parent.parent / "data" / "tiny"
BS = 4


def _model(name: str) -> RuntimeModel:
    arch = load_model(str(TINY / f"{name}.json"))
    return RuntimeModel(arch, num_blocks=64, block_size=BS, device=torch.device("cpu"),
                        dtype=torch.float32, seed=0)


def _run(model: RuntimeModel, step: Step, blocks: BlockTables) -> torch.Tensor:
    plan = build_plan(step, blocks, BS, model.arch.num_layers, model.arch.vocab_size, model.device)
    run = model.forward(plan)
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def _prefill(model: RuntimeModel, prompt: int, splits: list[int], layered: bool) -> torch.Tensor:
    """Logits of the prompt's last token after prefilling it in `splits` chunks (and, if
    layered, each chunk through two layer groups)."""
    req = Request(0, 0.0, prompt, 2)
    blocks = BlockTables(64)
    req.kv_blocks = -(-prompt // BS)
    blocks.sync(req)
    logits = torch.empty(0)
    for n in splits:
        groups = [(0, 1), (1, 2)] if layered else [None]
        for layers in groups:
            logits = _run(model, Step(prefills=[(req, n)], prefill_layers=layers), blocks)
        req.num_computed_tokens += n
    return logits


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_chunked_and_layered_prefill_match_one_pass(name: str) -> None:
    model = _model(name)
    whole = _prefill(model, 13, [13], False)
    assert whole.shape == (1, model.arch.vocab_size) and torch.isfinite(whole).all()
    torch.testing.assert_close(_prefill(model, 13, [5, 8], False), whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_prefill(model, 13, [13], True), whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_prefill(model, 13, [6, 7], True), whole, rtol=1e-4, atol=1e-4)


def test_decode_after_prefill_matches_a_longer_prefill() -> None:
    """Decoding token 13 of a 13-token prompt sees the same context as prefilling 14 tokens."""
    model = _model("llama")
    longer = _prefill(model, 14, [14], False)
    req = Request(0, 0.0, 13, 2)
    blocks = BlockTables(64)
    req.kv_blocks = 4
    blocks.sync(req)
    _run(model, Step(prefills=[(req, 13)]), blocks)
    req.num_computed_tokens, req.num_generated_tokens = 13, 1
    decoded = _run(model, Step(decodes=[req]), blocks)
    torch.testing.assert_close(decoded, longer, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared-workspaces"])
@pytest.mark.parametrize("policy", ["sarathi", "vllm", "layered", "flowprefill"])
def test_runtime_serves_every_request(policy: str, shared: bool) -> None:
    model = (_shared if shared else _model)("moe" if policy == "layered" else "llama")
    limits = EngineLimits(block_size=BS, total_blocks=64, watermark_blocks=0, max_model_len=256,
                          num_layers=2, num_sms=4)
    knobs = {"sarathi": {"token_budget": 8}, "layered": {"groups": 2}, "flowprefill": {"execution_chunk": 16}}
    cls = REGISTRY[policy]
    runtime = Runtime(model, cls(cls.Params(**knobs.get(policy, {})), limits), limits)
    reqs = [Request(0, 0.0, 11, 3), Request(1, 0.01, 5, 2), Request(2, 0.02, 20, 2)]
    result = runtime.run(reqs)
    for r in result.requests:
        assert r.state is State.FINISHED
        assert len(r.token_times_s) == r.num_output_tokens
        assert r.arrival_s <= r.first_scheduled_s <= r.token_times_s[0] <= r.finish_s
        assert r.token_times_s == sorted(r.token_times_s)
    assert not runtime.blocks.tables and len(runtime.blocks.free) == 64
    assert runtime.state.kv.used_blocks == 0 and len(result.log.start_s) >= 3


def _shared(name: str) -> RuntimeModel:
    """A model whose passes run in shared, padded workspaces (the buffers CUDA graphs replay)."""
    model = _model(name)
    assert model.share_workspaces(64) == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    return model


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_padded_shared_workspaces_compute_what_private_ones_do(name: str) -> None:
    # 13 rows run padded to 16, 5 + 8 to 8 each; layered passes move rows between sizes.
    exact, padded = _model(name), _shared(name)
    for splits, layered in (([13], False), ([5, 8], False), ([6, 7], True), ([13], True)):
        torch.testing.assert_close(_prefill(padded, 13, splits, layered),
                                   _prefill(exact, 13, splits, layered), rtol=1e-4, atol=1e-4)
    # Padded rows write their K/V to the scratch block only, never to a block in use.
    assert padded.k_cache[0][-1].abs().sum() > 0
    assert torch.equal(padded.k_cache[0][:-1], exact.k_cache[0][:-1])


def test_a_suspended_pass_keeps_its_rows_while_others_reuse_the_workspace() -> None:
    model, blocks = _shared("llama"), BlockTables(64)
    a, b = Request(0, 0.0, 13, 2), Request(1, 0.0, 14, 2)
    for r in (a, b):
        r.kv_blocks = 4
        blocks.sync(r)

    def plan(req: Request) -> Plan:
        return build_plan(Step(prefills=[(req, req.num_prompt_tokens)]), blocks, BS,
                          model.arch.num_layers, model.arch.vocab_size, model.device)

    alone = _run(model, Step(prefills=[(a, 13)]), blocks)
    run = model.forward(plan(a))
    assert next(run) == "attention"
    assert run.send("suspend") == "suspended"
    other = model.forward(plan(b))  # 14 rows: the same 16-row workspace as a's 13
    for _ in other:
        pass
    for _ in range(10_000):
        try:
            next(run)
        except StopIteration as stop:
            torch.testing.assert_close(stop.value, alone, rtol=1e-4, atol=1e-4)
            return
    raise AssertionError("the resumed pass did not finish")


def test_nexus_controller_runs_when_prefill_ends_not_when_its_partition_idles() -> None:
    """The runtime asks Nexus's controller when a prefill pass ends (before the decode partition
    starts its next step) and before a prefill batch, as the simulator does; never for the idle
    prefill partition that wakes after each decode step (its host time held up the decode lane)."""
    from servesim.runtime.partitioned import PartitionedRuntime, PartitionLanes

    model = _model("llama")
    limits = EngineLimits(block_size=BS, total_blocks=64, watermark_blocks=0, max_model_len=256,
                          num_layers=2, num_sms=32)
    cls = REGISTRY["nexus"]
    policy = cls(cls.Params(token_budget=16, initial_prefill_sms=16, hysteresis_sms=0, tick_s=100.0), limits)
    policy.predict = lambda shape, sms, corunner=None: (
        1e-3 * shape.num_prefill_tokens / (sms or 32) + 1e-3 * shape.num_decodes / min(sms or 32, 8))
    asked: list[float] = []
    split = policy.split

    def counted(view: Any, prefill_sms: int) -> int:
        asked.append(view.now_s)
        return split(view, prefill_sms)

    policy.split = counted  # type: ignore[method-assign]
    lanes = PartitionLanes(model, limits, graphs=False).get(policy.shares(), 16, 8)
    runtime = PartitionedRuntime(model, policy, limits, lanes)
    runtime.run([Request(i, 0.004 * i, 5 + 3 * i, 8) for i in range(4)])
    prefills = [rec for rec in runtime.steps if rec.partition == 0]
    decodes = [rec for rec in runtime.steps if rec.partition == 1]
    assert len(decodes) > 2 * len(prefills)
    assert len(asked) <= 2 * len(prefills)
    assert all(rec.end in asked for rec in prefills)


@pytest.mark.parametrize("adaptive", [False, True], ids=["static", "adaptive"])
def test_nexus_runs_prefill_and_decode_side_by_side(adaptive: bool) -> None:
    """Nexus on two partitions: every request is served, prefill steps run on partition 0 and
    decode steps on partition 1 with the SMs of the split in force, and steps of the two
    partitions overlap in time (each records what the other ran next to it)."""
    from servesim.runtime.partitioned import PartitionedRuntime, PartitionLanes

    model = _model("llama")
    limits = EngineLimits(block_size=BS, total_blocks=64, watermark_blocks=0, max_model_len=256,
                          num_layers=2, num_sms=32)
    cls = REGISTRY["nexus"]
    policy = cls(cls.Params(token_budget=16, initial_prefill_sms=16, adaptive=adaptive,
                                 hysteresis_sms=0, tick_s=0.001), limits)
    # A predictor under which decode gains nothing past 8 SMs: the controller moves prefill to 24.
    policy.predict = lambda shape, sms, corunner=None: (
        1e-3 * shape.num_prefill_tokens / (sms or 32) + 1e-3 * shape.num_decodes / min(sms or 32, 8))
    splits = policy.shares()
    assert splits == ([8, 16, 24] if adaptive else [16])
    lanes = PartitionLanes(model, limits, graphs=False).get(splits, 16, 8)
    assert {lane.num_sms for pair in lanes.values() for lane in pair} >= {16}
    runtime = PartitionedRuntime(model, policy, limits, lanes)
    reqs = [Request(i, 0.004 * i, 5 + 3 * i, 6) for i in range(6)]
    result = runtime.run(reqs)
    for r in result.requests:
        assert r.state is State.FINISHED and len(r.token_times_s) == r.num_output_tokens
        assert r.token_times_s == sorted(r.token_times_s)
    assert not runtime.blocks.tables and runtime.state.kv.used_blocks == 0
    records = runtime.steps
    assert all((rec.partition == 0) == bool(rec.shape.prefill_tokens) for rec in records)
    assert all(rec.sms in splits if rec.partition == 0 else 32 - rec.sms in splits for rec in records)
    assert any(rec.corunner >= 0 for rec in records)
    for rec in records:
        if rec.corunner >= 0:
            other = records[rec.corunner]
            assert other.partition != rec.partition and other.start <= rec.start <= other.end
    if adaptive:
        assert result.extra["sm_splits"][-1][1] == 24
        assert {rec.sms for rec in records if rec.partition == 0} >= {24}
    else:
        assert result.extra["sm_splits"] == [(0.0, 16)]
