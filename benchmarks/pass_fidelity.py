"""One pass timed the profiler's way and serving's way, side by side, with the SM clock and the
power drawn sampled over each (GPU only): where serving's passes part from their price.

Issue 7's runs measured short prompts (<= 256 tokens) 7-13 % over their price and decode
batches of 81-128 sequences 4-5 % over, while the profile's own one-graph passes of 1-4k-token
prompts ran 10-11 % over the operators' sum. Per case (a decode batch of uniform contexts, or
one prompt), in one run:

  profile        the profiler's pass (`profiler.forward.Forward`, LAYER_SETS weight sets cycled
                 over the layers) in one CUDA graph, timed as the profiler times passes: after
                 an idle second, one replay, then REPS replays each after a 50 us pause;
  profile_all    the same with one weight set per layer (16 GB of weights, as served);
  runtime        the runtime's pass (`runtime.model.RuntimeModel`: every layer's own weights, a
                 pool of POOL_BLOCKS KV blocks, block tables grown in turns as serving grows
                 them) as serving runs it: a decode batch from its full decode graph, a prompt
                 piecewise (two graph replays per layer, attention launched from the host);
  runtime_graph  a prompt's runtime pass captured whole in one graph (no host in it);
  sustained      SUSTAINED cases replayed back to back for SUSTAIN_S seconds after an idle
                 second: the median replay of the first 0.3 s and of the last second, with the
                 clock and power over each.

`--cases after` times decode batches and a short prompt (`--targets`: AFTER_TARGETS by default)
right after the GPU ran 2,048-token prompts (AFTER: how many of them, then how long the GPU
idled) against the same pass after an
idle 0.3 s: issue 7's decode steps ran 2-3 % slower within 50 ms of a prompt's pass than with
none in the last 200 ms (the clock capped for power in 64-77 % of samples at 90 % load).

`--cases heat` measures what heats the GPU that way: the same targets after about HEAT_S of
prompts of 256-2,048 tokens, of a 512-token chunk with 64 decodes (a Sarathi step) or of decode
batches of 128, each replayed back to back, then 5 or 30 ms idle (HEATERS).

`--cases sweep` times decode batches of SWEEP_BATCHES sequences of about 1,152 tokens each, all
equal and spread from short to long: in issue 7's 90 % runs, decode steps of up to 74 sequences
ran at their price and those of 77-128 0.3-0.6 ms (3-5 %) over it.

`--cases hot` replays HOT decode batches back to back for HOT_S seconds each, timing every
second of it with the clock and power over it: whether decode passes alone, held long enough,
reach the power cap and slow (serving's large batches ran 2-3 % over what they take alone).

`--cases skew` instead times decode batches whose contexts are drawn from the Azure
conversation trace (a prompt plus part of its output, seeded), in the order drawn, longest first
and longest last: serving's batches mix contexts (the largest 2-3.5x the mean in issue 7's 90 %
runs), where the profile times one straggler launched first and the others equal.

`--cases small` times decode batches of 1-33 sequences of SMALL_CONTEXT tokens: the runtime's pass
of a batch between two graph sizes replays the larger graph, the profile's runs the batch's own
rows; SMALL_KERNELS are also broken down by kernel, both ways.

`--cases served --steps DIR` replays decode-only steps a validation run served (DIR holds its
steps.csv.gz and measured_requests.csv): each step's contexts, rebuilt from when its requests
got their first token and finished (they match the step table's count, sum and longest
exactly), in the order they were admitted; SERVED_PER_BIN steps from each bin of SERVED_BINS
sequences. Each row keeps the GPU span serving measured for that step (`served_gpu_us`) beside
the replay's.

The prediction is ProfiledCostModel.step_time of the same shape (the operators' sum, and for a
decode batch the profile's in-pass factor). Prints a table and one JSON object; --out writes
the JSON; --measured FILE prints a written JSON again, priced with this checkout's model.

    PYTHONPATH=. python benchmarks/pass_fidelity.py --out FILE
    PYTHONPATH=. python benchmarks/pass_fidelity.py --cases served --steps RUN_DIR --out FILE
    PYTHONPATH=.:benchmarks python benchmarks/pass_fidelity.py --cases small --out FILE
    PYTHONPATH=. python benchmarks/pass_fidelity.py --measured FILE [--profile DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from servesim.models.arch import ModelArch, load_model
from servesim.models.shapes import BatchShape
from servesim.runtime.clocks import POWER_CAP, ClockMonitor, ClockSample, clock_samples, smi_id
from servesim.sim.hardware import get_gpu
from servesim.sim.profiled import ProfiledCostModel

CASES = (("decode", 32, 1152), ("decode", 96, 1152), ("decode", 128, 1152),
         ("prefill", 128, 0), ("prefill", 256, 0), ("prefill", 1024, 0), ("prefill", 2048, 0))
"""(kind, decodes or prompt tokens, context per decode): sizes at captured graph sizes (no
padding), contexts near the mean of issue 7's 90 % runs (1.1-1.2k)."""
SUSTAINED = (("decode", 128, 1152), ("decode", 32, 1152), ("prefill", 2048, 0))
AFTER = ((0, 0.0), (1, 0.0), (4, 0.0), (4, 0.5), (4, 1.0), (4, 2.0), (4, 5.0), (4, 20.0), (4, 50.0), (4, 100.0))
"""(2,048-token prompts replayed back to back, ms the GPU then idles) before the timed pass."""
AFTER_TARGETS = ("decode_32", "decode_96", "decode_128", "prefill_256")
HEAT_TARGETS = ("decode_32", "decode_96", "prefill_256")
HEATERS = (("prefill_2048", 0.05), ("prefill_2048", 0.2), ("prefill_2048", 1.0), ("prefill_1024", 0.2),
           ("prefill_512", 0.2), ("prefill_256", 0.2), ("mixed_512", 0.2), ("decode_128", 0.2))
