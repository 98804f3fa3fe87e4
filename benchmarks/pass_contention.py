"""Whole passes on SM partitions, alone and beside a pass on the complementary partition,
measured and predicted side by side (the Nexus setting; GPU only).

A prefill pass (one prompt) runs on a partition of `sms` SMs while a decode pass loops on the
other SMs, and the reverse; each is a whole-model CUDA graph replayed on its partition's stream,
so the host's launches are out and what differs from "alone" is the GPU's contention. The
prediction is ProfiledCostModel.step_time on the same shapes, alone and with the other pass as
its Corunner, from the shipped profile (or --profile DIR). Prints a table and one JSON object;
--out also writes the JSON. --measured FILE predicts a written JSON's measurements again (on a
CPU, with this checkout's cost model and --profile).

    PYTHONPATH=. python benchmarks/pass_contention.py --out FILE
    PYTHONPATH=. python benchmarks/pass_contention.py --cases v15 --out FILE

`--cases batch` is a 2,048- and a 256-token prompt on 40 SMs beside 2-48 decodes of 1k.
`--cases v15` is policies.md's V15 instead: 32 decodes of 2k on the SMs a 68-SM partition leaves
(60 on the H200's driver split) beside a 512-token prompt on the 68, whose prefix (KV already
cached) grows 0 -> 2k -> 6k -> 10k. `--cases paced` times a prompt beside a decode pass that
idles after each replay (PACED_GAPS_US): the slowdown against the co-runner's duty (rows of their
own, printed as measured; --measured does not apply to them).
    PYTHONPATH=. python benchmarks/pass_contention.py --measured FILE [--profile DIR] [--out FILE2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from servesim.models.arch import ModelArch, load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.profiler.forward import Forward
from servesim.profiler.operators import OperatorFactory
from servesim.profiler.partitions import Partitions
from servesim.runtime.clocks import ClockMonitor, smi_id
from servesim.sim.hardware import get_gpu
from servesim.sim.profiled import ProfiledCostModel

# (prompt tokens, prefill SMs, decodes, context per decode, prompt's prefix): the prompts and
# splits Nexus ran in the validation runs (prompts of 200-1k tokens on 40-64 SMs), and two beyond
# them; V15's co-running prefill whose KV length grows.
CASES = {"nexus": ((256, 48, 8, 1024, 0), (256, 64, 8, 1024, 0), (256, 48, 32, 2048, 0), (1024, 48, 8, 1024, 0),
                   (1024, 64, 32, 2048, 0), (2048, 64, 32, 2048, 0), (256, 96, 8, 1024, 0)),
         "v15": tuple((512, 68, 32, 2048, prefix) for prefix in (0, 2048, 6144, 10240)),
         "paced": ((2048, 48, 8, 1024, 0), (2048, 48, 32, 1024, 0), (256, 48, 8, 1024, 0)),
         "batch": tuple((prompt, 40, decodes, 1024, 0) for prompt in (2048, 256)
                        for decodes in (2, 8, 12, 16, 20, 24, 32, 48)),
         "sustained": ((1536, 56, 28, 1536, 0), (1536, 40, 8, 1536, 0))}
"""`--cases batch`: Nexus's most common split in issue 7's runs (prompts on 40 SMs, decodes on 92)
at the decode batches between the profile's co-runner grid (8, 16, 32, 64): serving measured a
1-2k-token prompt's slowdown falling with the batch (about 1.4 beside 1-2 decodes, 1.33 beside
6-12, 1.2 beside 12-48) where the profile's grid reads 1.45 at 8 and 16, 1.29 at 32 and 1.38 at
64; the rows show whether the slowdown steps where the decode GEMMs change configuration (at
17 rows: kernels.configs) rather than varying smoothly between the grid's points."""
SUSTAINED_S = 3.0
SUSTAINED_WINDOWS = ((0.0, 0.1), (0.4, 0.6), (0.9, 1.1), (1.8, 2.2), (2.6, 3.0))
"""`--cases sustained`: each pass replayed back to back for SUSTAINED_S seconds beside the other
looping as long, its median over each window of time since the start (s), with the SM clock;
the profile and the other cases time a pass beside its co-runner for about 8 replays (0.05-0.2
s). Nexus's 90 % run kept its prompt lane busy for seconds at a time with its SM clock slowed for
power in 38 % of samples (3.5 % at 30 %), and its decode passes of 17-32 decodes on 76 SMs
beside prompts on 56 ran 5.3-6.8 % over their price (alone +2.7 / -4.0 %): these rows show
whether a co-run held for seconds slows the passes past the profile's short one."""
PACED_GAPS_US = (0.0, 400.0, 800.0, 2000.0)
"""`--cases paced`: the decode co-runner idles this long on its SMs after each pass (a one-block
spin kernel, `torch.cuda._sleep`), as a serving lane waits for its host between steps (0.5-1 ms
in issue 7's Nexus runs, where prompts of 1-2k tokens ran 1.15-1.35x their price alone beside
the decode lane, and the profile's back-to-back co-runner gives 1.36-1.59x). These rows measure
the slowdown at each duty, with the SM clock over each row; the host model scales the excess by
the duty to the power they gave (`host_overhead.CONTENTION_DUTY_EXPONENT`; linear before)."""
REPS = 8


