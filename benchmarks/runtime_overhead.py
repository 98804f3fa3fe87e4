"""Host overhead of servesim's runtime, measured side by side with its GPU time: the same
forward pass run eagerly (the host launches every kernel), with the runtime's piecewise CUDA
graphs (two graph replays per layer, attention launched from the host), and replayed whole from
one CUDA graph (GPU time alone). For each, the wall time of the pass and the time the host took
to issue it (before the final synchronisation): a pass is host-bound when the host's issue time
reaches its wall time. Eager: the gap to the GPU time, divided by the kernels the pass launches,
is the host cost per launch that `cost_model.host_launch_us` feeds to the simulator; input
preparation plus scheduling is `host_step_us`. Prints one JSON object; --out also writes it.

    PYTHONPATH=. python benchmarks/runtime_overhead.py --model llama-3.1-8b --out FILE
    python benchmarks/runtime_overhead.py --merge A.json B.json C.json --out FILE   (no GPU)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape
from servesim.policies import REGISTRY, EngineLimits, Step
from servesim.request import Request, State
from servesim.runtime.blocks import BlockTables
from servesim.runtime.calibrate import decode_loops
from servesim.runtime.engine import RUN_AHEAD, StepRecord
from servesim.runtime.model import RuntimeModel
from servesim.runtime.partitioned import PartitionedRuntime, PartitionLanes
from servesim.runtime.plan import build_plan
from servesim.sim.cost_model import make_cost_model
from servesim.sim.hardware import get_gpu
from servesim.sim.host_overhead import FULL_DECODE_LAUNCHES, HostOverheadCostModel
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


def _issue_ms(model: RuntimeModel, plan: object, reps: int = 30) -> tuple[float, float]:
    """Median (wall, host issue) times of one pass, in ms."""
    walls, issues = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        _drain(model, plan)
        issued = time.perf_counter()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t) * 1e3)
        issues.append((issued - t) * 1e3)
    return statistics.median(walls), statistics.median(issues)


def _case(model: RuntimeModel, step: Step, blocks: BlockTables, limits: EngineLimits) -> dict[str, float]:
    plan = build_plan(step, blocks, limits.block_size, limits.num_layers, model.arch.vocab_size, model.device)
    _drain(model, plan)
    eager, eager_issue = _issue_ms(model, plan)
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
    return {"eager_ms": eager, "eager_issue_ms": eager_issue, "gpu_ms": replay, "plan_ms": prep}


def _graphed_constants(cases: dict[str, dict[str, float]], loops: dict[str, dict[str, float]]
                       ) -> dict[str, object]:
    """The host model's constants for the runtime with graphs. host_launch_us: the host's issue
    time of a pass over what it issues, in the runtime's own serving loop (median over the
    loops' decode steps; `isolated_launch_us` is the same for a pass issued alone, which runs
    faster than inside the loop). host_check_us: the host's time for one check (the policy's
    decision and the event it waits on), timed alone, and host_check_per_seq_us what each
    running request adds to it. host_gap_us: the graphed pass's time over the same pass
    replayed as one graph, per launch from the host (median over the cases). host_step_us and
    host_per_seq_us are added by `main` (`per_seq_fit` over the full-graph loops)."""
    per_launch = [1e3 * c["graphed_issue_ms"] / c["graphed_launches"] for c in cases.values()]
    gaps = [1e3 * (c["graphed_ms"] - c["gpu_ms"]) / c["graphed_launches"] for c in cases.values()]
    return {"host_launch_us": round(statistics.median(loop["launch_us"] for loop in loops.values()), 2),
            "isolated_launch_us": round(statistics.median(per_launch), 2),
            **_check_constants(cases), "host_gap_us": round(statistics.median(gaps), 2), "loops": loops}


def _check_constants(cases: dict[str, dict[str, float]]) -> dict[str, float]:
    """host_check_us: one check with no request running; host_check_per_seq_us: what each
    running request adds (medians over the prefill cases)."""
    checked = [c for c in cases.values() if "host_check_us" in c]
    return {"host_check_us": round(statistics.median(c["host_check_us"] for c in checked), 1),
            "host_check_per_seq_us": round(statistics.median(c["host_check_per_seq_us"] for c in checked), 3)}


LOOPS = ((1, 128), (8, 1024), (32, 1024), (64, 1024), (128, 1024))
"""(requests, prompt) of the decode loops: serving at 90 % load decodes 48-128 sequences a step.
Loops of 1, 8 and 32 alone put host_per_seq_us at 3.0-14.5 us (one loop on a slow stretch of the
host sets the slope), and priced the host of 64-96-decode steps at 0.72 ms against 0.97 ms
measured in vllm's 90 % run."""