"""(heater pass, seconds of it back to back) of `--cases heat`, each then HEAT_GAPS_MS idle."""
HEAT_GAPS_MS = (5.0, 30.0)
SKEW_BATCHES = (64, 96, 128)
SWEEP_BATCHES = tuple(range(56, 129, 4))
"""`--cases sweep`: decode batches of these sizes, contexts of mean SWEEP_MEAN each, equal and
spread (`servesim.profiler.operators.decode_contexts` at SWEEP_SKEW, in a seeded order)."""
SWEEP_MEAN, SWEEP_SKEW = 1152, 1.6
SWEEP_KERNELS = (64, 72, 76, 80, 88, 96)
HOT = (("spread", 96), ("spread", 112), ("equal", 96))
"""`--cases hot`: decode batches (sweep rows) replayed back to back for HOT_S seconds each."""
HOT_S = 20.0
"""Spread batches whose runtime pass is also broken down by kernel (torch.profiler)."""
SMALL_BATCHES = (*range(1, 21), 23, 24, 25, 32, 33)
SMALL_CONTEXT = 640
SMALL_KERNELS = (8, 9, 13, 16)
"""`--cases small`: decode batches of these sizes, SMALL_CONTEXT tokens each; the runtime's pass
of a size between two graph sizes replays the larger graph (padding rows at context 1), where
the profile's pass runs the batch's own rows; kernels broken down for SMALL_KERNELS."""
ORDERS = ("drawn", "longest_first", "longest_last")
SERVED_BINS = ((56, 64), (65, 72), (73, 76), (77, 80), (81, 88), (89, 96), (97, 112))
SERVED_PER_BIN = 4
"""`--cases served`: decode-only steps replayed per bin of batch sizes (inclusive)."""
MAX_CONTEXT = 8192
TRACE = Path(__file__).resolve().parent.parent / "servesim" / "traces" / "samples" / "AzureLLMInferenceTrace_conv.csv"
REPS = 5
IDLE_S = 1.0
SUSTAIN_S = 3.0
POOL_BLOCKS = 32768
SAMPLE_MS = 20
Run = Callable[[], None]