def _graph(factory: OperatorFactory, batch: BatchShape, sms: int, stream: object) -> tuple[Forward, torch.cuda.CUDAGraph]:
    """The pass captured on `stream`, and its Forward: the graph reads the Forward's inputs
    (KV cache, block tables, positions), so the caller keeps both alive while it replays."""
    chunks = list(zip(batch.prefill_tokens, batch.prefill_prefix, strict=True))
    contexts = [batch.max_decode_context] * batch.num_decodes
    forward = Forward(factory, chunks, contexts, batch.num_logits, sms)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):  # type: ignore[arg-type]
        forward.run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):  # type: ignore[arg-type]
        forward.run()
    torch.cuda.synchronize()
    return forward, graph


def _replays_us(graph: torch.cuda.CUDAGraph, stream: object, reps: int = REPS
                ) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
    events = []
    with torch.cuda.stream(stream):  # type: ignore[arg-type]
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            events.append((start, end))
    return events


def _median_us(events: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> float:
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events[1:])


def _alone(graph: torch.cuda.CUDAGraph, stream: object) -> float:
    graph.replay()
    torch.cuda.synchronize()
    return _median_us(_replays_us(graph, stream))


def _beside(graph: torch.cuda.CUDAGraph, stream: object, other: torch.cuda.CUDAGraph, other_stream: object,
            own_us: float, other_us: float, gap_cycles: int = 0) -> tuple[float, bool, float]:
    """Median of the target's replays while the other graph loops (idling `gap_cycles` SM
    cycles after each replay); whether it covered them; the other's period per replay (us)."""
    loops = int(1.5 * REPS * own_us / other_us) + 3
    with torch.cuda.stream(other_stream):  # type: ignore[arg-type]
        other_start = torch.cuda.Event(enable_timing=True)
        other_start.record()
        for _ in range(loops):
            other.replay()
            if gap_cycles:
                torch.cuda._sleep(gap_cycles)
        other_end = torch.cuda.Event(enable_timing=True)
        other_end.record()
    events = _replays_us(graph, stream)
    median = _median_us(events)
    return median, events[-1][1].elapsed_time(other_end) >= 0, other_start.elapsed_time(other_end) * 1e3 / loops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--profile", help="profile directory to predict with (default: the shipped one)")
    parser.add_argument("--out")
    parser.add_argument("--cases", choices=sorted(CASES), default="nexus")
    parser.add_argument("--measured", help="a JSON this script wrote: predict its rows again, no GPU")
    args = parser.parse_args()
    if args.measured:
        result = json.loads(Path(args.measured).read_text())
        model = ProfiledCostModel(load_model(result["model"]), get_gpu("h200"), args.profile)
        result["rows"] = [{**r, **_predicted(model, r)} for r in result["rows"]]
        result["profile"] = args.profile or "shipped"
        return _report(result, args.out)
    if not torch.cuda.is_available():
        print("pass_contention.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    arch = load_model(args.model)
    model = ProfiledCostModel(arch, get_gpu("h200"), args.profile)
    factory = OperatorFactory(arch, device, 96 * 1024)  # 32 decodes of 2k beside a prompt after 10k
    partitions = Partitions(device)
    if not partitions.disjoint:
        print(f"pass_contention.py: partitions are not disjoint ({partitions.method})", file=sys.stderr)
        return 2
    rows = []
    if args.cases == "paced":
        return _paced(arch, factory, partitions, args.out)
    if args.cases == "sustained":
        return _sustained(arch, factory, partitions, model, args.out)
    with ClockMonitor(smi_id(device)) as clocks:
        for prompt, sms, decodes, context, prefix in CASES[args.cases]:
            part, rest = partitions.pair(sms)
            assert rest is not None
            row = {"prompt": prompt, "prefix": prefix, "prefill_sms": sms, "decodes": decodes, "context": context,
                   "decode_sms": rest.sms}
            prefill, decode = _shapes(row)
            (p_forward, pg), (d_forward, dg) = (_graph(factory, prefill, sms, part.stream),
                                                _graph(factory, decode, rest.sms, rest.stream))
            p_alone, d_alone = _alone(pg, part.stream), _alone(dg, rest.stream)
            p_beside, p_cov, _ = _beside(pg, part.stream, dg, rest.stream, p_alone, d_alone)
            d_beside, d_cov, _ = _beside(dg, rest.stream, pg, part.stream, d_alone, p_alone)
            row = {**row, "covered": p_cov and d_cov,
                   "prefill_alone_us": p_alone, "prefill_beside_us": p_beside,
                   "decode_alone_us": d_alone, "decode_beside_us": d_beside}
            rows.append({**row, **_predicted(model, row)})
            del pg, dg, p_forward, d_forward
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(device), "profile": args.profile or "shipped",
              "partitions": partitions.method, "clock": clocks.summary(), "rows": rows}
    return _report(result, args.out)