def _decode_loops(model: RuntimeModel, limits: EngineLimits, host: HostOverheadCostModel,
                  output: int = 64, rounds: int = 3) -> dict[str, dict[str, float]]:
    """LOOPS in the runtime's own loop (`servesim.runtime.calibrate.decode_loops`)."""
    return decode_loops(model, limits, host, LOOPS, output, rounds)


def _full_decode(model: RuntimeModel, limits: EngineLimits, host: HostOverheadCostModel, max_decodes: int = 256
                 ) -> tuple[dict[str, object], dict[str, dict[str, float]]]:
    """The same loops with every decode-only pass replayed whole from one graph (the runtime's
    `cuda_graph_max_decodes`): the interval between steps against the piecewise loops', the
    host's time around a step (the simulator's host_step_us fits both loop sets), and
    host_graph_issue_us: the host's time from a step's first launch to its last (the inputs'
    copies, the replay, sampling), median over the loops, which the GPU's work waits for."""
    started = time.perf_counter()
    graphs = model.capture_decode_graphs(max_decodes, limits.max_model_len)
    capture_s = time.perf_counter() - started
    full = HostOverheadCostModel(host.inner, host.arch, 1.0, 0.0, host.graph_max_tokens,
                                 graph_max_decodes=max_decodes)
    loops = _decode_loops(model, limits, full)
    return {"graphs": graphs, "capture_s": round(capture_s, 1), "host_graph_issue_us": graph_issue_us(loops),
            **per_seq_fit(loops), "loops": loops}, loops


def graph_issue_us(loops: dict[str, dict[str, float]]) -> float:
    """The host's time to issue one fully graphed decode pass: the full-graph loops' median
    issue time per launch times what such a pass launches."""
    return round(statistics.median(loop["launch_us"] for loop in loops.values()) * FULL_DECODE_LAUNCHES, 1)


def _issue_per_launch(records: list[StepRecord], host: HostOverheadCostModel) -> float:
    """Median over steps of the host's issue time (first to last launch) per launch, in us."""
    return 1e6 * statistics.median((r.issued - r.ready) / host.launches(r.shape) for r in records)


def _partitioned_constants(model: RuntimeModel, limits: EngineLimits, host: HostOverheadCostModel,
                           prefill_sms: int = 64, prompt: int = 1024, decodes: int = 32, output: int = 200,
                           prefills: int = 50, graphs: bool = True) -> dict[str, object]:
    """The launch cost inside the partitioned runtime (Nexus): one host thread launching both
    partitions' passes piece by piece in turn. A static split serves 32 decoding requests while
    1024-token prompts arrive every 40 ms from 0.5 s on; per decode step, the host's issue time per launch,
    alone and while a prefill ran on the other partition (the host then also launches its
    pieces). host_launch_us: the median over all decode steps. With graphs, the same load again
    with each decode-only pass replayed whole, as serving runs it: the host's time around those
    steps in this loop (`_host_around`)."""
    policy_cls = REGISTRY["nexus"]
    policy = policy_cls(policy_cls.Params(adaptive=False, initial_prefill_sms=prefill_sms), limits)
    policy.predict = host.step_time
    made = PartitionLanes(model, limits, graphs)
    rows = (policy.params.token_budget, policy.params.max_num_seqs)

    def serve(decode_graph_rows: int) -> list[StepRecord]:
        lanes = made.get([prefill_sms], *rows, decode_graph_rows, limits.max_model_len)
        runtime = PartitionedRuntime(model, policy, limits, lanes)
        requests = [Request(i, 0.0, prompt, output) for i in range(decodes)]
        requests += [Request(decodes + i, 0.5 + 0.04 * i, prompt, 2) for i in range(prefills)]
        runtime.run(requests)
        return runtime.steps

    decode = [r for r in serve(0) if not r.shape.prefill_tokens and r.shape.num_decodes == decodes]
    alone = [r for r in decode if r.corunner < 0]
    beside = [r for r in decode if r.corunner >= 0]
    out: dict[str, object] = {
        "prefill_sms": prefill_sms, "decode_steps": len(decode), "beside_prefill": len(beside),
        "host_launch_us": round(_issue_per_launch(decode, host), 2),
        "alone_launch_us": round(_issue_per_launch(alone, host), 2) if alone else None,
        "beside_prefill_launch_us": round(_issue_per_launch(beside, host), 2) if beside else None}
    if graphs:
        out["full_decode"] = _host_around(serve(policy.params.max_num_seqs), decodes)
    return out


