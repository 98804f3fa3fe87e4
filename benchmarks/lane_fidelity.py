"""Decode-only passes on Nexus's decode lanes, timed the profiler's way and the runtime's way,
side by side with their price (GPU only; needs disjoint green-context partitions).

Issue 7's Nexus runs measured the decode lane's passes of 9-16 decodes on 68-84 SMs 5-10 % over
their price, while on 92 SMs they were on it (and `pass_contention.py --cases batch` had timed
the profiler's pass of 2-16 decodes on 92 SMs within 1.5-3 % of the price). Per decode lane
(the rest of the SMs a prefill share of PREFILL_SHARES leaves) and per batch of BATCHES decodes
of CONTEXT tokens, in one run:

  profile   the profiler's pass (`profiler.forward.Forward` on the lane's SM count) captured in
            one CUDA graph on the partition's stream, replayed REPS times;
  runtime   the runtime's pass as Nexus serves it: `PartitionLanes`' decode lane, the whole
            decode-only pass replayed from its full graph (inputs copied in first), REPS times.

The profiler's pass is priced by ProfiledCostModel.step_time of the same shape on those SMs;
the runtime's as the simulator prices a served step (`HostOverheadCostModel.gpu_s` over the
profiled model with the runtime's graph sizes: the in-pass factor of the graph's row count and
the graph's padding rows). `--kernels` also breaks the passes of KERNEL_BATCHES down by kernel
(torch.profiler), the runtime's against the profiler's. Prints tables and one JSON object;
--out writes the JSON; --measured FILE prices a written JSON again (no GPU).

Measured (h200-lane-fidelity-kernels.json, 2026-12-02): on every decode lane the runtime's pass
of 9 decodes, replayed from the 16-row graph, ran 3.3-6.6 % over its served price, those of 8
and 16 (no padding) within -0.3..+3.7 %; its decode attention took 27-54 us a pass more than a
launch of the 9 rows alone and the split merge 5-23 us more (the padding rows' programs).

    PYTHONPATH=.:benchmarks python benchmarks/lane_fidelity.py [--kernels] --out FILE
    PYTHONPATH=.:benchmarks python benchmarks/lane_fidelity.py --measured FILE
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape
from servesim.sim.hardware import get_gpu
from servesim.sim.host_overhead import HostOverheadCostModel
from servesim.sim.profiled import ProfiledCostModel

PREFILL_SHARES = (64, 56, 48, 40)
"""Prefill SMs of the splits: decode lanes of 68, 76, 84 and 92 SMs (Nexus's in issue 7)."""
BATCHES = (4, 8, 9, 13, 16, 24)
CONTEXT = 1024
REPS = 10
KERNEL_BATCHES = (8, 9, 16)
"""Batches whose passes are also broken down by kernel (torch.profiler) with --kernels."""
GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32)
"""The runtime's captured decode sizes up to 32 (runtime.model.GRAPH_SIZES)."""


def _shape(n: int) -> BatchShape:
    return BatchShape(num_decodes=n, decode_context=n * CONTEXT, max_decode_context=CONTEXT, num_logits=n)