def _paced(arch: ModelArch, factory: OperatorFactory, partitions: Partitions, out: str | None) -> int:
    """The prompt's slowdown beside a decode pass that idles PACED_GAPS_US after each replay:
    measured; the co-runner's duty relative to looping back to back (its period without a gap
    over its period with one: both periods hold its own slowdown beside the prompt); and what a
    scaling linear in the duty (the host model's before CONTENTION_DUTY_EXPONENT) makes of the
    slowdown measured back to back."""
    device = factory.device
    mhz = 1980  # the H200's SM clock, cycles per us of gap (the duty is measured, not assumed)
    rows = []
    for prompt, sms, decodes, context, _ in CASES["paced"]:
        part, rest = partitions.pair(sms)
        assert rest is not None
        base = {"prompt": prompt, "prefix": 0, "prefill_sms": sms, "decodes": decodes, "context": context,
                "decode_sms": rest.sms}
        prefill, decode = _shapes(base)
        (p_forward, pg), (d_forward, dg) = (_graph(factory, prefill, sms, part.stream),
                                            _graph(factory, decode, rest.sms, rest.stream))
        p_alone, d_alone = _alone(pg, part.stream), _alone(dg, rest.stream)
        back_to_back: tuple[float, float] | None = None  # (slowdown, period) without a gap
        for gap in PACED_GAPS_US:
            with ClockMonitor(smi_id(device)) as clocks:
                beside, covered, period = _beside(pg, part.stream, dg, rest.stream, p_alone, d_alone + gap,
                                                  int(gap * mhz))
            slowdown = beside / p_alone
            back_to_back = (slowdown, period) if back_to_back is None else back_to_back
            duty = min(1.0, back_to_back[1] / period)
            linear, clock = 1 + duty * (back_to_back[0] - 1), clocks.summary()
            rows.append({**base, "gap_us": gap, "covered": covered, "prefill_alone_us": p_alone,
                         "prefill_beside_us": beside, "decode_alone_us": d_alone, "decode_period_us": period,
                         "duty": duty, "slowdown": slowdown,
                         "linear_duty_slowdown": linear, "clock": clock})
            print(f"| {prompt} on {sms} | {decodes} x {context} on {rest.sms} | gap {gap:g} us | duty {duty:.2f} "
                  f"| slowdown {slowdown:.3f} | linear in duty {linear:.3f} "
                  f"| clock slowed {clock.get('clock_slowed_share', float('nan')):.2f} |", flush=True)
        del pg, dg, p_forward, d_forward
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    result = {"model": arch.name, "gpu": torch.cuda.get_device_name(device),
              "partitions": partitions.method, "sm_clock_mhz_for_gaps": mhz, "rows": rows}
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _held(graph: torch.cuda.CUDAGraph, stream: object, other: torch.cuda.CUDAGraph, other_stream: object,
          own_us: float, other_us: float) -> dict[str, float]:
    """The target replayed back to back for SUSTAINED_S beside the other looping as long: the
    median of its replays starting in each of SUSTAINED_WINDOWS (keys "t0-0.1" ...)."""
    loops = int(1.05 * SUSTAINED_S * 1e6 / other_us) + 2
    reps = int(SUSTAINED_S * 1e6 / own_us) + 1
    with torch.cuda.stream(other_stream):  # type: ignore[arg-type]
        for _ in range(loops):
            other.replay()
    events = _replays_us(graph, stream, reps)
    torch.cuda.synchronize()
    return _by_window(events[0][0], events, SUSTAINED_WINDOWS, "-")


