"""Sweeps: one base config, axes over any config key, the searches and plots to make -> one
simulation per point, run by a local process pool or on Ray, kept in a resumable results table.

    name: chunk_size
    base: {workload: {trace: azure_conv, duration_s: 300}, slo: {ttft_s: 1, tpot_s: 0.05}}
    axes:                        # blocks, multiplied together (cartesian product)
      - grid: {workload.rate_scale: [2, 4, 8]}                 # every combination
      - zip: {policy.token_budget: [256, 512], seed: [0, 1]}   # in lock step
      - cases:                                                 # alternatives; each is a block
          - {policy.name: vllm}
          - {policy.name: sarathi, grid: {policy.token_budget: [256, 512]}}
    search: {criteria: [goodput, capacity], attainment: 0.9, p99_tbt_s: 0.1, lo: 1, hi: 32}
    plots: [pareto_latency, pareto_throughput, goodput_vs_rate, slo_vs_scale, latency_cdf]

`base` may also be a config file path (relative to the sweep file). A block is a mapping of
fixed `key: value` pairs plus optional `grid`, `zip` and `cases`. Keys are dotted config paths;
`slo_scale` multiplies every SLO target. Setting `policy.name` starts that run's policy section
afresh, so the base policy's knobs never leak into another policy.

A run is named by the sha256 of its resolved config. Its record (config, axis values, summary,
latency quantiles, status, error, wall_s) lands whole in OUT/runs/<hash>.json, written only by
the driver, so a killed worker cannot corrupt anything and a rerun skips every recorded run.
OUT/results.parquet (one row per run, in sweep order) and OUT/cdfs.parquet are rebuilt from
those records; they are identical between identical sweeps except the `wall_s` column.
`search` bisects rate_scale per configuration (a grid point without its rate and SLO scale,
at the base SLOs; servesim.goodput) and writes OUT/search.parquet; its probe runs join the
results table with kind=search.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from servesim.config import Config, apply_overrides, from_mapping, read_yaml, to_dict
from servesim.errors import InputError
from servesim.goodput import SearchSettings
from servesim.outputs import write_parquet, write_yaml
from servesim.sweep_runs import (
    Point,
    Pool,
    RunSpec,
    SweepInterrupted,
    clean_partial_writes,
    describe,
    run_all,
    search_rates,
    write_tables,
)

CONFIG_KEYS = ("model", "hardware", "cost_model", "engine", "workload", "policy", "slo", "seed")
SWEEP_KEYS = ("name", "description", "base", "axes", "search", "plots")
PLOT_KINDS = ("pareto_latency", "pareto_throughput", "goodput_vs_rate", "slo_vs_scale", "latency_cdf")
VOLATILE_COLUMNS = ("wall_s",)  # differ between identical sweeps; leave out of comparisons
__all__ = ["Pool", "RunSpec", "SweepInterrupted", "load_sweep", "plan", "run_sweep"]


@dataclass(frozen=True)
class PlotSpec:
    kind: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    base_dir: Path
    base: Mapping[str, Any]
    points: tuple[Point, ...]
    search: SearchSettings | None
    plots: tuple[PlotSpec, ...]


def read_sweep(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[Point]]:
    """The sweep file's raw mapping, its base config mapping and its points (keys checked,
    configs not yet)."""
    p = Path(path)
    raw = read_yaml(p)
    for key in raw:
        if key not in SWEEP_KEYS:
            raise InputError(f"{p}: unknown key '{key}' (known: {', '.join(SWEEP_KEYS)})")
    base: Any = raw.get("base", {})
    if isinstance(base, str):
        base = read_yaml(p.parent / base)
    if not isinstance(base, Mapping):
        raise InputError(f"{p}: base: expected a config mapping or a config file path")
    axes = raw.get("axes", [])
    if not isinstance(axes, list):
        raise InputError(f"{p}: axes: expected a list of blocks (grid, zip, cases)")
    blocks = [expand_block(b, f"{p}: axes[{i}]") for i, b in enumerate(axes)]
    points = [tuple(itertools.chain(*combo)) for combo in itertools.product(*blocks)]
    return raw, dict(base), points


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file and every run config it makes; errors name file and key."""
    raw, base, points = read_sweep(path)
    src = str(path)
    search = _search(raw["search"], base, f"{src}: search") if raw.get("search") else None
    plots = tuple(_plot_spec(d, f"{src}: plots[{i}]") for i, d in enumerate(raw.get("plots") or []))
    spec = SweepSpec(str(raw.get("name", Path(path).stem)), src, Path(path).resolve().parent,
                     base, tuple(points), search, plots)
    plan(spec)  # every run's config is checked before anything runs
    return spec


