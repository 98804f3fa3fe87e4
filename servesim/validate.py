"""`servesim validate`: run the real runtime and the simulator on the same config, trace and
seed, and report how far the prediction is from the measurement, metric by metric.

Needs torch (the `gpu` extra): on a CUDA GPU for real numbers, or on the CPU under
TRITON_INTERPRET=1 (tiny models only; checks the plumbing, not the timing).
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from servesim.config import Config
from servesim.errors import InputError
from servesim.models.arch import ModelArch, load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.policies.base import EngineLimits
from servesim.policies.nexus import Nexus
from servesim.runner import (
    build_cost_model,
    build_requests,
    check_fits,
    engine_limits,
    make_policy,
    power_model,
    resolved_kind,
)
from servesim.runtime.calibrate import (
    HOST_FIELDS,
    REFERENCE_LOOPS,
    calibrate,
    priced_constants,
    priced_factor,
    reference_loops,
    rereferenced,
    scaled,
    served_constants,
)
from servesim.runtime.clocks import (
    HOST_SLOW_RATIO,
    POWER_CAP,
    ClockMonitor,
    ClockSample,
    HostMonitor,
    smi_id,
)
from servesim.runtime.engine import Runtime, StepRecord
from servesim.runtime.model import GRAPH_SIZES, RuntimeModel
from servesim.runtime.partitioned import Lanes, PartitionedRuntime, PartitionLanes
from servesim.runtime.warmup import warm_up
from servesim.sim.cost_model import CostModel
from servesim.sim.engine import SimResult, simulate
from servesim.sim.hardware import GpuSpec, get_gpu
from servesim.sim.metrics import request_table, summarize
from servesim.sim.power import LaneHeat, PowerModel, PowerState
from servesim.traces import load_workload

COMPARED = [f"{stat}_{metric}_ms" for metric in ("ttft", "itl", "tpot", "e2el")
            for stat in ("median", "p90", "p99")] + [
    "mean_ttft_ms", "mean_itl_ms", "request_throughput", "output_throughput", "request_goodput"]


@dataclass
class Validation:
    report: dict[str, Any]
    measured: pd.DataFrame
    predicted: pd.DataFrame
    measured_itl_s: np.ndarray
    predicted_itl_s: np.ndarray
    steps: pd.DataFrame


def _say(message: str) -> None:
    """Progress of the long phases (warm-up, graphs, serving), on stderr."""
    print(f"validate: {message}", file=sys.stderr, flush=True)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("validate: --device cuda but no CUDA GPU is visible")
    return device


@dataclass
class _Loaded:
    model: RuntimeModel
    warmed_prompt: int
    setup: dict[str, Any]
    partitions: PartitionLanes | None = None


def runtime_config(config: Config) -> Config:
    """`config` as the simulator prices servesim's runtime: where the engine has graphs and the
    config names no sizes for them, the runtime's own (GRAPH_SIZES: graphed passes run padded to
    them)."""
    engine = config.engine
    if engine.cuda_graph_max_tokens and not engine.cuda_graph_sizes:
        return dataclasses.replace(config, engine=dataclasses.replace(engine, cuda_graph_sizes=GRAPH_SIZES))
    return config


def validate(config: Config, base_dir: Path, device_name: str = "cuda",
             max_kv_blocks: int | None = None, warmup: bool = True,
             models: dict[tuple[Any, ...], Any] | None = None, host_reference: Path | None = None,
             sensitivity: float = 0.0) -> Validation:
    """Measure on the runtime, predict with the simulator, compare. `models` (a dict the
    caller keeps) lets several validations of one model share its weights, compiled kernels
    and graphs. `host_reference`: the runtime_overhead.py result the config's host constants
    come from; the host's speed is timed against it just before serving
    (`servesim.runtime.calibrate`) and every host constant scaled by the ratio, for the
    runtime's predictor (Nexus's controller) and the simulator alike. `sensitivity` d > 0: each
    metric's error also with every price times 1 - d and 1 + d (`price_sensitivity`)."""
    config = runtime_config(config)
    if sensitivity:
        check_sensitivity(sensitivity)  # (before the GPU is touched)
    if host_reference is not None:
        reference_loops(host_reference)  # a bad file fails before the model is built
    device = _device(device_name)
    arch, gpu = load_model(config.model), get_gpu(config.hardware.gpu)
    limits = engine_limits(config, arch, gpu)
    if max_kv_blocks is not None and max_kv_blocks < limits.total_blocks:
        limits = dataclasses.replace(limits, total_blocks=max_kv_blocks,
                                     watermark_blocks=int(config.engine.watermark * max_kv_blocks))
    workload = load_workload(config.workload, np.random.default_rng(config.seed), base_dir)
    check_fits(workload, limits, config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    graph_rows, decode_rows = config.engine.cuda_graph_max_tokens, config.engine.cuda_graph_max_decodes
    key = (arch, limits, device, dtype, config.seed, graph_rows, decode_rows)
    models = {} if models is None else models
    loaded = models.get(key)
    if loaded is None:
        # Another model's KV cache fills the memory this one needs (flowprefill then nexus in
        # one matrix call ran out of memory on the H200): keep one model at a time.
        models.clear()
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        model = RuntimeModel(arch, limits.total_blocks, limits.block_size, device, dtype, config.seed)
        loaded = models[key] = _Loaded(model, 0, {})
    prompt = int(workload.num_prompt_tokens.max())
    policy = make_policy(config, limits)
    partitioned = isinstance(policy, Nexus)
    if prompt > loaded.warmed_prompt or not loaded.setup:
        started = time.perf_counter()
        if warmup:
            _say(f"compiling kernels for prompts up to {prompt} tokens")
            warm_up(loaded.model, limits, prompt)
        loaded.warmed_prompt = prompt
        loaded.setup = {"warm_up_s": round(time.perf_counter() - started, 1)}
    if not partitioned and "graphs" not in loaded.setup:  # the whole GPU's lane
        started = time.perf_counter()
        _say("capturing CUDA graphs")
        graphs = loaded.model.capture_graphs(graph_rows)
        if graph_rows:
            _say("capturing full CUDA graphs of decode passes")
            graphs += loaded.model.capture_decode_graphs(decode_rows, limits.max_model_len)
        loaded.setup |= {"graphs": graphs, "capture_s": round(time.perf_counter() - started, 1)}
    lanes = _nexus_lanes(loaded, policy, limits, graph_rows, decode_rows) if isinstance(policy, Nexus) else None
    calibration = None
    if host_reference is not None:
        calibration = _calibrate_host(loaded, limits, arch, gpu, host_reference)
        config = dataclasses.replace(config, cost_model=scaled(config.cost_model, calibration["factor"]))
        calibration["constants"] = {f: getattr(config.cost_model, f) for f in HOST_FIELDS}
    cost_model = build_cost_model(config, arch, gpu)
    policy.predict = cost_model.step_time  # the same predictor the simulated policy gets
    runtime = PartitionedRuntime(loaded.model, policy, limits, lanes) \
        if lanes is not None and isinstance(policy, Nexus) else Runtime(loaded.model, policy, limits)
    setup = dict(loaded.setup)
    requests = build_requests(workload, config)
    last = max((r.arrival_s for r in requests), default=0.0)
    _say(f"serving {len(requests)} requests in real time ({last:.0f} s of arrivals)")
    with ClockMonitor(smi_id(device) if device.type == "cuda" else None) as clocks, HostMonitor() as host_speed:
        measured = runtime.run(requests)
    predictor = cost_model.step_time  # what the runtime's policy believed while it served
    if calibration is not None and host_reference is not None:
        # The same loops again: the run is priced at the faster of the two timings around it
        # (`priced_factor`); the policy keeps the constants it served with.
        try:
            after = _calibrate_host(loaded, limits, arch, gpu, host_reference, "after serving")
        except RuntimeError as e:  # a failed timing must not cost the measurement
            calibration["after"] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        else:
            calibration["after"] = {"factor": after["factor"], "loops": after["loops"]}
            calibration["drift"] = round(after["factor"] / calibration["factor"], 4)
        calibration["priced_factor"] = priced_factor(calibration)
        calibration["priced_constants"] = priced_constants(calibration)
        config = dataclasses.replace(config, cost_model=dataclasses.replace(
            config.cost_model, **calibration["priced_constants"]))
        cost_model = build_cost_model(config, arch, gpu)
    _say("simulating the same requests")
    power = power_model(config, arch, gpu)
    predicted = simulate(build_requests(workload, config), make_policy(config, limits), cost_model,
                         limits, arch=arch, power=power, predictor=predictor)
    tables = [request_table(r.requests, config.slo.classes, config.slo.default) for r in (measured, predicted)]
    summaries = [summarize(r, t) for r, t in zip((measured, predicted), tables, strict=True)]
    steps = with_clocks(step_table(runtime.steps, cost_model, _power_state(power, arch)),
                        clocks.trace(runtime.t0_epoch), host_speed.trace(runtime.t0_epoch))
    pauses = np.array([s for _, s in runtime.gc_pauses])
    host = steps.busy_s - steps.gpu_s if len(steps) else pd.Series(dtype=float)
    health = {"gc_collections": len(pauses), "gc_max_ms": 1e3 * float(pauses.max(initial=0.0)),
              "gc_total_ms": 1e3 * float(pauses.sum()), "steps_host_over_5ms": int((host > 0.005).sum()),
              "alloc_retries": int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))
              if device.type == "cuda" else 0,
              "jit_compiles": len(runtime.jit_compiles), "jit_compiled": sorted(set(runtime.jit_compiles)),
              **clocks.summary(), **host_speed.summary()}
    report = _report(config, summaries[0], summaries[1], device, limits, resolved_kind(config, arch, gpu))
    gaps = _itl(measured.requests), _itl(predicted.requests)
    report["metrics"] = with_intervals(report["metrics"], error_intervals(tables[0], tables[1], *gaps,
                                                                           seed=config.seed))
    if sensitivity > 0:
        report["metrics"], report["price_sensitivity"] = price_sensitivity(
            report["metrics"], config, limits, workload, predictor, sensitivity)
    report = {**report, "paired": paired_errors(tables[0], tables[1]),
              **({"host_calibration": calibration} if calibration is not None else {}),
              "runtime_setup": setup,
              "runtime_health": health, "steps": step_errors(steps),
              **_prompt_shares(steps, predicted)}
    return Validation(report, tables[0], tables[1], *gaps, steps)


