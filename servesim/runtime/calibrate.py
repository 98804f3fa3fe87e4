"""The host's speed while it serves. The runtime's host constants (`cost_model.host_*`, from
benchmarks/runtime_overhead.py) are timed in one process at one time, but the host of a rented
GPU machine does not keep one speed: on the H200 machines' virtual CPUs the same decode step's
host work took 244-479 us from one call to the next (and swings by up to 2x from one second to
the next). `calibrate` times the runtime's own loop serving decode batches of fixed shapes
(REFERENCE_LOOPS, the first loops runtime_overhead.py times with full decode graphs) in the
serving process, just before it serves, and returns the ratio of that host time to the same
loops' in the file the constants came from: `servesim validate` scales every host constant by
it, so the prediction (and Nexus's controller, which asks it while serving) prices the host the
run will have."""

from __future__ import annotations

import collections
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from servesim.config import CostModelConfig
from servesim.errors import InputError
from servesim.models.arch import ModelArch
from servesim.policies import REGISTRY, EngineLimits
from servesim.request import Request
from servesim.runtime.engine import Runtime
from servesim.runtime.model import RuntimeModel
from servesim.sim.cost_model import make_cost_model
from servesim.sim.hardware import GpuSpec
from servesim.sim.host_overhead import FULL_DECODE_LAUNCHES, HostOverheadCostModel

REFERENCE_LOOPS = ((1, 128), (8, 1024), (32, 1024))
"""(requests, prompt) of the loops timed against the reference file's loops of the same names
(runtime_overhead.py's LOOPS begin with these)."""

ROUNDS = 2
OUTPUT = 64
"""Rounds of the loops and tokens each request decodes: about 3 s of the H200's time."""

HOST_FIELDS = ("host_launch_us", "host_step_us", "host_per_seq_us", "host_check_us",
               "host_check_per_seq_us", "host_gap_us", "host_graph_issue_us")
"""The cost model's host constants, all scaled by the factor."""


def decode_loops(model: RuntimeModel, limits: EngineLimits, host: HostOverheadCostModel,
                 loops: tuple[tuple[int, int], ...], output: int = OUTPUT, rounds: int = 3
                 ) -> dict[str, dict[str, float]]:
    """The runtime's own loop serving `loops`' requests that decode together, each loop run
    `rounds` times in turn (the host's speed drifts over seconds, so each size sees the same
    stretches of it): per decode step, the host's time before its first launch and after its end
    (GPU idle), the interval between steps, and the issue time per launch (`host` counts the
    launches); medians over the rounds' steps."""
    samples: dict[str, dict[str, list[float]]] = {}
    policy_cls = REGISTRY["vllm_v1"]
    for _ in range(rounds):
        for batch, ctx in loops:
            runtime = Runtime(model, policy_cls(policy_cls.Params(), limits), limits)
            runtime.run([Request(i, 0.0, ctx, output) for i in range(batch)])
            records = runtime.steps
            decode = [i for i, s in enumerate(records[:-1])
                      if s.shape.num_decodes == batch and not s.shape.prefill_tokens]
            got = samples.setdefault(f"decode_b{batch}", collections.defaultdict(list))
            got["before"] += [records[i].ready - records[i].start for i in decode]
            got["after"] += [records[i + 1].start - records[i].end for i in decode]
            got["interval"] += [records[i + 1].start - records[i].start for i in decode]
            got["launch"] += [(records[i].issued - records[i].ready) / host.launches(records[i].shape)
                              for i in decode]
    out = {}
    for name, got in samples.items():
        before, after = statistics.median(got["before"]), statistics.median(got["after"])
        out[name] = {"batch": float(name.removeprefix("decode_b")), "steps": len(got["before"]),
                     "interval_ms": 1e3 * statistics.median(got["interval"]), "before_ms": 1e3 * before,
                     "after_ms": 1e3 * after, "host_step_us": 1e6 * (before + after),
                     "launch_us": 1e6 * statistics.median(got["launch"])}
    return out


def loop_host_us(loop: dict[str, float]) -> float:
    """A decode step's host time in a loop with full decode graphs: around the pass (before and
    after) plus issuing it."""
    return loop["host_step_us"] + FULL_DECODE_LAUNCHES * loop["launch_us"]