def _over(samples: list[ClockSample], start: float, end: float) -> dict[str, float]:
    """Median clock and power, and the share of samples slowed for power, in [start, end)
    (epoch seconds)."""
    got = [s for s in samples if start <= s.t_s < end]
    if not got:
        return {}
    return {"samples": len(got), "sm_mhz": statistics.median(s.sm_mhz for s in got),
            "min_mhz": min(s.sm_mhz for s in got), "power_w": statistics.median(s.power_w for s in got),
            "power_capped": sum(1 for s in got if s.reasons & POWER_CAP) / len(got)}


def _burst(run: Run) -> list[float]:
    """The profiler's protocol: idle, one replay, REPS replays each after a 50 us pause (us)."""
    torch.cuda.synchronize()
    time.sleep(IDLE_S)
    run()
    torch.cuda.synchronize()
    return replays_us(run, REPS, 50.0)


def replays_us(run: Run, reps: int, pause_us: float = 0.0) -> list[float]:
    """`reps` runs on the current stream, each after `pause_us` of GPU spin, timed by events
    around each (us)."""
    pairs = []
    for _ in range(reps):
        if pause_us:
            torch.cuda._sleep(int(pause_us * 1e-6 * 1.98e9))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) * 1e3 for a, b in pairs]


def _back_to_back(run: Run, seconds: float) -> list[float]:
    """Replays of `run` back to back for `seconds` of wall time, the host a few ahead of the
    GPU, never far: each replay's time (us, between consecutive events)."""
    events = [torch.cuda.Event(enable_timing=True)]
    events[0].record()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        events.append(event)
        if len(events) > 8:
            events[-8].synchronize()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) * 1e3 for i in range(len(events) - 1)]


def _sustained(run: Run) -> dict[str, Any]:
    """Back-to-back replays for SUSTAIN_S seconds after an idle second: medians of the first
    0.3 s and of the last second."""
    torch.cuda.synchronize()
    time.sleep(IDLE_S)
    began = time.time()
    times = _back_to_back(run, SUSTAIN_S)
    ended = time.time()
    at, first, last = 0.0, [], []
    total = sum(times)
    for t in times:
        if at < 0.3e6:
            first.append(t)
        if at >= total - 1e6:
            last.append(t)
        at += t
    out: dict[str, Any] = {"replays": len(times), "first_us": statistics.median(first),
                           "last_us": statistics.median(last)}
    out["first_clock"] = (began, began + 0.3)
    out["last_clock"] = (ended - 1.0, ended)
    return out


def _contexts(row: dict[str, Any]) -> list[int]:
    """A decode row's contexts in batch order."""
    return list(row["contexts"]) if "contexts" in row else [row["context"]] * row["size"]


def _after(target: Run, heater: Run, heats: int, gap_ms: float) -> list[float]:
    """The target's time (us) after an idle 0.3 s, `heats` heater passes and `gap_ms` idle."""
    times = []
    for _ in range(REPS):
        torch.cuda.synchronize()
        time.sleep(0.3)
        for _ in range(heats):
            heater()
        if gap_ms:
            torch.cuda.synchronize()
            time.sleep(gap_ms / 1e3)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return times


def _shape(row: dict[str, Any]) -> BatchShape:
    if row["kind"] == "decode":
        ctx = _contexts(row)
        return BatchShape(num_decodes=len(ctx), decode_context=sum(ctx), max_decode_context=max(ctx),
                          num_logits=len(ctx))
    if row["kind"] == "mixed":
        n = row["decodes"]
        return BatchShape((row["size"],), (0,), n, n * row["context"], row["context"], n + 1)
    return BatchShape((row["size"],), (0,), num_logits=1)


def _skew_rows(seed: int = 0) -> dict[str, dict[str, Any]]:
    """SKEW_BATCHES decode batches of trace contexts (prompt plus a uniform share of the output,
    capped at MAX_CONTEXT), each in ORDERS."""
    import numpy as np
    import pandas as pd
    trace = pd.read_csv(TRACE)
    rng = np.random.default_rng(seed)
    rows = {}
    for n in SKEW_BATCHES:
        pick = rng.choice(len(trace), n, replace=False)
        prompt = trace.ContextTokens.to_numpy()[pick]
        out = trace.GeneratedTokens.to_numpy()[pick]
        drawn = [int(min(p + rng.integers(1, o + 1), MAX_CONTEXT)) for p, o in zip(prompt, out, strict=True)]
        longest = sorted(drawn, reverse=True)
        for order, ctx in zip(ORDERS, (drawn, longest, longest[::-1]), strict=True):
            rows[f"skew{n}_{order}"] = {"kind": "decode", "size": n, "order": order, "contexts": ctx}
    return rows