def _calibrate_host(loaded: _Loaded, limits: EngineLimits, arch: ModelArch, gpu: GpuSpec,
                    reference: Path, when: str = "before serving") -> dict[str, Any]:
    """The host's speed now against `reference`'s (`servesim.runtime.calibrate`), timed on the
    whole GPU's full decode graphs (for Nexus, whose lanes have their own, the few the loops
    need are captured first)."""
    if loaded.model.device.type == "cuda" and "calibration_graphs" not in loaded.setup \
            and "graphs" not in loaded.setup:
        started = time.perf_counter()
        _say("capturing full CUDA graphs of the host calibration's decode passes")
        rows = max(b for b, _ in REFERENCE_LOOPS)
        loaded.setup["calibration_graphs"] = loaded.model.capture_decode_graphs(rows, limits.max_model_len)
        loaded.setup["calibration_capture_s"] = round(time.perf_counter() - started, 1)
    _say(f"timing the host against {reference.name} ({when})")
    calibration = calibrate(loaded.model, limits, arch, gpu, reference)
    _say(f"host speed factor {calibration['factor']:.3f} {when}"
         + (" (host constants x that)" if when == "before serving" else ""))
    return calibration


def _nexus_lanes(loaded: _Loaded, policy: Nexus, limits: EngineLimits, graph_rows: int,
                 decode_rows: int = 0) -> Lanes:
    """The lanes (green contexts, graphs) of every split the policy may use, made before the
    clock starts; their set-up time goes into the report."""
    started = time.perf_counter()
    if loaded.partitions is None:
        loaded.partitions = PartitionLanes(loaded.model, limits, graphs=graph_rows > 0)
    splits = policy.shares()
    lanes: Lanes = {}
    for i, p in enumerate(splits):  # one at a time, to show progress (seconds per split)
        if p not in loaded.partitions.lanes:
            _say(f"partitions and graphs for {p} prefill SMs ({i + 1} of {len(splits)} splits)")
        lanes |= loaded.partitions.get([p], min(policy.params.token_budget, graph_rows),
                                       min(policy.params.max_num_seqs, graph_rows), decode_rows,
                                       limits.max_model_len)
    loaded.setup = {**loaded.setup, "partition_splits": splits,
                    "partition_graphs": sum(len(g) for pair in loaded.partitions.lanes.values()
                                            for lane in pair for g in lane.graphs.values()),
                    "partition_decode_graphs": sum(len(lane.decode_graphs) for pair in
                                                   loaded.partitions.lanes.values() for lane in pair),
                    "partition_setup_s": round(time.perf_counter() - started, 1),
                    "partition_method": loaded.partitions.partitions.method,
                    "gpu_memory_reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 1)
                    if loaded.model.device.type == "cuda" else 0.0}
    return lanes