def _host_around(steps: list[StepRecord], batch: int) -> dict[str, float]:
    """Medians over a loop's decode-only steps of `batch` sequences followed by another step
    of their partition: the host's time before the first launch, after the pass's end (to that
    next step's start) and from the first launch to the last (a pass replayed whole); `main`
    turns them into host_step_us (with the plain loops' per-sequence slope) and
    host_graph_issue_us of the partitioned runtime."""
    pairs = []
    for i, rec in enumerate(steps):
        if rec.shape.prefill_tokens or rec.shape.num_decodes != batch:
            continue
        later = next((s for s in steps[i + 1:] if s.partition == rec.partition), None)
        if later is not None:
            pairs.append((rec, later))
    return {"steps": len(pairs), "batch": batch,
            "before_ms": round(1e3 * statistics.median(r.ready - r.start for r, _ in pairs), 4),
            "after_ms": round(1e3 * statistics.median(n.start - r.end for r, n in pairs), 4),
            "issue_ms": round(1e3 * statistics.median(r.issued - r.ready for r, _ in pairs), 4)}


def per_seq_fit(loops: dict[str, dict[str, float]]) -> dict[str, float]:
    """host_step_us + host_per_seq_us x batch, least squares over the loops' host costs: per
    decode step, the host's time outside the pass with the GPU idle, from the step's start to
    its first launch (scheduling, KV, inputs) plus from the pass's end to the next step's start
    (sampling, bookkeeping); what `servesim validate` separates from a step's GPU time, which
    the profile prices (the piecewise pass's own gaps included)."""
    xs = [loop["batch"] for loop in loops.values()]
    ys = [loop["host_step_us"] for loop in loops.values()]
    slope, intercept = statistics.linear_regression(xs, ys)
    return {"host_step_us": round(intercept, 1), "host_per_seq_us": round(slope, 2)}


CHECK_RUNNING = 128
"""Running decodes in the state of the second timing of the check (FlowPrefill's check scans
them for due decodes: 0.054-0.063 us each on the H200 hosts of the ninth session, ~0.2 us on a
2-core CPU)."""