def served_contexts(folder: Path, steps: Any = None) -> dict[int, list[int]]:
    """Each decode-only step's contexts (step index -> tokens per sequence, in admission order),
    rebuilt from a validation run's request table: a request decodes in the steps that start
    after its first token and before it finished, and has generated one token more for every
    step with decodes that ended since. Raises ValueError where a rebuilt step's count, total
    or longest context differs from the step table's (a preempted request, say). `steps`: the
    run's step table where already read."""
    import numpy as np
    import pandas as pd
    if steps is None:
        steps = pd.read_csv(folder / "steps.csv.gz")
    served = pd.read_csv(folder / "measured_requests.csv")
    served = served[served.status == "completed"].sort_values(["first_scheduled_s", "request_id"])
    ends = (steps.start_s + steps.busy_s)[steps.num_decodes > 0].to_numpy()
    first, finish = served.first_token_s.to_numpy(), served.finish_s.to_numpy()
    prompts = served.num_prompt_tokens.to_numpy()
    got = {}
    for k in np.flatnonzero((steps.num_prefills == 0).to_numpy()):
        row = steps.iloc[k]
        live = (first <= row.start_s) & (finish > row.start_s)
        generated = 1 + np.searchsorted(ends, row.start_s, "right") - np.searchsorted(ends, first[live], "right")
        contexts = (prompts[live] + generated).tolist()
        if (len(contexts), sum(contexts), max(contexts, default=0)) != \
                (row.num_decodes, row.decode_context, row.max_decode_context):
            raise ValueError(f"{folder}: step {k}'s contexts cannot be rebuilt from its requests")
        got[int(k)] = contexts
    return got


