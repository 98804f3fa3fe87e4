"""One run, end to end: a checked Config -> workload, model, cost model, engine limits ->
simulate -> request table and summary. Used by the CLI and by every sweep worker; writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servesim.config import Config
from servesim.errors import InputError
from servesim.models.arch import ModelArch, load_model
from servesim.policies import REGISTRY, EngineLimits, Policy
from servesim.request import Request
from servesim.sim.cost_model import CostModel, make_cost_model
from servesim.sim.engine import SimResult, simulate
from servesim.sim.hardware import GpuSpec, get_gpu
from servesim.sim.host_overhead import HostOverheadCostModel
from servesim.sim.kv_cache import num_kv_blocks
from servesim.sim.metrics import request_table, summarize
from servesim.sim.power import POWER_MODELS, PowerModel
from servesim.sim.profile_tables import shipped_profiles
from servesim.sim.profiled import ProfiledCostModel
from servesim.traces import load_workload


@dataclass
class RunOutput:
    summary: dict[str, Any]
    requests: pd.DataFrame
    result: SimResult


def engine_limits(config: Config, arch: ModelArch, gpu: GpuSpec) -> EngineLimits:
    """KV capacity from GPU memory (DESIGN: memory x utilization - weights - reserve)."""
    hw, eng = config.hardware, config.engine
    blocks = num_kv_blocks(
        gpu.memory_bytes, hw.memory_utilization, arch.weight_bytes,
        hw.activation_reserve_gib * 2**30, arch.kv_bytes_per_token, eng.block_size,
    )
    max_len = eng.max_model_len or min(arch.max_position_embeddings, blocks * eng.block_size)
    return EngineLimits(
        block_size=eng.block_size,
        total_blocks=blocks,
        watermark_blocks=math.floor(eng.watermark * blocks),
        max_model_len=max_len,
        num_layers=arch.num_layers,
        num_sms=gpu.num_sms,
    )


def resolved_kind(config: Config, arch: ModelArch, gpu: GpuSpec) -> str:
    """The cost model `kind` stands for: `auto` is the shipped profile of (gpu, model) when the
    package has one (or the profile directory the config names), else the roofline."""
    cm = config.cost_model
    if cm.kind != "auto":
        return cm.kind
    return "profile" if cm.profile is not None or (gpu.name, arch.name) in shipped_profiles() else "roofline"


def build_cost_model(config: Config, arch: ModelArch, gpu: GpuSpec) -> CostModel:
    cm, kind = config.cost_model, resolved_kind(config, arch, gpu)
    if cm.gpu_scale != 1.0 and kind != "profile":
        raise InputError(f"cost_model.gpu_scale: scales a profile's times; the {kind} cost model has none")
    if kind == "constant":
        model = make_cost_model(
            "constant", arch, gpu, fixed_s=cm.fixed_s, per_prefill_token_s=cm.per_prefill_token_s,
            per_decode_s=cm.per_decode_s, per_context_token_s=cm.per_context_token_s,
            per_chunk_s=cm.per_chunk_s,
        )
    elif kind == "profile":
        model = ProfiledCostModel(arch, gpu, cm.profile, prompt_passes=cm.prompt_passes, gpu_scale=cm.gpu_scale)
    else:
        model = make_cost_model(kind, arch, gpu)
    engine = config.engine
    if cm.host_launch_us or cm.host_step_us or cm.host_per_seq_us or cm.host_check_us or cm.host_gap_us \
            or cm.host_graph_issue_us or cm.host_check_per_seq_us or engine.cuda_graph_sizes:
        if isinstance(model, ProfiledCostModel) and engine.cuda_graph_max_decodes:
            model.graph_rows = tuple(g for g in engine.cuda_graph_sizes if g <= engine.cuda_graph_max_decodes)
        return HostOverheadCostModel(model, arch, cm.host_launch_us * 1e-6, cm.host_step_us * 1e-6,
                                     engine.cuda_graph_max_tokens, gpu.num_sms,
                                     cm.host_per_seq_us * 1e-6, cm.host_check_us * 1e-6, cm.host_gap_us * 1e-6,
                                     engine.cuda_graph_max_decodes, cm.host_graph_issue_us * 1e-6,
                                     cm.host_check_per_seq_us * 1e-6, engine.cuda_graph_sizes)
    return model


def power_model(config: Config, arch: ModelArch, gpu: GpuSpec) -> PowerModel | None:
    """The clock's response to compute-dense passes the simulator applies (None: none); `on`
    for a GPU where it was not measured is an input error."""
    setting = config.cost_model.power_cap
    if setting == "off" or (setting == "auto" and resolved_kind(config, arch, gpu) != "profile"):
        return None
    model = POWER_MODELS.get(gpu.name)
    if model is None and setting == "on":
        raise InputError(f"cost_model.power_cap: on, but the clock's response was not measured on "
                         f"{gpu.name} (measured: {', '.join(sorted(POWER_MODELS))})")
    return model


def build_requests(table: pd.DataFrame, config: Config) -> list[Request]:
    """Request objects from the workload table, with their class's SLO targets."""
    out = []
    columns = zip(
        table.request_id.tolist(), table.arrival_s.tolist(), table.num_prompt_tokens.tolist(),
        table.num_output_tokens.tolist(), table.slo_class.astype(str).tolist(),
        table.priority.tolist(), strict=True,
    )
    for rid, arrival_s, prompt, output, cls, priority in columns:
        slo = config.slo.for_class(cls)
        tbt_s = slo.tbt_s if slo.tbt_s is not None else slo.tpot_s
        if config.engine.role == "prefill":  # the decode happens on another instance
            output = 1
        out.append(Request(int(rid), float(arrival_s), int(prompt), int(output), cls, int(priority),
                           slo.ttft_s, tbt_s))
    return out