@dataclass
class Repredicted:
    """A measurement's report and step table priced again, and the new prediction's requests
    and token gaps (for the CDF plot)."""

    report: dict[str, Any]
    steps: pd.DataFrame
    predicted: pd.DataFrame
    predicted_itl_s: np.ndarray


def repredict(config: Config, base_dir: Path, report: dict[str, Any], steps: pd.DataFrame,
              measured_itl_s: np.ndarray, measured: pd.DataFrame | None = None,
              host_reference: Path | None = None, sensitivity: float = 0.0) -> Repredicted:
    """Predict again, on any machine, for a measurement already taken (a report and its step
    table; with the measured request table, the per-request errors too): the simulator with
    `config`'s cost model; the measured side is kept as it is. A measurement whose host was
    timed while it served (`host_calibration`) is priced with the host constants of its priced
    factor, and its policy predicts with those it served with. With `host_reference` (a
    runtime_overhead.py result whose constants `config` holds), that timing is priced against
    its loops instead (`rereferenced`). With `sensitivity` d > 0, the report's `sensitivity`
    holds each metric's error predicted with every price (the profile's GPU times and the host
    constants) times 1 - d and 1 + d (`price_sensitivity`)."""
    config = runtime_config(config)
    arch, gpu = load_model(config.model), get_gpu(config.hardware.gpu)
    calibration = report.get("host_calibration", {})
    if host_reference is not None and "loops" in calibration:
        calibration = rereferenced(calibration, config.cost_model, host_reference)
        report = {**report, "host_calibration": calibration}
    served = served_constants(calibration)
    predictor = None
    if served:
        priced = priced_constants(calibration)  # (without loops after serving: those it served with)
        if priced != served:
            served_config = dataclasses.replace(config, cost_model=dataclasses.replace(config.cost_model, **served))
            predictor = build_cost_model(served_config, arch, gpu).step_time
        config = dataclasses.replace(config, cost_model=dataclasses.replace(config.cost_model, **priced))
    limits = dataclasses.replace(engine_limits(config, arch, gpu), total_blocks=report["kv_blocks"])
    limits = dataclasses.replace(limits, watermark_blocks=int(config.engine.watermark * limits.total_blocks))
    workload = load_workload(config.workload, np.random.default_rng(config.seed), base_dir)
    cost_model = build_cost_model(config, arch, gpu)
    power = power_model(config, arch, gpu)
    predicted = simulate(build_requests(workload, config), make_policy(config, limits), cost_model,
                         limits, arch=arch, power=power, predictor=predictor)
    table = request_table(predicted.requests, config.slo.classes, config.slo.default)
    summary = summarize(predicted, table)
    rows = _metric_rows({k: row["measured"] for k, row in report["metrics"].items()}, summary)
    predicted_s, predicted_gpu_s = _priced(cost_model, step_shapes(steps), steps.start_s.tolist(),
                                           _power_state(power, arch))
    steps = steps.assign(predicted_s=predicted_s, predicted_gpu_s=predicted_gpu_s)
    predicted_itl_s = _itl(predicted.requests)
    if measured is not None:
        rows = with_intervals(rows, error_intervals(measured, table, measured_itl_s, predicted_itl_s,
                                                    seed=config.seed))
    report = {k: v for k, v in report.items() if k != "price_sensitivity"}
    if sensitivity > 0:
        rows, report["price_sensitivity"] = price_sensitivity(rows, config, limits, workload, predictor, sensitivity)
    new = {**report,
           "cost_model": resolved_kind(config, arch, gpu), "metrics": rows,
           "completed_predicted": summary["completed"], "steps": step_errors(steps),
           **_prompt_shares(steps, predicted),
           **({"paired": paired_errors(measured, table)} if measured is not None else {}),
           "predicted_again": {"cost_model": dataclasses.asdict(config.cost_model),
                               "measured_itls": int(len(measured_itl_s))}}
    return Repredicted(new, steps, table, predicted_itl_s)


