"""Host overhead of servesim's runtime, measured side by side with its GPU time: the same
forward pass run eagerly (the host launches every kernel) and replayed from a CUDA graph (GPU
time alone). Their gap, divided by the kernels the pass launches, is the host cost per launch
that `cost_model.host_launch_us` feeds to the simulator; input preparation plus scheduling is
`host_step_us`. Prints one JSON object; --out also writes it.

    PYTHONPATH=. python benchmarks/runtime_overhead.py --model llama-3.1-8b --out FILE
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape
from servesim.policies import REGISTRY, EngineLimits, Step
from servesim.request import Request
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import RuntimeModel
from servesim.runtime.plan import build_plan
from servesim.sim.cost_model import make_cost_model
from servesim.sim.hardware import get_gpu
from servesim.sim.host_overhead import HostOverheadCostModel
from servesim.sim.state import ServingState


def _drain(model: RuntimeModel, plan: object) -> None:
    for _ in model.forward(plan):  # type: ignore[arg-type]
        pass


def _median_ms(fn: object, reps: int = 30) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _case(model: RuntimeModel, step: Step, blocks: BlockTables, limits: EngineLimits) -> dict[str, float]:
    plan = build_plan(step, blocks, limits.block_size, limits.num_layers, model.arch.vocab_size, model.device)
    _drain(model, plan)
    eager = _median_ms(lambda: _drain(model, plan))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        _drain(model, plan)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        _drain(model, plan)
    replay = _median_ms(graph.replay)
    prep = _median_ms(lambda: build_plan(step, blocks, limits.block_size, limits.num_layers,
                                         model.arch.vocab_size, model.device))
    return {"eager_ms": eager, "gpu_ms": replay, "plan_ms": prep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--out")
    args = parser.parse_args()
    arch = load_model(args.model)
    limits = EngineLimits(16, 4096, 40, 32768, arch.num_layers, 132)
    model = RuntimeModel(arch, limits.total_blocks, 16, torch.device("cuda"))
    blocks, host = BlockTables(limits.total_blocks), HostOverheadCostModel(
        make_cost_model("roofline", arch, get_gpu("h200")), arch, 1.0, 0.0)
    out: dict[str, object] = {"model": args.model, "gpu": torch.cuda.get_device_name(),
                              "torch": torch.__version__}
    cases = {}
    for name, batch, ctx, prompt in (("decode_b1", 1, 128, 0), ("decode_b32", 32, 1024, 0),
                                     ("prefill_512", 0, 0, 512), ("mixed_512_b32", 32, 1024, 512)):
        decodes = [Request(i, 0.0, ctx, 2) for i in range(batch)]
        for r in decodes:
            r.num_computed_tokens, r.num_generated_tokens, r.kv_blocks = ctx, 1, -(-(ctx + 1) // 16)
            blocks.sync(r)
        prefills = []
        if prompt:
            p = Request(10_000, 0.0, prompt, 2)
            p.kv_blocks = prompt // 16
            blocks.sync(p)
            prefills = [(p, prompt)]
        step = Step(prefills=prefills, decodes=decodes)
        result = _case(model, step, blocks, limits)
        shape = BatchShape((prompt,) if prompt else (), (0,) if prompt else (), batch, batch * (ctx + 1),
                           ctx + 1, batch + (1 if prompt else 0))
        result["launches"] = host.launches(shape)
        result["host_launch_us"] = 1e3 * (result["eager_ms"] - result["gpu_ms"]) / result["launches"]
        cases[name] = result
        for r in [*decodes, *(q for q, _ in prefills)]:
            r.kv_blocks = 0
            blocks.sync(r)
    out["cases"] = cases
    # Host-bound decode at batch 1 gives the launch cost; scheduling + plan build the step cost.
    out["host_launch_us"] = round(cases["decode_b1"]["eager_ms"] * 1e3 / cases["decode_b1"]["launches"], 2)
    policy_cls = REGISTRY["sarathi"]
    policy = policy_cls(policy_cls.Params(), limits)
    state = ServingState(limits)
    sched_ms = _median_ms(lambda: policy.schedule(state.view(0.0)), 200)
    out["host_step_us"] = round(1e3 * (cases["decode_b32"]["plan_ms"] + sched_ms), 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