def _by_window(origin: torch.cuda.Event, events: list[tuple[torch.cuda.Event, torch.cuda.Event]],
               windows: tuple[tuple[float, float], ...], sep: str) -> dict[str, float]:
    """The median replay (us) of those starting in each window of seconds since `origin`."""
    timed = [(origin.elapsed_time(s) * 1e-3, s.elapsed_time(e) * 1e3) for s, e in events]
    return {f"t{lo:g}{sep}{hi:g}": statistics.median(us for t, us in timed if lo <= t < hi)
            for lo, hi in windows if any(lo <= t < hi for t, _ in timed)}


RELEASE_HELD_S = 1.5
RELEASE_WINDOWS = ((-0.2, 0.0), (0.0, 0.01), (0.01, 0.03), (0.03, 0.06), (0.06, 0.1), (0.1, 0.2), (0.2, 0.5),
                   (0.5, 1.0))
"""`--cases sustained`'s release: the prompt loops for RELEASE_HELD_S beside the decodes, which
go on alone 1 s longer; the decodes' median per window of time since the prompt's last pass
ended (s): how fast the heat falls."""


def _released(decode: torch.cuda.CUDAGraph, d_stream: object, prompt: torch.cuda.CUDAGraph, p_stream: object,
              d_us: float, p_us: float) -> dict[str, float]:
    """The decodes' median per RELEASE_WINDOWS (keys "t-0.2..0" ...) around the end of the
    prompt's RELEASE_HELD_S beside them."""
    loops = max(1, int(RELEASE_HELD_S * 1e6 / (1.3 * p_us)))
    reps = int((RELEASE_HELD_S + 1.0) * 1e6 / d_us) + 1
    with torch.cuda.stream(p_stream):  # type: ignore[arg-type]
        for _ in range(loops):
            prompt.replay()
        released = torch.cuda.Event(enable_timing=True)
        released.record()
    events = _replays_us(decode, d_stream, reps)
    torch.cuda.synchronize()
    return _by_window(released, events, RELEASE_WINDOWS, "..")


