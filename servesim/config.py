"""The run configuration: YAML -> frozen, typed dataclasses.

Defaults live in code; a YAML file only overrides them. An unknown key, a wrong type or an
impossible value is an `InputError` naming the file and the dotted key. `--set a.b=value`
overrides are applied to the YAML mapping before it is checked. The resolved configuration (every
default filled in) is what `to_dict` returns and what the CLI writes beside every output.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from servesim.dictconfig import DictConfig, coerce
from servesim.errors import InputError
from servesim.policies import REGISTRY
from servesim.policies.base import PolicyParams
from servesim.sim.metrics import SloTarget
from servesim.traces import WorkloadConfig


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class HardwareConfig(DictConfig):
    gpu: str = _help("h200", "GPU preset whose measured ceilings and memory the run uses")
    memory_utilization: float = _help(0.9, "fraction of GPU memory the engine may use (vLLM's)")
    activation_reserve_gib: float = _help(4.0, "memory kept for activations, not KV (GiB)")

    def __post_init__(self) -> None:
        if not 0.0 < self.memory_utilization <= 1.0:
            raise InputError("memory_utilization: must be in (0, 1]")
        if self.activation_reserve_gib < 0:
            raise InputError("activation_reserve_gib: must be >= 0")


@dataclass(frozen=True)
class CostModelConfig(DictConfig):
    kind: Literal["auto", "roofline", "constant", "profile"] = _help(
        "auto", "how iteration time is predicted; auto: the profile shipped for (gpu, model) when "
        "there is one (servesim models lists them), else roofline")
    profile: str | None = _help(None, "profile directory for kind=profile; None = the shipped one")
    fixed_s: float = _help(0.0, "constant model: seconds per iteration")
    per_prefill_token_s: float = _help(0.0, "constant model: seconds per prefill token")
    per_decode_s: float = _help(0.0, "constant model: seconds per decoding sequence")
    per_context_token_s: float = _help(0.0, "constant model: seconds per decode context token")
    per_chunk_s: float = _help(0.0, "constant model: seconds per prefill chunk")
    host_launch_us: float = _help(
        0.0, "host time per launch (kernel, or graph replay under engine.cuda_graph_max_tokens) (microseconds)")
    host_step_us: float = _help(0.0, "host time per iteration outside its launches: scheduling, inputs, "
                                "sampling, bookkeeping (microseconds)")
    host_per_seq_us: float = _help(0.0, "host time per iteration per sequence in the batch (microseconds)")
    host_check_us: float = _help(0.0, "host time per preemption check of an operator-level pass: the "
                                 "policy's decision before the next block is launched (microseconds)")
    host_check_per_seq_us: float = _help(0.0, "host time per running sequence added to each preemption "
                                         "check (the policy scans the running requests for due "
                                         "decodes) (microseconds)")
    host_gap_us: float = _help(0.0, "GPU idle per host launch of a graphed pass (the switch from a graph "
                               "replay to a kernel the host launches), on top of the profile's "
                               "whole-pass time (microseconds)")
    host_graph_issue_us: float = _help(0.0, "host time to issue a decode pass replayed whole from one graph "
                                       "(engine.cuda_graph_max_decodes): its inputs' copies and the replay, "
                                       "before which the GPU has none of its work (microseconds)")
    prompt_passes: Literal["auto", "ops", "runtime", "runtime_graph"] = _help(
        "auto", "a prompt pass on the whole GPU (profile cost model): ops = its operators' sum; "
        "runtime = its prompt layers scaled to the profile's whole runtime prompt passes timed in one "
        "CUDA graph, plus what the runtime's way of issuing them (piecewise graphs, launches) added "
        "to them (servesim.profiler.runtime_passes); runtime_graph = the first part only; auto = "
        "runtime where the profile has those passes, else ops")
    gpu_scale: float = _help(
        1.0, "every GPU time the profile gives times this (profile cost model only): a card slower "
        "(above 1) or faster than the one profiled, or how sensitive a prediction is to the prices")
    power_cap: Literal["auto", "on", "off"] = _help(
        "auto", "the SM clock's slowdown after compute-dense passes (servesim.sim.power): a pass "
        "that follows a prompt's pass runs slower than the profile, which times a rested GPU; "
        "auto: on for the profile cost model on a GPU where it was measured (h200)")

    def __post_init__(self) -> None:
        for f in ("fixed_s", "per_prefill_token_s", "per_decode_s", "per_context_token_s", "per_chunk_s",
                  "host_launch_us", "host_step_us", "host_per_seq_us", "host_check_us", "host_gap_us",
                  "host_graph_issue_us", "host_check_per_seq_us"):
            if getattr(self, f) < 0:
                raise InputError(f"{f}: must be >= 0")
        if not self.gpu_scale > 0:
            raise InputError("gpu_scale: must be > 0")


@dataclass(frozen=True)
class EngineConfig(DictConfig):
    block_size: int = _help(16, "tokens per KV block")
    watermark: float = _help(0.01, "fraction of KV blocks admission keeps free (vLLM: 1 %)")
    max_model_len: int | None = _help(None, "longest request (prompt + output); None = the model's")
    role: Literal["colocated", "prefill"] = _help(
        "colocated", "prefill: a disaggregated prefill instance; each request ends at its first token"
    )
    oversized: Literal["error", "reject"] = _help(
        "error", "a request that can never fit: stop with an error naming it, or reject it and count it"
    )
    cuda_graph_max_tokens: int = _help(
        0, "passes of up to this many tokens replay CUDA graphs of everything but attention "
        "(servesim's runtime does; the host-overhead model counts launches so); 0 = all eager"
    )
    cuda_graph_max_decodes: int = _help(
        0, "decode-only passes of up to this many sequences replay one CUDA graph of the whole pass, "
        "attention included (vLLM's full graphs for decode batches; the host then launches about ten "
        "things per step); 0 = none"
    )
    cuda_graph_sizes: tuple[int, ...] = _help(
        (), "row counts the engine captures its graphs at: a graphed pass runs its GEMMs and other "
        "non-attention operators at the smallest size that holds its tokens (padding rows), a whole "
        "decode graph all of it (vLLM pads to its capture sizes the same way); () = every size "
        "captured. `servesim validate` sets the runtime's own where none are given"
    )

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise InputError("block_size: must be >= 1")
        if not 0.0 <= self.watermark < 1.0:
            raise InputError("watermark: must be in [0, 1)")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise InputError("max_model_len: must be >= 2")
        if self.cuda_graph_max_tokens < 0:
            raise InputError("cuda_graph_max_tokens: must be >= 0")
        if self.cuda_graph_max_decodes < 0:
            raise InputError("cuda_graph_max_decodes: must be >= 0")
        sizes = self.cuda_graph_sizes
        if any(s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
            raise InputError("cuda_graph_sizes: must be increasing row counts >= 1")


@dataclass(frozen=True)
class SloConfig:
    default: SloTarget = _help(SloTarget(), "targets of requests whose class is not listed")
    classes: Mapping[str, SloTarget] = field(
        default_factory=dict, metadata={"help": "per-class targets, by class name"}
    )

    def for_class(self, name: str) -> SloTarget:
        return self.classes.get(name, self.default)


@dataclass(frozen=True)
class PolicyConfig:
    name: str
    params: PolicyParams


@dataclass(frozen=True)
class Config:
    model: str = "llama-3.1-8b"
    hardware: HardwareConfig = HardwareConfig()
    cost_model: CostModelConfig = CostModelConfig()
    engine: EngineConfig = EngineConfig()
    workload: WorkloadConfig = WorkloadConfig()
    policy: PolicyConfig = PolicyConfig("sarathi", REGISTRY["sarathi"].Params())
    slo: SloConfig = SloConfig()
    seed: int = 0
    source: str = "<defaults>"


_SECTIONS = ("model", "hardware", "cost_model", "engine", "workload", "policy", "slo", "seed")


def _slo_target(d: object, where: str) -> SloTarget:
    if not isinstance(d, Mapping):
        raise InputError(f"{where}: expected a mapping of ttft_s/tpot_s/tbt_s/e2el_s")
    known = [f.name for f in dataclasses.fields(SloTarget)]
    for key, value in d.items():
        if key not in known:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise InputError(f"{where}.{key}: expected a positive number of seconds, got {value!r}")
    return SloTarget(**{k: None if v is None else float(v) for k, v in d.items()})


def _slo(d: object, where: str) -> SloConfig:
    if not isinstance(d, Mapping):
        raise InputError(f"{where}: expected a mapping")
    extra = set(d) - {"default", "classes", "ttft_s", "tpot_s", "tbt_s", "e2el_s"}
    if extra:
        raise InputError(f"{where}: unknown key '{sorted(extra)[0]}' (known: default, classes, ttft_s, tpot_s, tbt_s, e2el_s)")
    flat = {k: v for k, v in d.items() if k not in ("default", "classes")}
    if flat and "default" in d:
        raise InputError(f"{where}: give targets either at the top or under 'default', not both")
    default = _slo_target(d.get("default", flat), f"{where}.default" if "default" in d else where)
    classes = d.get("classes", {}) or {}
    if not isinstance(classes, Mapping):
        raise InputError(f"{where}.classes: expected a mapping of class name -> targets")
    return SloConfig(default, {str(k): _slo_target(v, f"{where}.classes.{k}") for k, v in classes.items()})


def _policy(d: object, where: str) -> PolicyConfig:
    if isinstance(d, str):
        d = {"name": d}
    if not isinstance(d, Mapping) or "name" not in d:
        raise InputError(f"{where}: expected a mapping with 'name' (one of {', '.join(REGISTRY)})")
    name = d["name"]
    if name not in REGISTRY:
        raise InputError(f"{where}.name: unknown policy '{name}' (known: {', '.join(REGISTRY)})")
    params_cls = REGISTRY[name].Params
    knobs = {k: v for k, v in d.items() if k != "name"}
    try:
        params = _params(params_cls, knobs, where)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    return PolicyConfig(name, params)


def _params(cls: type[PolicyParams], knobs: Mapping[str, Any], where: str) -> PolicyParams:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in knobs.items():
        if key not in names:
            raise InputError(f"{where}: unknown key '{key}' for this policy (known: {', '.join(names) or 'none'})")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _build(raw: Mapping[str, Any], source: str) -> Config:
    for key in raw:
        if key not in _SECTIONS:
            raise InputError(f"{source}: unknown key '{key}' (known: {', '.join(_SECTIONS)})")
    base = Config()
    model = raw.get("model", base.model)
    if not isinstance(model, str):
        raise InputError(f"{source}: model: expected a preset name or a config.json path")
    seed = raw.get("seed", base.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{source}: seed: expected a non-negative integer, got {seed!r}")

    def section(name: str, build: Any, default: Any) -> Any:
        return build(raw[name], f"{source}: {name}") if name in raw else default

    return Config(
        model=model,
        hardware=section("hardware", HardwareConfig.from_dict, base.hardware),
        cost_model=section("cost_model", CostModelConfig.from_dict, base.cost_model),
        engine=section("engine", EngineConfig.from_dict, base.engine),
        workload=section("workload", WorkloadConfig.from_dict, base.workload),
        policy=section("policy", _policy, base.policy),
        slo=section("slo", _slo, base.slo),
        seed=seed,
        source=source,
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """'policy.token_budget=1024' -> (['policy', 'token_budget'], 1024)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"--set {text}: expected KEY.PATH=VALUE")
    try:
        return key.split("."), yaml.safe_load(value)
    except yaml.YAMLError:
        raise InputError(f"--set {text}: the value is not valid YAML") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `raw` with each --set override applied (creating mappings on the way)."""
    out = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None or isinstance(child, str) and part == "policy":
                child = {} if child is None else {"name": child}
                node[part] = child
            if not isinstance(child, dict):
                raise InputError(f"--set {text}: '{part}' is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, or an InputError naming the file and line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{p}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read, override and check a run config (None = all defaults)."""
    raw = read_yaml(path) if path is not None else {}
    return from_mapping(apply_overrides(raw, overrides), str(path or "<defaults>"))


def from_mapping(raw: Mapping[str, Any], source: str) -> Config:
    return _build(raw, source)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved configuration as plain YAML-able data (it loads back to the same Config)."""
    out = {name: _plain(getattr(config, name)) for name in _SECTIONS}
    out["policy"] = {"name": config.policy.name, **_plain(config.policy.params)}
    return out