def required_policies(path: str | Path) -> list[str]:
    """The policy names a sweep file uses (without checking that they exist)."""
    _, base, points = read_sweep(path)
    names = {_policy_name(base.get("policy", "sarathi"))}
    for point in points:
        names.update(_policy_name(v) if k == "policy" else str(v)
                     for k, v in point if k in ("policy", "policy.name"))
    return sorted(names)


def _policy_name(value: Any) -> str:
    return str(value.get("name", "sarathi") if isinstance(value, Mapping) else value)


def _search(d: object, base: Mapping[str, Any], where: str) -> SearchSettings:
    """The search settings; capacity's TBT SLO defaults to the base config's slo.tbt_s."""
    if isinstance(d, Mapping) and "p99_tbt_s" not in d:
        slo = base.get("slo") or {}
        flat = slo.get("default", slo) if isinstance(slo, Mapping) else {}
        if isinstance(flat, Mapping) and flat.get("tbt_s") is not None:
            d = {**d, "p99_tbt_s": flat["tbt_s"]}
    return SearchSettings.from_dict(d, where)


def read_plot_specs(out: Path) -> tuple[list[tuple[str, Mapping[str, Any]]] | None, str]:
    """The plots (kind, options) a finished sweep asked for (None = all) and its name."""
    if not (out / "sweep.yaml").exists():
        return None, out.name
    raw = read_yaml(out / "sweep.yaml")
    specs = [_plot_spec(d, f"{out}/sweep.yaml: plots[{i}]") for i, d in enumerate(raw.get("plots") or [])]
    return [(p.kind, p.options) for p in specs] or None, str(raw.get("name", out.name))


def _plot_spec(d: object, where: str) -> PlotSpec:
    kind, options = (d, {}) if isinstance(d, str) else (None, d)
    if isinstance(options, Mapping) and kind is None:
        kind, options = options.get("kind"), {k: v for k, v in options.items() if k != "kind"}
    if kind not in PLOT_KINDS or not isinstance(options, Mapping):
        raise InputError(f"{where}: expected one of {', '.join(PLOT_KINDS)} (or a mapping with kind)")
    return PlotSpec(str(kind), options)


def expand_block(block: object, where: str) -> list[Point]:
    """A block's points: its fixed keys x grid x zip x cases."""
    if not isinstance(block, Mapping) or not block:
        raise InputError(f"{where}: expected a mapping of keys and/or grid, zip, cases")
    fixed: Point = tuple((_axis_key(k, where), v) for k, v in block.items()
                         if k not in ("grid", "zip", "cases"))
    parts: list[list[Point]] = [[fixed]]
    if "grid" in block:
        lists = _value_lists(block["grid"], f"{where}.grid")
        parts.append([tuple(zip(lists, combo, strict=True))
                      for combo in itertools.product(*lists.values())])
    if "zip" in block:
        lists = _value_lists(block["zip"], f"{where}.zip")
        if len({len(v) for v in lists.values()}) > 1:
            raise InputError(f"{where}.zip: lists differ in length "
                             f"({', '.join(f'{k}: {len(v)}' for k, v in lists.items())})")
        parts.append([tuple(zip(lists, combo, strict=True)) for combo in zip(*lists.values(), strict=True)])
    if "cases" in block:
        cases = block["cases"]
        if not isinstance(cases, list) or not cases:
            raise InputError(f"{where}.cases: expected a non-empty list of blocks")
        parts.append([pt for i, c in enumerate(cases) for pt in expand_block(c, f"{where}.cases[{i}]")])
    return [tuple(itertools.chain(*combo)) for combo in itertools.product(*parts)]