def _sustained(arch: ModelArch, factory: OperatorFactory, partitions: Partitions, model: ProfiledCostModel,
               out: str | None) -> int:
    """Each pass of CASES["sustained"] alone, beside the other for ~8 replays (as the profile
    times it), and held beside it for SUSTAINED_S (`_held`), with the SM clock of each; a rested
    GPU (1 s idle) before each."""
    device = factory.device
    rows = []
    for prompt, sms, decodes, context, _ in CASES["sustained"]:
        part, rest = partitions.pair(sms)
        assert rest is not None
        row: dict = {"prompt": prompt, "prefix": 0, "prefill_sms": sms, "decodes": decodes, "context": context,
                     "decode_sms": rest.sms}
        prefill, decode = _shapes(row)
        (p_forward, pg), (d_forward, dg) = (_graph(factory, prefill, sms, part.stream),
                                            _graph(factory, decode, rest.sms, rest.stream))
        time.sleep(1.0)
        p_alone, d_alone = _alone(pg, part.stream), _alone(dg, rest.stream)
        time.sleep(1.0)
        d_short, _, _ = _beside(dg, rest.stream, pg, part.stream, d_alone, p_alone)
        time.sleep(1.0)
        p_short, _, _ = _beside(pg, part.stream, dg, rest.stream, p_alone, d_alone)
        row |= {"prefill_alone_us": p_alone, "decode_alone_us": d_alone, "decode_beside_us": d_short,
                "prefill_beside_us": p_short}
        for side, (target, t_stream, other, o_stream, own, theirs) in (
                ("decode", (dg, rest.stream, pg, part.stream, d_alone, p_alone)),
                ("prefill", (pg, part.stream, dg, rest.stream, p_alone, d_alone))):
            time.sleep(1.0)
            with ClockMonitor(smi_id(device)) as clocks:
                windows = _held(target, t_stream, other, o_stream, own, theirs)
            row[f"{side}_held_us"], row[f"{side}_held_clock"] = windows, clocks.summary()
        time.sleep(1.0)
        row["decode_released_us"] = _released(dg, rest.stream, pg, part.stream, d_alone, p_alone)
        row |= _predicted(model, row)
        rows.append(row)
        for side in ("decode", "prefill"):
            held = " ".join(f"{k} {v / row[f'{side}_alone_us']:.3f}" for k, v in row[f"{side}_held_us"].items())
            print(f"| {prompt} on {sms} / {decodes} x {context} on {rest.sms} | {side}: alone "
                  f"{row[f'{side}_alone_us']:.0f} us (priced {row[f'pred_{side}_alone_us']:.0f}), beside ~8 "
                  f"{row[f'{side}_beside_us'] / row[f'{side}_alone_us']:.3f}x (priced "
                  f"{row[f'pred_{side}_beside_us'] / row[f'pred_{side}_alone_us']:.3f}x), held: {held} | clock slowed "
                  f"{row[f'{side}_held_clock'].get('clock_slowed_share', float('nan')):.2f}, median "
                  f"{row[f'{side}_held_clock'].get('sm_clock_median_mhz', float('nan')):.0f} MHz |", flush=True)
        released = " ".join(f"{k} {v / d_alone:.3f}" for k, v in row["decode_released_us"].items())
        print(f"| {prompt} on {sms} / {decodes} x {context} on {rest.sms} | decode after the prompt's "
              f"{RELEASE_HELD_S:g} s ends: {released} |", flush=True)
        del pg, dg, p_forward, d_forward
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    result = {"model": arch.name, "gpu": torch.cuda.get_device_name(device), "partitions": partitions.method,
              "held_s": SUSTAINED_S, "rows": rows}
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _shapes(row: dict) -> tuple[BatchShape, BatchShape]:
    prefill = BatchShape((row["prompt"],), (row.get("prefix", 0),), num_logits=1)
    decode = BatchShape(num_decodes=row["decodes"], decode_context=row["decodes"] * row["context"],
                        max_decode_context=row["context"], num_logits=row["decodes"])
    return prefill, decode


def _predicted(model: ProfiledCostModel, row: dict) -> dict[str, float]:
    prefill, decode = _shapes(row)
    sms, other = row["prefill_sms"], row["decode_sms"]
    return {"pred_prefill_alone_us": 1e6 * model.step_time(prefill, sms),
            "pred_prefill_beside_us": 1e6 * model.step_time(prefill, sms, Corunner(decode, other)),
            "pred_decode_alone_us": 1e6 * model.step_time(decode, other),
            "pred_decode_beside_us": 1e6 * model.step_time(decode, other, Corunner(prefill, sms))}


def _report(result: dict, out: str | None) -> int:
    rows = result["rows"]
    print("| prefill on SMs | decode on SMs | prefill alone err | beside err | slowdown meas / pred "
          "| decode alone err | beside err | slowdown meas / pred |")
    print("|---|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        def err(side: str, how: str, r: dict = r) -> str:
            return f"{100 * (r[f'pred_{side}_{how}_us'] / r[f'{side}_{how}_us'] - 1):+.1f} %"

        def slow(side: str, r: dict = r) -> str:
            return (f"{r[f'{side}_beside_us'] / r[f'{side}_alone_us']:.2f} / "
                    f"{r[f'pred_{side}_beside_us'] / r[f'pred_{side}_alone_us']:.2f}")

        prefix = f" after {r['prefix']}" if r.get("prefix") else ""
        print(f"| {r['prompt']} tokens{prefix} on {r['prefill_sms']} | {r['decodes']} x {r['context']} on "
              f"{r['decode_sms']} | {err('prefill', 'alone')} | {err('prefill', 'beside')} | {slow('prefill')} "
              f"| {err('decode', 'alone')} | {err('decode', 'beside')} | {slow('decode')} |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