def check_sensitivity(delta: float) -> None:
    if not 0 < delta < 1:
        raise InputError(f"sensitivity: {delta} is not between 0 and 1")


def price_sensitivity(rows: dict[str, dict[str, Any]], config: Config, limits: EngineLimits,
                      workload: pd.DataFrame, predictor: Any, delta: float
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`rows` with each metric's relative error when the same requests are predicted with every
    price times 1 - `delta` and 1 + `delta` (`sensitivity`: [lower, higher]): the GPU's through
    `cost_model.gpu_scale` (the profile cost model; other kinds keep their GPU prices), the
    host's through its constants; the policy's own predictor is kept. A cell whose error swings
    by many points for a 1 % change in every price sits where the predicted distribution steps
    (a prompt pass's length at a p99, say), and its miss says little about the pricing. Also the
    report's `price_sensitivity`: the delta and which prices moved."""
    check_sensitivity(delta)
    arch, gpu = load_model(config.model), get_gpu(config.hardware.gpu)
    profiled = resolved_kind(config, arch, gpu) == "profile"
    errors: list[dict[str, float]] = []
    for scale in (1 - delta, 1 + delta):
        cost = scaled(config.cost_model, scale)
        if profiled:  # (other cost models have no table of GPU times to scale)
            cost = dataclasses.replace(cost, gpu_scale=config.cost_model.gpu_scale * scale)
        scaled_config = dataclasses.replace(config, cost_model=cost)
        run = simulate(build_requests(workload, scaled_config), make_policy(scaled_config, limits),
                       build_cost_model(scaled_config, arch, gpu), limits, arch=arch,
                       power=power_model(scaled_config, arch, gpu), predictor=predictor)
        summary = summarize(run, request_table(run.requests, config.slo.classes, config.slo.default))
        errors.append({k: v["rel_error"] for k, v in
                       _metric_rows({k: row["measured"] for k, row in rows.items()}, summary).items()})
    return ({k: {**row, "sensitivity": [errors[0][k], errors[1][k]]} for k, row in rows.items()},
            {"delta": delta, "prices": "GPU and host" if profiled else "host"})


def _power_state(model: PowerModel | None, arch: ModelArch) -> PowerState | None:
    """A fresh clock state for pricing a measured step table (None: priced rested)."""
    return PowerState(model, arch) if model is not None else None


def with_clocks(steps: pd.DataFrame, samples: list[ClockSample],
                host: Sequence[tuple[float, float]] = ()) -> pd.DataFrame:
    """`steps` with the GPU's SM clock, board power and power capping (nvidia-smi's sample
    nearest each step's middle, `samples` timed from the run's start) and, with `host`
    ((seconds from the start, us) of the host probe), the probe's time nearest it: what a step
    ran beside. Columns without samples (a run off the GPU) are left out."""
    if steps.empty:
        return steps
    middle = (steps.start_s + steps.busy_s / 2).to_numpy()
    if samples:
        picked = [samples[i] for i in _nearest([s.t_s for s in samples], middle)]
        steps = steps.assign(sm_mhz=[s.sm_mhz for s in picked], power_w=[s.power_w for s in picked],
                             power_capped=[bool(s.reasons & POWER_CAP) for s in picked])
    if host:
        steps = steps.assign(host_probe_us=[host[i][1] for i in _nearest([t for t, _ in host], middle)])
    return steps


def _nearest(times: Sequence[float], at: np.ndarray) -> np.ndarray:
    """For each of `at`, the index of the nearest of the sorted `times` (a tie: the earlier)."""
    t = np.asarray(times)
    after = np.searchsorted(t, at)
    lo, hi = np.clip(after - 1, 0, len(t) - 1), np.clip(after, 0, len(t) - 1)
    return np.where(np.abs(t[lo] - at) <= np.abs(t[hi] - at), lo, hi)


def step_table(records: list[StepRecord], cost_model: CostModel, power: PowerState | None = None) -> pd.DataFrame:
    """Every step the runtime ran, with its shape, its measured times and the cost model's
    prediction for that same shape (on its SM partition, next to what the other partition
    ran): busy = start to end (scheduling, inputs, GPU), gpu = inputs ready to end, after = end
    to the next step's start on the same partition (bookkeeping, or idling for arrivals); the
    host part of busy splits into schedule (the policy's decision) and plan, which splits into
    kv (the step's KV blocks allocated) and inputs (its inputs built and copied to the device;
    kv and inputs are NaN on SM partitions); issue = inputs ready to the pass's last launch (the
    host issuing it, overlapping the GPU)."""
    rows: list[dict[str, Any]] = []
    last: dict[int, int] = {}  # partition -> its latest row
    for i, rec in enumerate(records):
        shape = rec.shape
        if rec.partition in last:
            rows[last[rec.partition]]["after_s"] = rec.start - records[last[rec.partition]].end
        last[rec.partition] = i
        rows.append({
            "start_s": rec.start, "busy_s": rec.end - rec.start, "gpu_s": rec.end - rec.ready,
            "after_s": float("nan"), "schedule_s": rec.scheduled - rec.start,
            "plan_s": rec.ready - rec.scheduled, "kv_s": rec.allocated - rec.scheduled,
            "inputs_s": rec.built - rec.allocated, "issue_s": rec.issued - rec.ready,
            "prefill_tokens": shape.num_prefill_tokens,
            "num_prefills": len(shape.prefill_tokens), "prefix_tokens": sum(shape.prefill_prefix),
            "num_decodes": shape.num_decodes, "chunks": " ".join(map(str, shape.prefill_tokens)),
            "prefixes": " ".join(map(str, shape.prefill_prefix)), "num_logits": shape.num_logits,
            "decode_context": shape.decode_context, "max_decode_context": shape.max_decode_context,
            "layers": "-".join(map(str, shape.prefill_layers or ())),
            "partition": rec.partition, "sms": rec.sms or 0, "corunner": rec.corunner,
            "corunner_sms": rec.corunner_sms,
        })
    table = pd.DataFrame(rows)
    predicted_s, predicted_gpu_s = _priced(cost_model, step_shapes(table), table.start_s.tolist(), power) \
        if rows else ([], [])
    return table.assign(predicted_s=predicted_s, predicted_gpu_s=predicted_gpu_s)


def step_shapes(steps: pd.DataFrame) -> list[tuple[BatchShape, int | None, Corunner | None]]:
    """The shapes of a step table back, each with its SMs and co-runner (to price them again
    with another cost model)."""
    def ints(text: object) -> tuple[int, ...]:  # "512 100" (NaN or "" when empty)
        return tuple(int(v) for v in text.replace("-", " ").split()) if isinstance(text, str) else ()

    def layers(text: object) -> tuple[int, int] | None:
        parts = ints(text)
        return (parts[0], parts[1]) if len(parts) == 2 else None

    counts = steps[["num_decodes", "decode_context", "max_decode_context", "num_logits"]].astype(int)
    shapes = [BatchShape(ints(chunks), ints(prefixes), int(d), int(ctx), int(max_ctx), int(logits),
                         layers(group))
              for chunks, prefixes, group, (d, ctx, max_ctx, logits) in zip(
                  steps.chunks, steps.prefixes, steps.layers, counts.itertuples(index=False), strict=True)]
    if "sms" not in steps:  # a table from before partitions were recorded
        return [(shape, None, None) for shape in shapes]
    out: list[tuple[BatchShape, int | None, Corunner | None]] = []
    for shape, sms, other, other_sms in zip(shapes, steps.sms.astype(int), steps.corunner.astype(int),
                                            steps.corunner_sms.astype(int), strict=True):
        out.append((shape, int(sms) or None, Corunner(shapes[other], int(other_sms)) if other >= 0 else None))
    return out


def _prompt_shares(steps: pd.DataFrame, predicted: SimResult) -> dict[str, Any]:
    """On SM partitions: the share of prompt tokens that ran at each prefill SM count, measured
    (the step table) and predicted (the simulator's passes at the split in force when each
    started). The split controller's decisions set the prompts' pace, and one prompt of 2,048
    tokens on 24 SMs instead of 56 takes 0.23 s instead of 0.11 s, so this shows whether both
    sides decided alike; {} off partitions."""
    splits = predicted.extra.get("sm_splits")
    if not splits or "sms" not in steps:
        return {}
    prompts = steps[(steps.partition == 0) & (steps.prefill_tokens > 0)]
    measured: dict[int, int] = {}
    for sms, tokens in zip(prompts.sms.astype(int), prompts.prefill_tokens.astype(int), strict=True):
        measured[int(sms)] = measured.get(int(sms), 0) + int(tokens)
    log = predicted.log
    times, shares = [t for t, _ in splits], [n for _, n in splits]
    sim: dict[int, int] = {}
    for start, part, tokens in zip(log.start_s, log.partition, log.prefill_tokens, strict=True):
        if part == 0 and tokens:
            sms = shares[max(bisect.bisect_right(times, start) - 1, 0)]
            sim[sms] = sim.get(sms, 0) + int(tokens)

    def fractions(counts: dict[int, int]) -> dict[str, float]:
        total = sum(counts.values()) or 1
        return {str(k): round(v / total, 4) for k, v in sorted(counts.items())}

    return {"prompt_token_shares": {"measured": fractions(measured), "predicted": fractions(sim)}}


def step_errors(steps: pd.DataFrame) -> dict[str, Any]:
    """Per-step accuracy, separate from queueing: the relative error of the predicted step time
    against the measured busy time (and of the predicted GPU span against the measured one,
    `_priced`), by kind of step: median, p90 and count; and the host's time around the passes
    (busy - GPU span: scheduling, inputs) measured over priced, summed over the steps
    (`host_ratio`: how much slower or faster the host ran than its host constants say; a host's
    speed drifts from one device call, and one minute, to the next)."""
    out: dict[str, Any] = {}
    if steps.empty:
        return out
    kinds = {"decode_only": steps.prefill_tokens == 0, "with_prefill": steps.prefill_tokens > 0}
    for kind, mask in kinds.items():
        part = steps[mask]
        if part.empty:
            continue
        busy = part.predicted_s / part.busy_s - 1
        gpu = part.predicted_gpu_s / part.gpu_s - 1
        out[kind] = {
            "steps": int(len(part)), "median_busy_ms": 1e3 * float(part.busy_s.median()),
            "median_error": float(busy.median()), "p90_abs_error": float(busy.abs().quantile(0.9)),
            "median_gpu_error": float(gpu.median()), "median_host_ms":
                1e3 * float((part.busy_s - part.gpu_s).median()),
            "median_after_ms": 1e3 * float(part.after_s[part.after_s < 0.01].median()),
            "host_ratio": _ratio(float((part.busy_s - part.gpu_s).sum()),
                                 float((part.predicted_s - part.predicted_gpu_s).sum())),
        }
    return out


def _ratio(measured: float, predicted: float) -> float:
    return measured / predicted if predicted > 0 else float("nan")


def _itl(requests: list[Any]) -> np.ndarray:
    gaps = [np.diff(r.token_times_s) for r in requests if len(r.token_times_s) > 1]
    return np.concatenate(gaps) if gaps else np.zeros(0)


def _metric_rows(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Measured, predicted and relative error of each compared metric."""
    rows = {}
    for key in measured:
        m, p = float(measured[key]), float(predicted[key])
        rows[key] = {"measured": m, "predicted": p,
                     "rel_error": (p - m) / m if m else (0.0 if p == 0 else float("inf"))}
    return rows


def _priced(cost_model: CostModel, steps: list[tuple[BatchShape, int | None, Corunner | None]],
            starts: list[float] | None = None, power: PowerState | None = None,
            ) -> tuple[list[float], list[float]]:
    """Each step's predicted time, and its predicted GPU span as the runtime records it (from
    the first launch to the end): the pass, plus, for a pass replayed whole from one graph, the
    host's issue of it (the inputs' copies and the replay), which comes before any of its GPU
    work and inside that span. With `power` (and the measured `starts`), both are stretched
    by the heat the measured sequence of passes leaves, as the simulator stretches its own
    (on SM partitions, by the lanes' heat: `LaneHeat`)."""
    gpu = getattr(cost_model, "gpu_s", cost_model.step_time)
    full_graph = getattr(cost_model, "full_graph", None)
    issue = getattr(cost_model, "host_graph_issue_s", 0.0)
    times = [cost_model.step_time(b, sms, other) for b, sms, other in steps]
    spans = [gpu(b, sms, other) + (issue if full_graph is not None and full_graph(b) else 0.0)
             for b, sms, other in steps]
    if power is None or starts is None:
        return times, spans
    if any(sms for _, sms, _ in steps):
        if not power.model.lane_rise_s:
            return times, spans
        # SM partitions: the lanes' heat (`LaneHeat`), each pass in the order it started.
        lanes, factors = LaneHeat(power.model, power.arch), [1.0] * len(steps)
        for i in sorted(range(len(steps)), key=starts.__getitem__):
            (b, sms, _), t = steps[i], times[i]
            if sms and t > 0:
                factors[i] = lanes.stretch(b, t, starts[i]) / t
    else:
        factors = [power.stretch(b, t, start) / t if t > 0 else 1.0
                   for (b, _, _), t, start in zip(steps, times, starts, strict=True)]
    return ([t * f for t, f in zip(times, factors, strict=True)],
            [g * f for g, f in zip(spans, factors, strict=True)])


def _report(config: Config, measured: dict[str, Any], predicted: dict[str, Any],
            device: torch.device, limits: EngineLimits, cost_kind: str) -> dict[str, Any]:
    rows = _metric_rows({key: measured[key] for key in COMPARED}, predicted)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    return {
        "policy": config.policy.name, "model": config.model, "device": name,
        "cost_model": cost_kind, "kv_blocks": limits.total_blocks,
        "requests": measured["num_requests"], "completed_measured": measured["completed"],
        "completed_predicted": predicted["completed"], "metrics": rows,
        "torch": torch.__version__,
    }


PAIRED = ("ttft_s", "tpot_s", "e2el_s")


def paired_errors(measured: pd.DataFrame, predicted: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per request, predicted over measured minus 1, for the requests completed on both sides:
    the runtime and the simulator serve the same requests, so each has its own error. Their
    median and mean are steadier than the error of a percentile on a few dozen requests (whose
    value falls wherever the distribution happens to be steep). Per metric: requests, median,
    mean and p90 of the absolute error, and the median difference in ms."""
    cols = ["request_id", "status", *PAIRED]
    both = measured[cols].merge(predicted[cols], on="request_id", suffixes=("_m", "_p"))
    both = both[(both.status_m == "completed") & (both.status_p == "completed")]
    out = {}
    for key in PAIRED:
        m, p = both[f"{key}_m"].to_numpy(float), both[f"{key}_p"].to_numpy(float)
        ok = np.isfinite(m) & np.isfinite(p) & (m > 0)
        if not ok.any():
            continue
        rel = p[ok] / m[ok] - 1.0
        out[key] = {"requests": int(ok.sum()), "median_error": float(np.median(rel)),
                    "mean_error": float(np.mean(rel)), "p90_abs_error": float(np.percentile(np.abs(rel), 90)),
                    "median_diff_ms": 1e3 * float(np.median(p[ok] - m[ok]))}
    return out


INTERVAL_DRAWS = 1000
"""Resamples of the requests behind each metric's 95 % interval (`error_intervals`)."""


def _split_gaps(table: pd.DataFrame, itl_s: np.ndarray) -> dict[int, np.ndarray] | None:
    """A run's pooled token gaps (request by request, in its table's order: each completed
    request of n > 1 tokens has n - 1) back per request id; None if they do not add up."""
    n = table.num_generated_tokens.to_numpy(int)
    counts = np.where((table.status == "completed").to_numpy() & (n > 1), n - 1, 0)
    if int(counts.sum()) != len(itl_s):
        return None
    return dict(zip(table.request_id.tolist(), np.split(itl_s, np.cumsum(counts)[:-1]), strict=True))


class _Resampled:
    """Values that belong to requests (`owner`: each value's request index; one or several
    values each), for statistics of a resample of the requests given as how many times each is
    drawn: quantiles by the inverted CDF of the drawn values, and the mean."""

    def __init__(self, values: np.ndarray, owner: np.ndarray) -> None:
        order = np.argsort(values, kind="stable")
        self.values, self.owner = values[order], owner[order]

    def stats(self, draws: np.ndarray, keys: list[tuple[str, float | None]]) -> list[float]:
        weights = draws[self.owner].astype(float)
        total = weights.sum()
        if not len(self.values) or total <= 0:
            return [float("nan")] * len(keys)
        cum = np.cumsum(weights)
        out = []
        for _, q in keys:
            if q is None:
                out.append(float(weights @ self.values / total))
            else:
                i = min(int(np.searchsorted(cum, q / 100 * total)), len(self.values) - 1)
                out.append(float(self.values[i]))
        return out


def error_intervals(measured: pd.DataFrame, predicted: pd.DataFrame, measured_itl_s: np.ndarray,
                    predicted_itl_s: np.ndarray, draws: int = INTERVAL_DRAWS, seed: int = 0
                    ) -> dict[str, list[float]]:
    """How far each latency metric's relative error could move with other requests of the same
    load: the requests completed on both sides are drawn again with replacement (the same draw
    for the runtime and the simulator, which served the same requests), each metric computed on
    both sides of every draw, and the 2.5th and 97.5th percentiles of its error kept. A median
    TTFT over a few dozen requests moves by more than the 5 % target this way (issue 7's 30 %
    runs); an error outside its interval's reach is the model's, not the sample's. Seeded: the
    same inputs give the same intervals."""
    gaps = [_split_gaps(t, itl) for t, itl in ((measured, measured_itl_s), (predicted, predicted_itl_s))]
    both = measured.merge(predicted, on="request_id", suffixes=("_m", "_p"))
    both = both[(both.status_m == "completed") & (both.status_p == "completed")]
    ids = both.request_id.tolist()
    if not ids:
        return {}
    series: dict[str, tuple[_Resampled, _Resampled]] = {}
    for metric in ("ttft", "tpot", "e2el"):
        m, p = (both[f"{metric}_s_{side}"].to_numpy(float) * 1e3 for side in "mp")
        keep = np.flatnonzero(np.isfinite(m) & np.isfinite(p))
        series[metric] = (_Resampled(m[keep], keep), _Resampled(p[keep], keep))
    m_gaps, p_gaps = gaps
    if m_gaps is not None and p_gaps is not None:
        def pooled(per_id: dict[int, np.ndarray]) -> _Resampled:
            runs = [per_id[i] for i in ids]
            return _Resampled(np.concatenate(runs) * 1e3, np.repeat(np.arange(len(ids)), [len(g) for g in runs]))

        series["itl"] = (pooled(m_gaps), pooled(p_gaps))
    keys: dict[str, list[tuple[str, float | None]]] = {}
    for metric in series:
        keys[metric] = [(f"{stat}_{metric}_ms", q) for stat, q in (("median", 50.0), ("p90", 90.0), ("p99", 99.0))]
        if metric in ("ttft", "itl"):
            keys[metric].append((f"mean_{metric}_ms", None))
    rng = np.random.default_rng(seed)
    errors: dict[str, list[float]] = {k: [] for ks in keys.values() for k, _ in ks}
    for _ in range(draws):
        drawn = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
        for metric, (m_side, p_side) in series.items():
            for (key, _), m_stat, p_stat in zip(keys[metric], m_side.stats(drawn, keys[metric]),
                                                p_side.stats(drawn, keys[metric]), strict=True):
                if m_stat > 0 and math.isfinite(p_stat):
                    errors[key].append(p_stat / m_stat - 1.0)
    return {key: [float(np.percentile(e, 2.5)), float(np.percentile(e, 97.5))] for key, e in errors.items() if e}


def with_intervals(rows: dict[str, dict[str, float]], intervals: dict[str, list[float]]) -> dict[str, Any]:
    """The metric rows with each latency metric's 95 % interval of its error (`ci95`)."""
    return {key: {**row, **({"ci95": intervals[key]} if key in intervals else {})} for key, row in rows.items()}


def report_markdown(report: dict[str, Any]) -> str:
    swung = report.get("price_sensitivity", {})
    delta, prices = swung.get("delta", 0.0), swung.get("prices", "")
    lines = [f"# Validation: {report['policy']} on {report['model']} ({report['device']})", "",
             f"cost model: {report['cost_model']}; {report['requests']} requests; KV blocks "
             f"{report['kv_blocks']}", "",
             "| metric | measured | predicted | error | 95 % interval of the error (requests drawn again) |"
             + (f" error with the {prices} prices x{1 - delta:g} / x{1 + delta:g} |" if delta else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if delta else "")]
    for key, row in report["metrics"].items():
        ci, swing = row.get("ci95"), row.get("sensitivity")
        interval = f"{100 * ci[0]:+.1f}% .. {100 * ci[1]:+.1f}%" if ci else ""
        lines.append(f"| {key} | {row['measured']:.4g} | {row['predicted']:.4g} | "
                     f"{100 * row['rel_error']:+.1f}% | {interval} |"
                     + ((f" {100 * swing[0]:+.1f}% / {100 * swing[1]:+.1f}% |" if swing else " |") if delta else ""))
    if report.get("paired"):
        lines += ["", "Per request (the same requests, completed on both sides: predicted / measured - 1):", "",
                  "| metric | requests | median error | mean error | p90 abs error | median difference ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, row in report["paired"].items():
            lines.append(f"| {key} | {row['requests']} | {100 * row['median_error']:+.1f}% | "
                         f"{100 * row['mean_error']:+.1f}% | {100 * row['p90_abs_error']:.1f}% | "
                         f"{row['median_diff_ms']:+.2f} |")
    if report.get("runtime_health"):
        h = report["runtime_health"]
        lines += ["", f"runtime: {h['gc_collections']} GC collections (max {h['gc_max_ms']:.1f} ms), "
                  f"{h['steps_host_over_5ms']} steps with > 5 ms of host time, "
                  f"{h['alloc_retries']} allocator retries"
                  + (f", {h['jit_compiles']} kernel compiles while serving" if "jit_compiles" in h else "")
                  + (f"; SM clock median {h['sm_clock_median_mhz']:.0f} MHz (min {h['sm_clock_min_mhz']:.0f}, "
                     f"slowed for power or heat in {100 * h['clock_slowed_share']:.0f} % of samples)"
                     if "sm_clock_median_mhz" in h else "")
                  + (f"; host probe {h['host_probe_median_us']:.0f} us median (fast decile "
                     f"{h['host_probe_fast_us']:.0f}), slower than {HOST_SLOW_RATIO:g}x that in "
                     f"{100 * h['host_slowed_share']:.0f} % of samples" if "host_probe_median_us" in h else "")]
    calibration = report.get("host_calibration")
    if calibration:
        served = calibration.get("served")
        lines += ["", f"host speed against {calibration['reference']}: x{calibration['factor']:.3f} before "
                  + ("serving (the constants the runtime served with)" if served is None else "serving")
                  + (f", x{calibration['after']['factor']:.3f} after (drift {calibration['drift']:.3f})"
                     if "drift" in calibration else "")
                  + (f"; priced at x{priced_factor(calibration):.3f}" if "drift" in calibration else "")
                  + (f"; the runtime served with {served['reference']}'s constants x{served['factor']:.3f}"
                     if served is not None else "")]
    shares = report.get("prompt_token_shares")
    if shares:
        sms = sorted({*shares["measured"], *shares["predicted"]}, key=int)
        lines += ["", "Prompt tokens by the prefill partition's SMs (the split controller's decisions):", "",
                  "| | " + " | ".join(f"{k} SMs" for k in sms) + " |", "|---|" + "---:|" * len(sms)]
        for side in ("measured", "predicted"):
            lines.append(f"| {side} | " + " | ".join(f"{100 * shares[side].get(k, 0.0):.1f}%" for k in sms) + " |")
    if report.get("steps"):
        lines += ["", "Per step (same shape, measured vs predicted; queueing excluded):", "",
                  "| steps | count | median busy ms | median error | p90 abs error | "
                  "median GPU-span error | median host ms | host measured / priced |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, row in report["steps"].items():
            lines.append(f"| {kind} | {row['steps']} | {row['median_busy_ms']:.2f} | "
                         f"{100 * row['median_error']:+.1f}% | {100 * row['p90_abs_error']:.1f}% | "
                         f"{100 * row['median_gpu_error']:+.1f}% | {row['median_host_ms']:.2f} | "
                         f"{row.get('host_ratio', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"