def speed_factor(now: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> float:
    """The host's time for the loops both sets hold now over the reference's: above 1, the host
    runs slower than when the constants were measured."""
    names = [name for name in now if name in reference]
    if not names:
        raise InputError(f"host reference: none of the loops {sorted(now)} in its full_decode loops "
                         f"({sorted(reference)})")
    return sum(loop_host_us(now[n]) for n in names) / sum(loop_host_us(reference[n]) for n in names)


def reference_loops(path: Path) -> dict[str, dict[str, float]]:
    """The full-decode-graph loops of a runtime_overhead.py result."""
    try:
        loops = json.loads(path.read_text())["full_decode"]["loops"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a runtime_overhead.py result with full_decode loops ({e})") from None
    return {name: loop for name, loop in loops.items() if isinstance(loop, dict) and "launch_us" in loop}


def priced_factor(calibration: dict[str, Any]) -> float:
    """The host's speed a run is priced at: the lower of the factors timed just before and just
    after it served (before alone where the loops after failed). On a shared host, noise only
    slows a loop (the host's other work takes the CPU from it), so the faster of two timings that
    bracket the run is the better estimate of its speed: in 2 of the 12 colocated runs of
    2026-11-30 the loops before read 1.95 where the runs' own decode steps showed 1.31-1.40, and
    the loops after 1.29-1.39."""
    after = calibration.get("after", {}).get("factor")
    return float(calibration["factor"] if after is None else min(calibration["factor"], after))


def priced_constants(calibration: dict[str, Any]) -> dict[str, Any]:
    """The host constants a run is priced with: those it served with (`constants`, the factor
    before) times the priced factor over that one (to 0.01 us)."""
    ratio = priced_factor(calibration) / calibration["factor"]
    return {f: round(v * ratio, 2) for f, v in calibration["constants"].items()}


def rereferenced(calibration: dict[str, Any], cost_model: CostModelConfig, reference: Path) -> dict[str, Any]:
    """A run's host calibration (its loops timed before and after serving) priced against
    another reference file: the factors against that file's loops, the constants `cost_model`'s
    (that file's) times the factor, the priced factor and constants again. What the run served
    with stays under `served` (its policy's predictor), through any number of re-references."""
    loops = reference_loops(reference)
    factor = round(speed_factor(calibration["loops"], loops), 4)
    served = calibration.get("served") or {k: calibration[k] for k in ("reference", "factor", "constants")}
    out = {**calibration, "reference": reference.name, "factor": factor,
           "constants": {f: getattr(scaled(cost_model, factor), f) for f in HOST_FIELDS}, "served": served}
    after = calibration.get("after", {})
    if "loops" in after:
        out["after"] = {**after, "factor": round(speed_factor(after["loops"], loops), 4)}
        out["drift"] = round(out["after"]["factor"] / factor, 4)
    out["priced_factor"] = priced_factor(out)
    out["priced_constants"] = priced_constants(out)
    return out


def served_constants(calibration: dict[str, Any]) -> dict[str, Any] | None:
    """The host constants a run's policy served with (None without a calibration)."""
    return (calibration.get("served") or calibration).get("constants")


def scaled(cost_model: CostModelConfig, factor: float) -> CostModelConfig:
    """`cost_model` with every host constant times `factor` (to 0.01 us)."""
    return dataclasses.replace(cost_model, **{f: round(getattr(cost_model, f) * factor, 2) for f in HOST_FIELDS})


def calibrate(model: RuntimeModel, limits: EngineLimits, arch: ModelArch, gpu: GpuSpec,
              reference: Path) -> dict[str, Any]:
    """Time REFERENCE_LOOPS on `model` (its full decode graphs must hold their batches) and
    compare them with `reference`'s: {"reference", "factor", "loops"}."""
    before = reference_loops(reference)
    host = HostOverheadCostModel(make_cost_model("roofline", arch, gpu), arch, 1.0, 0.0, 2048,
                                 graph_max_decodes=max(b for b, _ in REFERENCE_LOOPS))
    now = decode_loops(model, limits, host, REFERENCE_LOOPS, OUTPUT, ROUNDS)
    return {"reference": reference.name, "factor": round(speed_factor(now, before), 4), "loops": now}