def check_fits(table: pd.DataFrame, limits: EngineLimits, config: Config) -> None:
    """With engine.oversized=error, a request that no KV cache state could ever hold is bad input."""
    if config.engine.oversized != "error" or table.empty:
        return
    total = table.num_prompt_tokens + table.num_output_tokens
    kv_tokens = (limits.total_blocks - limits.watermark_blocks) * limits.block_size
    bad = (total > limits.max_model_len) | (total > kv_tokens)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        row = table.iloc[i]
        raise InputError(
            f"{config.workload.trace or 'workload'}: request {int(row.request_id)} (prompt "
            f"{int(row.num_prompt_tokens)} + output {int(row.num_output_tokens)} tokens) exceeds what "
            f"the engine can ever hold (max_model_len {limits.max_model_len}, KV cache {kv_tokens} "
            f"tokens); shorten it or set engine.oversized: reject to count it as rejected"
        )


def make_policy(config: Config, limits: EngineLimits) -> Policy:
    return REGISTRY[config.policy.name](config.policy.params, limits)


def run(config: Config, base_dir: Path | None = None) -> RunOutput:
    """Simulate one configuration; deterministic for a given config (seed included)."""
    rng = np.random.default_rng(config.seed)
    arch = load_model(config.model)
    gpu = get_gpu(config.hardware.gpu)
    limits = engine_limits(config, arch, gpu)
    workload = load_workload(config.workload, rng, base_dir or Path.cwd())
    check_fits(workload, limits, config)
    requests = build_requests(workload, config)
    cost_model = build_cost_model(config, arch, gpu)
    result = simulate(requests, make_policy(config, limits), cost_model, limits, arch=arch,
                      power=power_model(config, arch, gpu))
    table = request_table(result.requests, config.slo.classes, config.slo.default)
    summary = summarize(result, table)
    summary["cost_model"] = resolved_kind(config, arch, gpu)
    # Lookups outside a profile's grid (ProfiledCostModel counts them; never silent).
    profiled = getattr(cost_model, "inner", cost_model)
    if hasattr(profiled, "extrapolated"):
        summary["cost_model_extrapolations"] = summary["cost_model_extrapolations"] + profiled.extrapolated
    return RunOutput(summary, table, result)
