"""Running a sweep's runs and keeping their records.

One run -> its record (`execute`, in any worker); pools that run many (in-process, a local
process pool, Ray); the record store OUT/runs/<hash>.json, written only by the driver, so a
worker killed mid-run leaves nothing behind; and the tables rebuilt from the records.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from servesim.config import from_mapping
from servesim.errors import InputError
from servesim.goodput import Criterion, SearchSettings, search_many
from servesim.outputs import write_json, write_parquet
from servesim.runner import run
from servesim.sim.metrics import pooled_itl_s

RATE_KEY = "workload.rate_scale"
QUANTILES = np.linspace(0.0, 1.0, 201)  # latency quantiles kept per run, for CDF plots
Point = tuple[tuple[str, Any], ...]


class SweepInterrupted(Exception):
    """The sweep stopped early (a worker died); what finished is kept and a rerun resumes."""


@dataclass(frozen=True)
class RunSpec:
    """One planned simulation: its hash, the axis values that made it, its resolved config."""

    run_hash: str
    axes: Point
    config: Mapping[str, Any]


def execute(spec: RunSpec, base_dir: str) -> dict[str, Any]:
    """Simulate one run (in a worker) and return its record; an exception becomes status=failed."""
    started = time.perf_counter()
    record: dict[str, Any] = {"run_hash": spec.run_hash, "axes": [list(kv) for kv in spec.axes],
                              "config": spec.config, "status": "ok", "error": ""}
    try:
        out = run(from_mapping(spec.config, f"run {spec.run_hash}"), Path(base_dir))
        record["summary"] = _finite(out.summary)
        record["derived"] = _derived(out.summary, out.requests)
        itl = pooled_itl_s(out.result.requests)
        done = out.requests[out.requests.status == "completed"]
        record["cdf"] = {name: _quantiles_ms(v) for name, v in
                         (("ttft", done.ttft_s), ("itl", itl), ("e2el", done.e2el_s))}
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, not fatal to the sweep
        record.update(status="failed", error=f"{type(e).__name__}: {e}", summary={}, derived={}, cdf={})
    record["wall_s"] = time.perf_counter() - started
    return record


def _derived(summary: Mapping[str, Any], requests: pd.DataFrame) -> dict[str, float]:
    """Offered rate and the Pareto axes of simulators.md §4.1 (one GPU per run)."""
    arrivals = requests.arrival_s.to_numpy(np.float64)
    span = float(arrivals.max() - arrivals.min()) if len(arrivals) > 1 else 0.0
    duration = max(float(summary["duration"]), 1e-12)
    concurrency = float(summary["completed"]) * float(summary["mean_e2el_ms"]) / 1000.0 / duration
    out_tput = float(summary["output_throughput"])
    return {"offered_request_rate": (len(arrivals) - 1) / span if span > 0 else 0.0,
            "tokens_per_s_per_user": out_tput / concurrency if concurrency > 0 else 0.0,
            "tokens_per_s_per_gpu": out_tput}


def _quantiles_ms(values: Any) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [] if not len(v) else [float(x) for x in np.quantile(v * 1000.0, QUANTILES)]


def _finite(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Pool:
    """Runs RunSpecs and yields their records as they finish: in-process (workers=1), a
    process pool, or Ray (address from RAY_ADDRESS, else a local Ray of `workers` CPUs)."""

    def __init__(self, executor: str, workers: int, base_dir: Path) -> None:
        if executor not in ("local", "ray"):
            raise InputError(f"--executor: expected local or ray, got '{executor}'")
        self.executor, self.workers, self.base_dir = executor, max(1, workers), str(base_dir)
        self._pool: ProcessPoolExecutor | None = None
        self._ray_owned = False

    def __enter__(self) -> Pool:
        if self.executor == "ray":
            import ray  # optional dependency (extra "ray"), needed only here

            if not ray.is_initialized():
                address = os.environ.get("RAY_ADDRESS")
                ray.init(address=address, num_cpus=None if address else self.workers,
                         include_dashboard=False, log_to_driver=False)
                self._ray_owned = True
        elif self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._ray_owned:
            import ray

            ray.shutdown()

    def map(self, runs: list[RunSpec]) -> Iterator[dict[str, Any]]:
        if self.executor == "ray":
            yield from self._map_ray(runs)
        elif self._pool is None:
            yield from (execute(r, self.base_dir) for r in runs)
        else:
            futures = [self._pool.submit(execute, r, self.base_dir) for r in runs]
            try:
                yield from (f.result() for f in as_completed(futures))
            except BrokenProcessPool:
                raise SweepInterrupted("a worker process died; finished runs are kept, "
                                       "run the same command again to resume") from None

    def _map_ray(self, runs: list[RunSpec]) -> Iterator[dict[str, Any]]:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=2)(execute)
        queue, pending = list(reversed(runs)), list[Any]()
        while queue or pending:
            while queue and len(pending) < 4 * self.workers:
                pending.append(remote.remote(queue.pop(), self.base_dir))
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])


def record_path(out: Path, run_hash: str) -> Path:
    return out / "runs" / f"{run_hash}.json"


def load_record(out: Path, run_hash: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(record_path(out, run_hash).read_text())
        return data
    except (OSError, ValueError):
        return None


def clean_partial_writes(out: Path) -> None:
    """Remove temp files an interrupted atomic write left behind (names start with '.')."""
    for p in (out / "runs").glob(".*.json.*"):
        p.unlink(missing_ok=True)


def run_all(runs: Iterable[RunSpec], pool: Pool, out: Path, retry_failed: bool,
            progress: bool = True) -> int:
    """Run what has no record yet (and failed runs when `retry_failed`), saving each record;
    returns how many ran."""
    todo = [r for r in runs if not _finished(out, r.run_hash, retry_failed)]
    todo = list({r.run_hash: r for r in todo}.values())
    if not todo:
        return 0
    with tqdm(total=len(todo), disable=None if progress else True, unit="run") as bar:
        for record in pool.map(todo):
            write_json(record_path(out, record["run_hash"]), record)
            bar.update()
    return len(todo)


def _finished(out: Path, run_hash: str, retry_failed: bool) -> bool:
    rec = load_record(out, run_hash)
    return rec is not None and not (retry_failed and rec["status"] != "ok")


def variant_label(spec: RunSpec, hidden: tuple[str, ...] = (RATE_KEY, "slo_scale")) -> str:
    """'sarathi token_budget=512': the policy and every axis value but load and SLO scale."""
    parts = [str(spec.config["policy"]["name"])]
    for key, value in spec.axes:
        if key not in hidden and key != "policy.name":
            short = key.split(".")[-1] if key.startswith("policy.") else key
            parts.append(f"{short}={_cell(value)}")
    return " ".join(parts)


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, Mapping | list) else value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = value
    return out


def _row(kind: str, spec: RunSpec, rec: Mapping[str, Any]) -> dict[str, Any]:
    axes = dict(spec.axes)
    row: dict[str, Any] = {
        "run_hash": spec.run_hash, "kind": kind, "policy": spec.config["policy"]["name"],
        "variant": variant_label(spec), "rate_scale": spec.config["workload"]["rate_scale"],
        "slo_scale": axes.get("slo_scale", 1.0),
    }
    row.update({k: _cell(v) for k, v in spec.axes if k != "slo_scale"})
    row.update(_flatten(rec["summary"]))
    row.update(rec["derived"])
    row.update(status=rec["status"], error=rec["error"], wall_s=rec["wall_s"])
    return row


def write_tables(out: Path, runs: Iterable[tuple[str, RunSpec]]) -> pd.DataFrame:
    """Rebuild OUT/results.parquet and OUT/cdfs.parquet from the records of `runs` (kind, run),
    in the order given; runs without a record yet are left out."""
    rows, cdfs, seen = [], [], set()
    for kind, spec in runs:
        rec = load_record(out, spec.run_hash)
        if rec is None or spec.run_hash in seen:
            continue
        seen.add(spec.run_hash)
        rows.append(_row(kind, spec, rec))
        for metric, values in rec["cdf"].items():
            if values:
                cdfs.append(pd.DataFrame({"run_hash": spec.run_hash, "metric": metric,
                                          "quantile": QUANTILES, "value_ms": values}))
    results = pd.DataFrame(rows)
    for col in [c for c in results.columns if results[c].dtype == object]:
        if results[col].map(type).nunique() > 1:  # e.g. an axis of numbers and strings
            results[col] = results[col].map(lambda v: v if v is None else str(v))
    write_parquet(out / "results.parquet", results)
    cdf_cols = ["run_hash", "metric", "quantile", "value_ms"]
    write_parquet(out / "cdfs.parquet", pd.concat(cdfs) if cdfs else pd.DataFrame(columns=cdf_cols))
    return results


def describe(point: Point) -> str:
    return ", ".join(f"{k}={v}" for k, v in point) or "base"


def search_rates(runs: list[RunSpec], plan: Callable[[Point], RunSpec], s: SearchSettings,
                 pool: Pool, out: Path, probes: list[RunSpec]) -> tuple[pd.DataFrame, int]:
    """Bisect rate_scale for every configuration: the grid's points without their rate and
    SLO scale (searches hold the base SLOs). Probe runs are appended to `probes`; returns
    one row per configuration and criterion, and how many runs were simulated."""
    variants = {describe(v): v for v in
                (tuple(kv for kv in r.axes if kv[0] not in (RATE_KEY, "slo_scale")) for r in runs)}
    criteria: dict[Hashable, Criterion] = {
        (v, c): _guarded(check) for v in variants for c, check in s.checks().items()}
    ran = 0

    def evaluate_round(wanted: list[tuple[Hashable, float]]) -> list[Mapping[str, Any]]:
        nonlocal ran
        batch = [plan(variants[_key(k)[0]] + ((RATE_KEY, rate),)) for k, rate in wanted]
        probes.extend(batch)
        ran += run_all(batch, pool, out, retry_failed=False)
        return [load_record(out, r.run_hash) or {} for r in batch]

    found = search_many(criteria, evaluate_round, s)
    rows = []
    for key, res in found.items():
        variant, criterion = _key(key)
        best = plan(variants[variant] + ((RATE_KEY, res.best),)) if res.best else None
        rec = load_record(out, best.run_hash) if best else None
        rows.append({
            "variant": variant_label(plan(variants[variant])), "criterion": criterion,
            "threshold": s.threshold(criterion), "rate_scale": res.best,
            "request_rate": rec["derived"]["offered_request_rate"] if rec else 0.0,
            "run_hash": best.run_hash if best else "", "first_fail_rate_scale": res.first_fail,
            "censored": res.censored, "rel_tol": s.rel_tol,
            "rates_tried": res.rates_tried(), "num_probes": len(res.probes)})
    return pd.DataFrame(rows), ran


def _key(key: Hashable) -> tuple[str, str]:
    assert isinstance(key, tuple)
    return str(key[0]), str(key[1])


def _guarded(check: Criterion) -> Criterion:
    """A failed run (no summary) fails the criterion."""
    return lambda rec: rec.get("status") == "ok" and check(rec["summary"])