def served_rows(folder: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
    """SERVED_PER_BIN decode-only steps of each bin of SERVED_BINS, drawn with `seed`, as rows
    with their contexts and the GPU span serving measured for them."""
    import random

    import pandas as pd
    steps = pd.read_csv(folder / "steps.csv.gz")
    contexts = served_contexts(folder, steps)
    rng, rows = random.Random(seed), {}
    for lo, hi in SERVED_BINS:
        held = [k for k, c in contexts.items() if lo <= len(c) <= hi and max(c) <= MAX_CONTEXT]
        for i, k in enumerate(sorted(rng.sample(held, min(SERVED_PER_BIN, len(held))))):
            rows[f"served{k}"] = {"kind": "decode", "size": len(contexts[k]), "contexts": contexts[k],
                                  "order": "served", "step": k, "release": True, "kernels": i == 0,
                                  "served_gpu_us": 1e6 * float(steps.gpu_s[k]),
                                  "served_issue_us": 1e6 * float(steps.issue_s[k])}
    return rows


def _sweep_rows(seed: int = 0) -> dict[str, dict[str, Any]]:
    """SWEEP_BATCHES decode batches, equal and spread contexts of mean SWEEP_MEAN."""
    import random

    from decode_attention_shapes import spread_contexts
    rows = {}
    for n in SWEEP_BATCHES:
        spread = spread_contexts(n, SWEEP_MEAN, SWEEP_SKEW)
        random.Random(seed + n).shuffle(spread)
        rows[f"equal{n}"] = {"kind": "decode", "size": n, "context": SWEEP_MEAN, "release": True}
        rows[f"spread{n}"] = {"kind": "decode", "size": n, "contexts": spread, "kernels": n in SWEEP_KERNELS,
                              "release": True}
    return rows


def _small_rows() -> dict[str, dict[str, Any]]:
    """SMALL_BATCHES decode batches of SMALL_CONTEXT each."""
    return {f"small{n}": {"kind": "decode", "size": n, "context": SMALL_CONTEXT, "kernels": n in SMALL_KERNELS,
                          "release": True} for n in SMALL_BATCHES}


def _profile_runs(arch: ModelArch, row: dict[str, Any], layer_sets: int,
                  device: torch.device | None = None) -> tuple[Any, Run]:
    """The profiler's pass captured in one graph (keep the Forward alive while it replays)."""
    from servesim.profiler.forward import Forward, IterationIO
    from servesim.profiler.operators import OperatorFactory
    device = device or torch.device("cuda")
    decode = row["kind"] == "decode"
    ctx = _contexts(row) if decode else []
    factory = OperatorFactory(arch, device, sum(ctx) + 16 if decode else row["size"] + 16)
    forward = Forward(factory, [] if decode else [(row["size"], 0)], ctx, len(ctx) if decode else 1,
                      layer_sets=layer_sets)
    io = IterationIO(factory.device)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        forward.run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        forward.run()
    torch.cuda.synchronize()
    return (factory, forward, graph), lambda: io.step(graph.replay, forward.sampled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--profile", help="profile directory to price with (default: the shipped one)")
    parser.add_argument("--out")
    parser.add_argument("--measured", help="a JSON this script wrote: price its rows again, no GPU")
    parser.add_argument("--cases", choices=("uniform", "skew", "sweep", "small", "hot", "after", "heat", "served"),
                        default="uniform")
    parser.add_argument("--steps", help="with --cases served: a validation run's folder")
    parser.add_argument("--targets", default=",".join(AFTER_TARGETS),
                        help="with --cases after: the passes timed after the prompts, KIND_SIZE each "
                             "(decode_N: N decodes of 1,152 tokens; prefill_N: an N-token prompt)")
    args = parser.parse_args()
    if args.measured:
        result = json.loads(Path(args.measured).read_text())
        return _report(result, ProfiledCostModel(load_model(result["model"]), get_gpu("h200"), args.profile),
                       args.out)
    if not torch.cuda.is_available():
        print("pass_fidelity.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    arch = load_model(args.model)
    uniform, after, heat = args.cases == "uniform", args.cases == "after", args.cases == "heat"
    rows = _skew_rows() if args.cases == "skew" else _sweep_rows() if args.cases == "sweep" else \
        _small_rows() if args.cases == "small" else \
        {f"{k}_{s}": {"kind": k, "size": s, "context": c} for k, s, c in CASES}
    if args.cases == "served":
        if not args.steps:
            parser.error("--cases served needs --steps DIR")
        try:
            rows = served_rows(Path(args.steps))
        except (OSError, ValueError, KeyError) as e:  # no such run, or one whose steps cannot be rebuilt
            print(f"pass_fidelity.py: --steps {args.steps}: {e}", file=sys.stderr)
            return 2
    if args.cases == "hot":
        rows = {f"{shape}{n}": {**_sweep_rows()[f"{shape}{n}"], "kernels": False, "hot": True} for shape, n in HOT}
    targets = tuple(args.targets.split(","))
    if after:
        rows = {k: r for k, r in rows.items() if k == "prefill_2048"}
        for key in targets:
            kind, size = key.rsplit("_", 1)
            if kind not in ("decode", "prefill") or not size.isdigit():
                parser.error(f"--targets: {key!r} is not decode_N or prefill_N")
            rows[key] = {"kind": kind, "size": int(size), "context": 1152 if kind == "decode" else 0}
    if heat:
        rows = {k: r for k, r in rows.items() if k in HEAT_TARGETS or k in dict(HEATERS)}
        rows["prefill_512"] = {"kind": "prefill", "size": 512, "context": 0}
        rows["mixed_512"] = {"kind": "mixed", "size": 512, "decodes": 64, "context": 1152}
    profiles = ((4, "profile"), (arch.num_layers, "profile_all")) if uniform else () if after or heat \
        or args.cases in ("hot", "served") else ((4, "profile"),)
    with ClockMonitor(smi_id(torch.device("cuda")), period_ms=SAMPLE_MS) as monitor:
        for layer_sets, name in profiles:
            for key, row in rows.items():
                if row.get("order", "drawn") != "drawn":
                    continue
                keep, run = _profile_runs(arch, row, layer_sets)
                row[f"{name}_us"] = _burst(run)
                if name == "profile" and row.get("kernels"):
                    row["profile_kernels"] = _kernel_us(run)
                if name == "profile" and key == "{}_{}".format(*SUSTAINED[0][:2]):
                    row["profile_sustained"] = _sustained(run)
                del keep, run
                gc.collect()
                torch.cuda.empty_cache()
            print(f"{name} done", flush=True)
        _runtime(arch, rows, sustained=uniform, after=targets if after else (), heat=heat)
    clocks = clock_samples(monitor.lines)
    for row in rows.values():
        for window in row.get("hot") or ():
            window["clock"] = _over(clocks, *window["clock"])
        for key in ("sustained", "profile_sustained"):
            got = row.get(key)
            if got and "first_clock" in got:
                got["first_clock"] = _over(clocks, *got["first_clock"])
                got["last_clock"] = _over(clocks, *got["last_clock"])
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "reps": REPS, "idle_s": IDLE_S, "sustain_s": SUSTAIN_S, "pool_blocks": POOL_BLOCKS,
              "clock_samples": len(clocks), "rows": list(rows.values())}
    return _report(result, ProfiledCostModel(arch, get_gpu("h200"), args.profile), args.out)


def _runtime(arch: ModelArch, rows: dict[str, dict[str, Any]], device: torch.device | None = None,
             sustained: bool = True, after: tuple[str, ...] = (), heat: bool = False) -> None:
    """The runtime's passes: prompts whole in one graph (captured eagerly, before the piecewise
    graphs exist), then piecewise; decode batches from their full graphs; then SUSTAINED."""
    from servesim.policies.base import Step
    from servesim.request import Request
    from servesim.runtime.blocks import BlockTables
    from servesim.runtime.model import RuntimeModel
    from servesim.runtime.plan import build_plan
    device = device or torch.device("cuda")
    model = RuntimeModel(arch, POOL_BLOCKS, 16, device)
    blocks = BlockTables(POOL_BLOCKS)
    plans = {}
    batches: dict[tuple[int, ...], list[Any]] = {}  # one set of requests per batch, in any order
    for i, (key, row) in enumerate(rows.items()):
        if row["kind"] == "mixed":
            reqs = [Request(1000 * i + j, 0.0, row["context"], 2) for j in range(row["decodes"])]
            for r in reqs:
                r.num_computed_tokens, r.num_generated_tokens = r.num_prompt_tokens - 1, 1
                r.kv_blocks = -(-r.num_prompt_tokens // 16)
                blocks.sync(r)
            prompt = Request(1000 * i + 999, 0.0, row["size"], 2)
            prompt.kv_blocks = -(-row["size"] // 16)
            blocks.sync(prompt)
            step = Step(prefills=[(prompt, row["size"])], decodes=reqs)
        elif row["kind"] == "decode":
            contexts = _contexts(row)
            reqs = batches.get(tuple(sorted(contexts)))
            if reqs is None:
                reqs = [Request(1000 * i + j, 0.0, c, 2) for j, c in enumerate(contexts)]
                for r in reqs:
                    r.num_computed_tokens, r.num_generated_tokens = r.num_prompt_tokens - 1, 1
                for b in range(1, -(-max(contexts) // 16) + 1):  # grown in turns, as decoding grows them
                    for r in reqs:
                        r.kv_blocks = min(b, -(-r.num_prompt_tokens // 16))
                        blocks.sync(r)
                batches[tuple(sorted(contexts))] = reqs
            by_context = sorted(reqs, key=lambda r: r.num_prompt_tokens)
            ordered = [by_context[rank] for rank in _ranks(contexts)]
            step = Step(decodes=ordered)
        else:
            prompt = Request(1000 * i, 0.0, row["size"], 2)
            prompt.kv_blocks = -(-row["size"] // 16)
            blocks.sync(prompt)
            step = Step(prefills=[(prompt, row["size"])])
        plans[key] = build_plan(step, blocks, 16, arch.num_layers, arch.vocab_size, device)
        if row.get("release"):  # the plan holds its tables; later batches may reuse the blocks
            for r in step.decodes:
                r.kv_blocks = 0
                blocks.sync(r)
            batches.pop(tuple(sorted(_contexts(row))), None)

    def drain(plan: Any) -> Run:
        def run() -> None:
            for _ in model.forward(plan):
                pass
        return run

    whole = {}
    side = torch.cuda.Stream()
    for key, plan in plans.items():
        if rows[key]["kind"] == "decode":
            continue
        with torch.cuda.stream(side):
            drain(plan)()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            drain(plan)()
        torch.cuda.synchronize()
        whole[key] = graph
        rows[key]["runtime_graph_us"] = _burst(graph.replay)
    started = time.perf_counter()
    model.capture_graphs(2048)
    model.capture_decode_graphs(max(SKEW_BATCHES), MAX_CONTEXT)
    print(f"runtime graphs captured in {time.perf_counter() - started:.1f} s", flush=True)
    for key, plan in plans.items():
        drain(plan)()  # compiles what the graphs did not
        rows[key]["runtime_us"] = _burst(drain(plan))
        if rows[key].get("kernels"):
            rows[key]["kernels"] = _kernel_us(drain(plan))
        if rows[key].get("hot"):
            rows[key]["hot"] = _hot(drain(plan))
    for kind, size, _ in SUSTAINED if sustained else ():
        key = f"{kind}_{size}"
        run = whole[key].replay if kind == "prefill" else drain(plans[key])
        rows[key]["sustained"] = _sustained(run)
    for key in after:
        heater, target = whole["prefill_2048"].replay, drain(plans[key])
        rows[key]["after"] = {f"{heats}x{gap:g}ms": _after(target, heater, heats, gap) for heats, gap in AFTER}
    for key in HEAT_TARGETS if heat else ():
        target = drain(plans[key])
        got = rows[key]["heat"] = {"none": _after(target, target, 0, 0.0)}
        for heater, seconds in HEATERS:
            run = whole[heater].replay if heater in whole else drain(plans[heater])
            heats = max(1, round(seconds * 1e6 / statistics.median(rows[heater]["runtime_us"])))
            for gap in HEAT_GAPS_MS:
                got[f"{heater} {seconds:g}s {gap:g}ms"] = _after(target, run, heats, gap)
    print("runtime done", flush=True)


def _hot(run: Run) -> list[dict[str, Any]]:
    """Back-to-back replays for HOT_S seconds after an idle second: per second, the median
    replay (us) and when that second began and ended (for the clock samples)."""
    torch.cuda.synchronize()
    time.sleep(IDLE_S)
    windows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < HOT_S:
        began = time.time()
        times = _back_to_back(run, 1.0)
        windows.append({"second": len(windows), "replays": len(times), "median_us": statistics.median(times),
                        "clock": (began, time.time())})
    return windows


def _kernel_us(run: Run, reps: int = 3) -> dict[str, float]:
    """GPU time per kernel name over one run (us; the mean of `reps` runs), from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            run()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.device_time_total > 0:
            out[event.key[:60]] = round(event.device_time_total / reps, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _ranks(contexts: list[int]) -> list[int]:
    """Each position's rank among the contexts sorted ascending (ties in order)."""
    order = sorted(range(len(contexts)), key=lambda i: contexts[i])
    ranks = [0] * len(contexts)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def _report(result: dict[str, Any], model: ProfiledCostModel, out: str | None) -> int:
    print("| pass | priced ms | profile | profile, all weights | runtime | runtime, one graph "
          "| sustained: first 0.3 s, last 1 s (MHz, W) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in result["rows"]:
        r["priced_us"] = 1e6 * model.step_time(_shape(r))

        def ratio(key: str, r: dict[str, Any] = r) -> str:
            return f"{statistics.median(r[key]) / r['priced_us']:.3f}" if key in r else "-"

        sus = ""
        for key in ("sustained", "profile_sustained"):
            s = r.get(key)
            if s:
                fc, lc = s.get("first_clock") or {}, s.get("last_clock") or {}
                def clock(c: dict[str, Any]) -> str:  # "(MHz, W)"; "(-)" where no sample came back
                    return f"({c['sm_mhz']:.0f}, {c['power_w']:.0f})" if c else "(-)"

                sus += (f"{'profile ' if key != 'sustained' else ''}{s['first_us'] / r['priced_us']:.3f} "
                        f"{clock(fc)} -> {s['last_us'] / r['priced_us']:.3f} {clock(lc)} ")
        if "contexts" in r:
            ctx = r["contexts"]
            name = f"{r['size']} decodes of trace contexts (mean {sum(ctx) / len(ctx):.0f}, max {max(ctx)}), {r.get('order', 'spread, seeded order')}"
        elif r["kind"] == "decode":
            name = f"{r['size']} decodes of {r['context']}"
        else:
            name = f"{r['size']}-token prompt"
        print(f"| {name} | {r['priced_us'] / 1e3:.2f} | {ratio('profile_us')} | {ratio('profile_all_us')} "
              f"| {ratio('runtime_us')} | {ratio('runtime_graph_us')} | {sus.strip()} |")
    broken = [r for r in result["rows"] if isinstance(r.get("kernels"), dict)]
    if broken:
        print("\n| spread batch | runtime pass us | decode attention us | GEMMs us | other kernels us |")
        print("|---|---:|---:|---:|---:|")
        for r in broken:
            k = r["kernels"]
            attn = sum(v for n, v in k.items() if "decode_attn" in n)
            gemm = sum(v for n, v in k.items() if "gemm" in n.lower() or "matmul" in n.lower())
            print(f"| {r['size']} | {statistics.median(r['runtime_us']):.0f} | {attn:.0f} | {gemm:.0f} "
                  f"| {sum(k.values()) - attn - gemm:.0f} |")
    served = [r for r in result["rows"] if "served_gpu_us" in r and "runtime_us" in r]
    if served:
        print("\n| served step | sequences | served GPU span / price | replay / price | replay / served |")
        print("|---|---:|---:|---:|---:|")
        for r in served:
            replay = statistics.median(r["runtime_us"][1:])
            print(f"| {r['step']} | {r['size']} | {r['served_gpu_us'] / r['priced_us']:.3f} "
                  f"| {replay / r['priced_us']:.3f} | {replay / r['served_gpu_us']:.3f} |")
    hot = [r for r in result["rows"] if isinstance(r.get("hot"), list)]
    if hot:
        print("\n| decode batch held | second: replay / the first second's (MHz, W) |")
        print("|---|---|")
        for r in hot:
            first = r["hot"][0]["median_us"]
            cells = [f"{w['second']}: {w['median_us'] / first:.3f}"
                     + (f" ({w['clock']['sm_mhz']:.0f}, {w['clock']['power_w']:.0f})" if w.get("clock") else "")
                     for w in r["hot"][:: max(1, len(r["hot"]) // 6)]]
            name = f"{r['size']} {'spread' if 'contexts' in r else 'equal'}"
            print(f"| {name}, {first:.0f} us | " + "; ".join(cells) + " |")
    after = [r for r in result["rows"] if "after" in r]
    if after:
        cases = list(after[0]["after"])
        print("\n| pass, after 2,048-token prompts x idle ms: time / time after idle | " + " | ".join(cases) + " |")
        print("|---|" + "---:|" * len(cases))
        for r in after:
            idle = statistics.median(r["after"][cases[0]])
            print(f"| {r['kind']} {r['size']} | " + " | ".join(
                f"{statistics.median(r['after'][c]) / idle:.3f}" for c in cases) + " |")
    heated = [r for r in result["rows"] if "heat" in r]
    if heated:
        print("\n| heater, seconds, idle after | " + " | ".join(f"{r['kind']} {r['size']}" for r in heated) + " |")
        print("|---|" + "---:|" * len(heated))
        for case in list(heated[0]["heat"])[1:]:
            print(f"| {case} | " + " | ".join(
                f"{statistics.median(r['heat'][case]) / statistics.median(r['heat']['none']):.3f}" for r in heated)
                + " |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if out:
        Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
