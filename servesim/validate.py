"""`servesim validate`: run the real runtime and the simulator on the same config, trace and
seed, and report how far the prediction is from the measurement, metric by metric.

Needs torch (the `gpu` extra): on a CUDA GPU for real numbers, or on the CPU under
TRITON_INTERPRET=1 (tiny models only; checks the plumbing, not the timing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from servesim.config import Config
from servesim.errors import InputError
from servesim.models.arch import load_model
from servesim.policies.base import EngineLimits
from servesim.runner import build_cost_model, build_requests, check_fits, engine_limits, make_policy
from servesim.runtime.engine import Runtime
from servesim.runtime.model import RuntimeModel
from servesim.runtime.warmup import warm_up
from servesim.sim.engine import simulate
from servesim.sim.hardware import get_gpu
from servesim.sim.metrics import request_table, summarize
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


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("validate: --device cuda but no CUDA GPU is visible")
    return device


def validate(config: Config, base_dir: Path, device_name: str = "cuda",
             max_kv_blocks: int | None = None, warmup: bool = True) -> Validation:
    """Measure on the runtime, predict with the simulator, compare."""
    device = _device(device_name)
    arch, gpu = load_model(config.model), get_gpu(config.hardware.gpu)
    limits = engine_limits(config, arch, gpu)
    if max_kv_blocks is not None and max_kv_blocks < limits.total_blocks:
        limits = dataclasses.replace(limits, total_blocks=max_kv_blocks,
                                     watermark_blocks=int(config.engine.watermark * max_kv_blocks))
    workload = load_workload(config.workload, np.random.default_rng(config.seed), base_dir)
    check_fits(workload, limits, config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = RuntimeModel(arch, limits.total_blocks, limits.block_size, device, dtype, config.seed)
    if warmup:
        warm_up(model, limits, int(workload.num_prompt_tokens.max()))
    measured = Runtime(model, make_policy(config, limits), limits).run(build_requests(workload, config))
    predicted = simulate(build_requests(workload, config), make_policy(config, limits),
                         build_cost_model(config, arch, gpu), limits, arch=arch)
    tables = [request_table(r.requests, config.slo.classes, config.slo.default) for r in (measured, predicted)]
    summaries = [summarize(r, t) for r, t in zip((measured, predicted), tables, strict=True)]
    return Validation(_report(config, summaries[0], summaries[1], device, limits), tables[0],
                      tables[1], _itl(measured.requests), _itl(predicted.requests))


def _itl(requests: list[Any]) -> np.ndarray:
    gaps = [np.diff(r.token_times_s) for r in requests if len(r.token_times_s) > 1]
    return np.concatenate(gaps) if gaps else np.zeros(0)


def _report(config: Config, measured: dict[str, Any], predicted: dict[str, Any],
            device: torch.device, limits: EngineLimits) -> dict[str, Any]:
    rows = {}
    for key in COMPARED:
        m, p = float(measured[key]), float(predicted[key])
        rows[key] = {"measured": m, "predicted": p,
                     "rel_error": (p - m) / m if m else (0.0 if p == 0 else float("inf"))}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    return {
        "policy": config.policy.name, "model": config.model, "device": name,
        "cost_model": config.cost_model.kind, "kv_blocks": limits.total_blocks,
        "requests": measured["num_requests"], "completed_measured": measured["completed"],
        "completed_predicted": predicted["completed"], "metrics": rows,
        "torch": torch.__version__,
    }


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Validation: {report['policy']} on {report['model']} ({report['device']})", "",
             f"cost model: {report['cost_model']}; {report['requests']} requests; KV blocks "
             f"{report['kv_blocks']}", "", "| metric | measured | predicted | error |",
             "|---|---:|---:|---:|"]
    for key, row in report["metrics"].items():
        lines.append(f"| {key} | {row['measured']:.4g} | {row['predicted']:.4g} | "
                     f"{100 * row['rel_error']:+.1f}% |")
    return "\n".join(lines) + "\n"