def _value_lists(d: object, where: str) -> dict[str, list[Any]]:
    if not isinstance(d, Mapping) or not d:
        raise InputError(f"{where}: expected a mapping of key -> list of values")
    out = {}
    for key, values in d.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}.{key}: expected a non-empty list of values")
        out[_axis_key(key, where)] = values
    return out


def _axis_key(key: object, where: str) -> str:
    parts = str(key).split(".")
    if str(key) != "slo_scale" and (parts[0] not in CONFIG_KEYS or not all(parts)):
        raise InputError(f"{where}: unknown axis key '{key}' (a dotted config key under "
                         f"{', '.join(CONFIG_KEYS)}, or slo_scale)")
    return str(key)


def apply_point(base: Mapping[str, Any], point: Point, where: str) -> dict[str, Any]:
    """The run config mapping: base with the point's values set (policy.name first)."""
    raw = copy.deepcopy(dict(base))
    scale = 1.0
    for key, value in sorted(point, key=lambda kv: kv[0] not in ("policy", "policy.name")):
        if key == "slo_scale":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InputError(f"{where}: slo_scale: expected a positive number, got {value!r}")
            scale *= value
        elif key == "policy.name":
            raw["policy"] = {"name": value}
        else:
            raw = _set(raw, key, value, where)
    if scale != 1.0 and "slo" in raw:
        raw["slo"] = _scaled(raw["slo"], scale)
    if isinstance(raw.get("policy"), dict):
        raw["policy"].setdefault("name", Config().policy.name)  # knobs set on the default policy
    return raw


def _set(raw: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    """`raw` with `key` set, through the same path as `--set key=value` (YAML round trip)."""
    try:
        return apply_overrides(raw, [f"{key}={yaml.safe_dump(value, default_flow_style=True)}"])
    except InputError as e:
        raise InputError(f"{where}: {key}: {str(e).rsplit(': ', 1)[-1]}") from None


def _scaled(slo: Any, scale: float) -> Any:
    if isinstance(slo, Mapping):
        return {k: _scaled(v, scale) for k, v in slo.items()}
    return slo * scale if isinstance(slo, int | float) and not isinstance(slo, bool) else slo


def plan_point(spec: SweepSpec, point: Point) -> RunSpec:
    """Check one point's config and name it by the hash of its resolved form."""
    where = f"{spec.source}: run {describe(point)}"
    config = to_dict(from_mapping(apply_point(spec.base, point, where), where))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return RunSpec(digest[:16], point, config)


def plan(spec: SweepSpec) -> list[RunSpec]:
    """Every distinct run of the sweep, in sweep order."""
    runs: dict[str, RunSpec] = {}
    for point in spec.points or ((),):
        r = plan_point(spec, point)
        runs.setdefault(r.run_hash, r)
    return list(runs.values())




@dataclass
class SweepOutcome:
    results: pd.DataFrame
    search: pd.DataFrame | None
    planned: int
    ran: int


def run_sweep(spec: SweepSpec, out: Path, executor: str = "local", workers: int = 1,
              retry_failed: bool = False, progress: bool = True) -> SweepOutcome:
    """Run every point not yet recorded in OUT, then the searches; rebuild the tables even
    when interrupted, so a rerun picks up where this one stopped."""
    out.mkdir(parents=True, exist_ok=True)
    clean_partial_writes(out)
    write_yaml(out / "sweep.yaml", {"name": spec.name, "source": spec.source,
                                    "plots": [{"kind": p.kind, **p.options} for p in spec.plots]})
    runs, probes = plan(spec), list[RunSpec]()
    search, ran = None, 0
    try:
        with Pool(executor, workers, spec.base_dir) as pool:
            ran = run_all(runs, pool, out, retry_failed, progress)
            if spec.search is not None:
                search, ran_search = search_rates(runs, lambda pt: plan_point(spec, pt), spec.search,
                                                  pool, out, probes)
                ran += ran_search
                write_parquet(out / "search.parquet", search)
    finally:
        results = write_tables(out, [("grid", r) for r in runs] + [("search", r) for r in probes])
    return SweepOutcome(results, search, len(runs), ran)