def _checked_ms(model: RuntimeModel, plan: object, step: Step, reps: int = 20,
                running: int = 0) -> tuple[float, int, float]:
    """Median wall time of a pass driven as the runtime drives an operator-level policy's pass:
    after launching each attention or MLP block, wait for the block before it and ask the
    policy (`servesim.runtime.engine.RUN_AHEAD`); the number of blocks; and the median host
    time of one check (the event recorded and the policy asked, the wait left out), with
    `running` decoding requests in the state, none due (so the policy scans them all)."""
    policy_cls = REGISTRY["flowprefill"]
    policy = policy_cls(policy_cls.Params(), EngineLimits(16, 1024, 0, 32768, model.arch.num_layers))
    state = ServingState(policy.limits)
    for i in range(running):
        req = Request(200_000 + i, 0.0, 16, 1 << 20)
        req.state, req.num_computed_tokens, req.token_times_s = State.RUNNING, 16, [float("inf")]
        state.running.append(req)
    times, checks, blocks = [], [], 0
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        blocks, queued = 0, collections.deque()
        for _ in model.forward(plan):  # type: ignore[arg-type]
            began = time.perf_counter()
            event = torch.cuda.Event()
            event.record()
            queued.append(event)
            if len(queued) > RUN_AHEAD:
                waited = time.perf_counter()
                queued.popleft().synchronize()
                began += time.perf_counter() - waited
            policy.should_preempt(state.view(time.perf_counter()), step, start)
            checks.append(time.perf_counter() - began)
            blocks += 1
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), blocks, 1e6 * statistics.median(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--out")
    parser.add_argument("--checks-only", action="store_true",
                        help="only the per-block check cost of operator-level passes (graphed)")
    parser.add_argument("--no-partitioned", action="store_true",
                        help="skip the partitioned runtime's launch cost (Nexus; needs green contexts)")
    parser.add_argument("--merge", nargs="+", metavar="RESULT",
                        help="no GPU: merge these results into one host reference (`merged`) and stop")
    args = parser.parse_args()
    if args.merge:
        _emit(merged({Path(f).name: json.loads(Path(f).read_text()) for f in args.merge}), args.out)
        return
    arch = load_model(args.model)
    limits = EngineLimits(16, 16384, 160, 32768, arch.num_layers, 132)
    model = RuntimeModel(arch, limits.total_blocks, 16, torch.device("cuda"))
    blocks, host = BlockTables(limits.total_blocks), HostOverheadCostModel(
        make_cost_model("roofline", arch, get_gpu("h200")), arch, 1.0, 0.0, 2048)
    out: dict[str, object] = {"model": args.model, "gpu": torch.cuda.get_device_name(),
                              "torch": torch.__version__}
    cases: dict[str, dict[str, float]] = {}
    steps: dict[str, Step] = {}
    shapes: dict[str, BatchShape] = {}
    for name, batch, ctx, prompt in (("decode_b1", 1, 128, 0), ("decode_b8", 8, 1024, 0),
                                     ("decode_b32", 32, 1024, 0), ("decode_b128", 128, 1024, 0),
                                     ("prefill_96", 0, 0, 96), ("prefill_512", 0, 0, 512),
                                     ("prefill_2048", 0, 0, 2048),
                                     ("mixed_512_b32", 32, 1024, 480)):
        decodes = [Request(i + 1000 * len(steps), 0.0, ctx, 2) for i in range(batch)]
        for r in decodes:
            r.num_computed_tokens, r.num_generated_tokens, r.kv_blocks = ctx, 1, -(-(ctx + 1) // 16)
            blocks.sync(r)
        prefills = []
        if prompt:
            p = Request(100_000 + len(steps), 0.0, prompt, 2)
            p.kv_blocks = prompt // 16
            blocks.sync(p)
            prefills = [(p, prompt)]
        if args.checks_only and not prompt:
            continue
        steps[name] = step = Step(prefills=prefills, decodes=decodes)
        result = {"eager_ms": 0.0, "gpu_ms": 0.0} if args.checks_only else _case(model, step, blocks, limits)
        shape = BatchShape((prompt,) if prompt else (), (0,) if prompt else (), batch, batch * (ctx + 1),
                           ctx + 1, batch + (1 if prompt else 0))
        shapes[name] = shape
        result["launches"] = host.eager_launches(shape)
        result["graphed_launches"] = host.graphed_launches(shape)
        result["host_launch_us"] = 1e3 * (result["eager_ms"] - result["gpu_ms"]) / result["launches"]
        cases[name] = result
    started = time.perf_counter()
    out["graphs"] = model.capture_graphs(2048)
    out["capture_s"] = round(time.perf_counter() - started, 1)
    for name, step in steps.items():
        plan = build_plan(step, blocks, limits.block_size, limits.num_layers, arch.vocab_size, model.device)
        _drain(model, plan)
        cases[name]["graphed_ms"], cases[name]["graphed_issue_ms"] = _issue_ms(model, plan)
        if step.prefills:  # operator-level policies check after every block
            checked, count, check_us = _checked_ms(model, plan, step)
            cases[name]["checked_ms"] = checked
            cases[name]["added_per_block_us"] = 1e3 * (checked - cases[name]["graphed_ms"]) / count
            cases[name]["host_check_us"] = check_us
            full_check_us = _checked_ms(model, plan, step, running=CHECK_RUNNING)[2]
            cases[name]["host_check_per_seq_us"] = (full_check_us - check_us) / CHECK_RUNNING
    out["cases"] = cases
    if args.checks_only:
        out["graphed"] = _check_constants(cases)
        _emit(out, args.out)
        return
    # Eager: host-bound decode at batch 1 gives the launch cost; scheduling + plan build the step cost.
    out["host_launch_us"] = round(cases["decode_b1"]["eager_ms"] * 1e3 / cases["decode_b1"]["launches"], 2)
    policy_cls = REGISTRY["sarathi"]
    policy = policy_cls(policy_cls.Params(), limits)
    state = ServingState(limits)
    sched_ms = _median_ms(lambda: policy.schedule(state.view(0.0)), 200)
    out["host_step_us"] = round(1e3 * (cases["decode_b32"]["plan_ms"] + sched_ms), 1)
    loops = _decode_loops(model, limits, host)
    graphed = _graphed_constants(cases, loops)
    if not args.no_partitioned:  # (before the whole GPU's lane has full decode graphs)
        out["partitioned"] = _partitioned_constants(model, limits, host)
    out["full_decode"], full_loops = _full_decode(model, limits, host)
    # Serving replays decode-only steps (every token gap) whole from a graph: host_step_us and
    # host_per_seq_us are the full-graph loops' line. (The piecewise loops' host lies 66-172 us
    # above it; steps with a prompt, which run piecewise, last 10-100 ms.)
    out["graphed"] = {**graphed, **per_seq_fit(full_loops), "per_seq_fit": "full-graph loops"}
    partitioned = out.get("partitioned")
    if isinstance(partitioned, dict) and isinstance(partitioned.get("full_decode"), dict):
        # Nexus's loop, as it serves: its host time around a decode step, less what the
        # sequences add (the plain loops' slope), and its issue of a pass replayed whole.
        around, per_seq = partitioned["full_decode"], float(out["graphed"]["host_per_seq_us"])
        partitioned["host_step_us"] = round(1e3 * (around["before_ms"] + around["after_ms"]) - per_seq * around["batch"], 1)
        partitioned["host_graph_issue_us"] = round(1e3 * around["issue_ms"], 1)
    _emit(out, args.out)


MERGED_CONSTANTS = ("host_launch_us", "host_check_us", "host_check_per_seq_us", "host_gap_us")
"""The 'graphed' constants a merged file takes the median of (host_step_us and host_per_seq_us
are fitted again over the merged loops)."""


def merged(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One host reference from several runtime_overhead.py results (name -> result) of one model
    and runtime: per full-decode-graph loop and field, the median over the results that timed it;
    the 'graphed' constants' medians; host_step_us and host_per_seq_us fitted over the merged
    loops and host_graph_issue_us from them, as `main` does for one result. A single result's
    loops carry the stretch of host speed each loop ran in, and one factor cannot scale a line's
    slope apart from its intercept: the three results of the twelfth to fourteenth sessions put
    the line at 424 + 3.68, 294 + 4.18 and 282 + 4.30 us per sequence, the first with its small
    loops on a slow stretch (its 1- and 8-sequence loops 1.4-1.5x the others', its 128-sequence
    loop 1.07x). The partitioned runtime's constants are not merged."""
    if len(results) < 2:
        raise SystemExit("--merge needs two or more results")
    models = {r.get("model") for r in results.values()}
    if len(models) != 1:
        raise SystemExit(f"--merge: results of different models {sorted(map(str, models))}")
    names = {n for r in results.values() for n in r["full_decode"]["loops"]}
    loops = {}
    for name in sorted(names, key=lambda n: float(n.removeprefix("decode_b"))):
        timed = [r["full_decode"]["loops"][name] for r in results.values() if name in r["full_decode"]["loops"]]
        loops[name] = {k: statistics.median(float(t[k]) for t in timed) for k in timed[0]}
    graphed = {k: round(statistics.median(float(r["graphed"][k]) for r in results.values()), 3)
               for k in MERGED_CONSTANTS if all(k in r["graphed"] for r in results.values())}
    fit = per_seq_fit(loops)
    return {"model": models.pop(), "gpu": next(iter(results.values()))["gpu"], "merged_from": sorted(results),
            "full_decode": {"host_graph_issue_us": graph_issue_us(loops), **fit, "loops": loops},
            "graphed": {**graphed, **fit, "per_seq_fit": "full-graph loops, merged"}}


def _emit(out: dict[str, object], path: str | None) -> None:
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


if __name__ == "__main__":
    main()