def measure(model_name: str, kernels: bool = False) -> list[dict[str, Any]]:
    import torch
    from pass_contention import _graph  # the profiler's pass on a partition
    from pass_fidelity import _kernel_us, replays_us

    from servesim.policies import EngineLimits, Step
    from servesim.profiler.operators import OperatorFactory
    from servesim.request import Request
    from servesim.runtime.blocks import BlockTables
    from servesim.runtime.model import RuntimeModel
    from servesim.runtime.partitioned import PartitionLanes
    from servesim.runtime.plan import build_plan

    device = torch.device("cuda")
    arch = load_model(model_name)
    limits = EngineLimits(16, 16384, 160, 32768, arch.num_layers, 132)
    runtime = RuntimeModel(arch, limits.total_blocks, 16, device)
    lanes = PartitionLanes(runtime, limits)
    factory = OperatorFactory(arch, device, max(BATCHES) * CONTEXT + 16)
    blocks = BlockTables(limits.total_blocks)
    rows = []

    def timed(run: Any, stream: Any) -> list[float]:  # one run, then REPS back to back
        with torch.cuda.stream(stream):
            run()
            torch.cuda.synchronize()
            return replays_us(run, REPS)

    for share in PREFILL_SHARES:
        _, lane = lanes.get([share], 16, max(BATCHES), max(BATCHES), 2 * CONTEXT)[share]
        rest = lanes.partitions.pair(share)[1]
        assert rest is not None
        for i, n in enumerate(BATCHES):
            reqs = [Request(10_000 * share + 100 * i + j, 0.0, CONTEXT, 2) for j in range(n)]
            for r in reqs:
                r.num_computed_tokens, r.num_generated_tokens = CONTEXT - 1, 1
                r.kv_blocks = -(-CONTEXT // 16)
                blocks.sync(r)
            plan = build_plan(Step(decodes=reqs), blocks, 16, arch.num_layers, arch.vocab_size, device)

            def serve(plan: Any = plan, lane: Any = lane) -> None:
                for _ in runtime.forward(plan, lane):
                    pass

            forward, graph = _graph(factory, _shape(n), lane.num_sms, rest.stream)
            rows.append({"decode_sms": lane.num_sms, "decodes": n, "context": CONTEXT,
                         "profile_us": timed(graph.replay, rest.stream), "runtime_us": timed(serve, rest.stream)})
            if kernels and n in KERNEL_BATCHES:
                with torch.cuda.stream(rest.stream):
                    rows[-1]["profile_kernels"] = _kernel_us(graph.replay)
                    rows[-1]["runtime_kernels"] = _kernel_us(serve)
            del forward, graph
            for r in reqs:  # their blocks back to the pool
                r.kv_blocks = 0
                blocks.sync(r)
        print(f"decode lane of {lane.num_sms} SMs done", flush=True)
    return rows


def report(result: dict[str, Any]) -> None:
    arch, gpu = load_model(result["model"]), get_gpu("h200")
    model = ProfiledCostModel(arch, gpu)  # the profiler's pass: the batch's own rows
    graphed = ProfiledCostModel(arch, gpu)  # the runtime's, as the simulator prices it (servesim.runner)
    graphed.graph_rows = GRAPH_SIZES
    host = HostOverheadCostModel(graphed, arch, 0.0, 0.0, graph_max_tokens=2048, graph_sizes=GRAPH_SIZES)
    print("| decode lane SMs | decodes | profile / price | runtime / price as served (graph's factor, padding) |")
    print("|---:|---:|---:|---:|")
    for r in result["rows"]:
        shape, sms = _shape(r["decodes"]), r["decode_sms"]
        r["priced_us"] = 1e6 * model.step_time(shape, sms)
        r["served_price_us"] = 1e6 * host.gpu_s(shape, sms)
        profile, runtime = statistics.median(r["profile_us"]), statistics.median(r["runtime_us"])
        print(f"| {sms} | {r['decodes']} | {profile / r['priced_us']:.3f} | {runtime / r['served_price_us']:.3f} |")
    broken = [r for r in result["rows"] if "runtime_kernels" in r]
    if broken:
        print("\n| decode lane SMs | decodes | us a pass, runtime - profile: decode attention | its merge "
              "| GEMMs | the rest |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in broken:
            diff = [_kernel_classes(r["runtime_kernels"])[i] - _kernel_classes(r["profile_kernels"])[i]
                    for i in range(4)]
            print(f"| {r['decode_sms']} | {r['decodes']} | " + " | ".join(f"{d:+.0f}" for d in diff) + " |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


def _kernel_classes(kernels: dict[str, float]) -> list[float]:
    """us a pass in decode attention, its split merge, GEMMs (with their split-K reduction),
    and everything else."""
    attn = sum(v for k, v in kernels.items() if "decode_attn" in k)
    merge = sum(v for k, v in kernels.items() if "decode_reduce" in k)
    gemm = sum(v for k, v in kernels.items() if "gemm" in k.lower() or "splitk" in k.lower())
    return [attn, merge, gemm, sum(kernels.values()) - attn - merge - gemm]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--out")
    parser.add_argument("--measured", help="a JSON this script wrote: price its rows again, no GPU")
    parser.add_argument("--kernels", action="store_true",
                        help=f"also break the passes of {KERNEL_BATCHES} decodes down by kernel")
    args = parser.parse_args()
    if args.measured:
        result = json.loads(Path(args.measured).read_text())
    else:
        import torch
        if not torch.cuda.is_available():
            print("lane_fidelity.py: needs a CUDA GPU (or --measured FILE)", file=sys.stderr)
            return 2
        result = {"model": args.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "command": "PYTHONPATH=. python benchmarks/lane_fidelity.py --out FILE", "reps": REPS,
                  "rows": measure(args.model, args.kernels)}
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
