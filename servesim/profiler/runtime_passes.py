"""Whole prompt passes of servesim's runtime on the whole GPU, timed in serving's context.

The cost model prices a prompt pass as the sum of its operators, each timed alone. Issue 7's
runs on four H200 cards measured serving's prompt passes off that sum by prompt length in the
same way on every card and load: about +10 % at up to 128 tokens, +8 % at 129-256, +2 % at
257-512, 0 at 513-2,048, +2-3 % at 2-3k and +5-6 % at 4-8k tokens (GPU span over the price
without the host's launch gaps). This stage times the runtime's own prompt pass, captured whole
in one CUDA graph (so no host in it), as serving runs it: after DECODES_BEFORE (8) decode passes of
DECODE_BATCH sequences, each followed by HOST_GAP_S with the GPU idle (the host's scheduling and
inputs), which heat nothing (`servesim.sim.power`), so the clock is where serving's is when a
prompt comes at light load. Rows go to the `passes` table (method `runtime_graph`), with the
same graph after an idle GPU (`runtime_graph_rested`, for comparison) and the pass as the runtime
issues it while serving, piecewise graphs and host launches in it (`runtime_served`, from the
start event to the end: the span serving's step tables call the pass's GPU time). The cost model
(`cost_model.prompt_passes`, default auto) prices a whole-GPU prompt pass's layers at the
one-graph pass over its operators' sum and adds what issuing it added (served less one-graph):
`ProfiledCostModel._prompt_pass_table`, `_prompt_issue_table`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from servesim.models.arch import ModelArch
from servesim.policies.base import Step
from servesim.profiler.timing import summarize
from servesim.request import Request
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import RuntimeModel
from servesim.runtime.plan import build_plan

RUNTIME_PROMPTS = {"tiny": (8, 24),
                   "quick": (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192),
                   "full": (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)}
"""Prompt lengths timed, per grid mode."""
REPS = {"tiny": 1, "quick": 7, "full": 11}
DECODE_BATCH = {"tiny": (2, 16), "quick": (32, 1152), "full": (32, 1152)}
"""(sequences, context of each) of the decode passes before each timed prompt."""
DECODES_BEFORE = {"tiny": 1, "quick": 8, "full": 8}
HOST_GAP_S = 0.0005
RESTED_S = 0.2
METHODS = ("runtime_graph", "runtime_graph_rested", "runtime_served")
RUNTIME_KEY = "passes|runtime|"
"""Prefix of the rows' journal keys (`runtime_keys`: all measured in one go)."""
BATCH_ID = 10_000
"""batch_id of the first row (the profiler's other passes count from 0)."""


def _cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _timed(run: Callable[[], None], device: torch.device) -> float:
    """One run, in us: CUDA events around it on the GPU, the wall clock elsewhere."""
    if not _cuda(device):
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e6
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3


def _sync(device: torch.device) -> None:
    if _cuda(device):
        torch.cuda.synchronize(device)


def _after_decodes(run: Callable[[], None], decode: Callable[[], None], device: torch.device,
                   passes: int) -> float:
    for _ in range(passes):
        decode()
        _sync(device)
        time.sleep(HOST_GAP_S)
    return _timed(run, device)


def _rested(run: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    time.sleep(RESTED_S)
    return _timed(run, device)


def measure_runtime_prompts(arch: ModelArch, device: torch.device, mode: str, num_sms: int,
                            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`passes` rows of the runtime's prompt passes (METHODS) at each of RUNTIME_PROMPTS[mode].
    Off the GPU (the CPU interpreter) nothing is captured: every method times the pass as the
    runtime issues it."""
    sizes, reps, before = RUNTIME_PROMPTS[mode], REPS[mode], DECODES_BEFORE[mode]
    batch, context = DECODE_BATCH[mode]
    block = 16
    blocks_needed = -(-max(sizes) // block) + batch * (-(-(context + 1) // block)) + 8
    dtype = torch.bfloat16 if _cuda(device) else torch.float32
    model = RuntimeModel(arch, blocks_needed, block, device, dtype=dtype)
    tables = BlockTables(blocks_needed)
    decodes = [Request(i, 0.0, context, 2) for i in range(batch)]
    for r in decodes:
        r.num_computed_tokens, r.num_generated_tokens = context - 1, 1
        r.kv_blocks = -(-(context + 1) // block)
        tables.sync(r)
    plans = {"decode": build_plan(Step(decodes=decodes), tables, block, arch.num_layers, arch.vocab_size, device)}
    prompt = Request(batch, 0.0, max(sizes), 2)
    prompt.kv_blocks = -(-max(sizes) // block)
    tables.sync(prompt)  # one prompt's blocks serve every length (each pass writes its own KV)
    for q in sizes:
        prompt.num_prompt_tokens = prompt.prefill_target = q
        plans[q] = build_plan(Step(prefills=[(prompt, q)]), tables, block, arch.num_layers, arch.vocab_size, device)

    def drain(plan: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in model.forward(plan):
                pass
        return run

    whole: dict[Any, Callable[[], None]] = {}
    keep: list[Any] = []
    for key, plan in plans.items():  # whole-pass graphs first (before the piecewise ones exist)
        run = drain(plan)
        run()  # compiles
        _sync(device)
        if _cuda(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run()
            _sync(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                run()
            _sync(device)
            keep.append(graph)
            run = graph.replay
        whole[key] = run
    samples: dict[tuple[str, int], list[float]] = {}
    for q in sizes:
        samples[("runtime_graph", q)] = [_after_decodes(whole[q], whole["decode"], device, before)
                                         for _ in range(reps)]
        samples[("runtime_graph_rested", q)] = [_rested(whole[q], device) for _ in range(max(1, reps // 2))]
        if progress:
            progress(f"runtime prompt pass {q}: {np.median(samples[('runtime_graph', q)]):.0f} us")
    model.capture_graphs(max(sizes))  # serving's piecewise graphs (none off the GPU)
    for q in sizes:
        served = drain(plans[q])
        served()  # compiles what the piecewise graphs did not
        samples[("runtime_served", q)] = [_after_decodes(served, whole["decode"], device, before)
                                          for _ in range(reps)]
    _sync(device)
    rows = []
    for i, ((method, q), times) in enumerate(sorted(samples.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1]))):
        timing = summarize(np.asarray(times), method if _cuda(device) else f"{method}_cpu")
        rows.append({"batch_id": BATCH_ID + i, "prefill_tokens": str(q), "prefill_prefix": "0",
                     "num_decodes": 0, "decode_context": 0, "max_decode_context": 0, "num_logits": 1,
                     **timing.row(), "sms": num_sms, "corunner_decodes": 0, "corunner_context": 0,
                     "corunner_sms": 0, "corunner_prompt": 0})
    return rows


def runtime_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Journal keys of the rows (`passes|runtime|METHOD|TOKENS`)."""
    return [f"{RUNTIME_KEY}{r['method']}|{r['prefill_tokens']}" for r in rows]
