"""`servesim profile`: time every operator of a model on this GPU and write its profile.

    python -m servesim.profiler.run --model llama-3.1-8b [--model ...] [--out profiles/]
        [--quick] [--validate] [--warm-workers 12] [--device cuda|cpu]

writes OUT/<gpu>/<model>/{ops,sm_shares,contention,validation_*}.parquet + meta.json. A run
that stops part way (Ctrl-C, a crash, a time limit) resumes from its journal when started again
with the same arguments. `--device cpu` is a dry run under TRITON_INTERPRET=1 (tiny grid).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from servesim.errors import InputError
from servesim.models.arch import ModelArch, load_model
from servesim.models.profile_schema import SCHEMA_VERSION, TABLES
from servesim.profiler import provenance
from servesim.profiler.forward import Forward, IterationIO
from servesim.profiler.grid import SPECS, Point, all_points, contention_targets, corunner_ops
from servesim.profiler.measure import Measurer
from servesim.profiler.operators import OperatorFactory
from servesim.profiler.options import add_profile_arguments
from servesim.profiler.partitions import Partitions
from servesim.profiler.runtime_passes import RUNTIME_KEY, measure_runtime_prompts, runtime_keys
from servesim.profiler.store import Journal, write_meta, write_tables
from servesim.profiler.timing import Timer, summarize
from servesim.profiler.validate import (
    MixedBatch,
    calibration_passes,
    held_out_points,
    random_batches,
    sweep_order,
)
from servesim.profiler.warm import kv_tokens, specs_of, warm_compile
from servesim.runtime.clocks import ClockMonitor, smi_id

HELD_OUT_PER_OP = 6
"""Held-out shapes per operator that --validate times (`held_out_points`)."""


class ModelProfiler:
    """The whole profile of one model: grid, partitions, contention, then --validate."""

    def __init__(self, arch: ModelArch, out_root: Path, mode: str, device: torch.device,
                 validate: bool = False, per_op: int = HELD_OUT_PER_OP, iterations: int = 8) -> None:
        self.arch, self.mode, self.device, self.validate = arch, mode, device, validate
        self.per_op, self.iterations = per_op, iterations
        self.partitions = Partitions(device)
        self.gpu = provenance.device_key(device)
        self.out_dir = out_root / self.gpu / arch.name
        self.points = all_points(arch, mode, self.partitions.num_sms)
        if not self.partitions.disjoint:
            self.points = [p for p in self.points if p.table != "contention"]
        self.held_out = held_out_points(arch, mode, per_op) if validate else []
        self.batches = random_batches(iterations, mode) if validate else []
        self.passes = calibration_passes(mode, partitions=self.partitions.disjoint)
        quick = mode != "full"
        self.timer = Timer(device, target_us=2000.0 if quick else 5000.0, max_reps=20 if quick else 30)
        self.failures: list[str] = []
        self.interrupted = False
        self.poisoned = False
        """A CUDA error broke the context: stop measuring, still write the tables."""
        self.passes_uncovered = 0
        """Passes with a co-runner whose co-runner ended before their last timed step."""

    def specs(self) -> list[Any]:
        return specs_of(self.points + self.held_out, contention_targets(self.arch, self.mode),
                        corunner_ops(self.arch, self.mode))

    def run(self, commit: str) -> dict[str, Any]:
        started = time.perf_counter()
        grid_id = f"{self.arch.name}|{self.mode}|{self.gpu}|{SCHEMA_VERSION}|validate={self.validate}"
        journal = Journal(self.out_dir, grid_id)
        kv_need = max(kv_tokens(spec) for spec in self.specs())  # co-runners' KV included
        factory = OperatorFactory(self.arch, self.device, kv_need)
        measurer = Measurer(factory, self.timer, self.partitions, SPECS[self.mode].split_sms,
                            targets=contention_targets(self.arch, self.mode),
                            corunners=corunner_ops(self.arch, self.mode))
        if any(p.table != "ops" for p in self.points if p.key not in journal):
            measurer.graphs_on_partitions = self._graphs_stay_in_partition(factory)
        # Most valuable first: whole-GPU ops with the held-out shapes, iterations, SM shares,
        # contention.
        sweep = sweep_order([p for p in self.points if p.table == "ops"], self.held_out)
        later = [p for p in self.points if p.table != "ops"]
        total = len(self.points) + len(self.held_out) + len(self.batches) + len(self.passes)
        done = sum(p.key in journal for p in self.points + self.held_out)
        bar = tqdm(total=total, initial=done, mininterval=15, desc=self.arch.name, file=sys.stderr)
        grid_s = 0.0
        gpu_index = smi_id(self.device) if self.device.type == "cuda" else None
        clocks: dict[str, dict[str, Any]] = {}
        try:
            with ClockMonitor(gpu_index) as clock:
                self._measure_all([p for p in sweep if p.key not in journal], measurer, journal, bar)
            clocks["operators"] = clock.summary()
            factory.free()
            passes = [("passes", b) for b in self.passes] + [("validation_iters", b) for b in self.batches]
            with ClockMonitor(gpu_index) as clock:
                if any(f"{t}|{b.batch_id}" not in journal for t, b in passes) and not self.poisoned:
                    # One pass thrown away first: Llama's first pass after the operators measured
                    # 6.18 ms against 5.49 ms at 8x its context (and 5.34 ms in the profile before).
                    self._guarded("warm-up pass", lambda: self._iteration(factory, passes[0][1]))
                for table, batch in passes:
                    key = f"{table}|{batch.batch_id}"
                    if key not in journal and not self.poisoned:
                        self._guarded(key, lambda b=batch, k=key, t=table: journal.add(k, t, self._iteration(factory, b)))
                    bar.update()
            clocks["passes"] = clock.summary()
            factory.free()
            if not any(k.startswith(RUNTIME_KEY) for k in journal.rows) and not self.poisoned:
                with ClockMonitor(gpu_index) as clock:
                    self._guarded("runtime prompt passes", lambda: self._runtime_prompts(journal))
                clocks["runtime_passes"] = clock.summary()
            with ClockMonitor(gpu_index) as clock:
                self._measure_all([p for p in later if p.key not in journal], measurer, journal, bar)
            clocks["partitions"] = clock.summary()
        except KeyboardInterrupt:
            # Stopped (Ctrl-C, a time limit): write what exists; a rerun resumes the rest.
            self.interrupted = True
        grid_s = time.perf_counter() - started
        bar.close()
        tables = self._tables(journal)
        write_tables(self.out_dir, tables)
        meta = provenance.meta(self.arch, self.mode, self.device, commit, self.partitions, tables)
        meta.update({"profile_seconds": round(time.perf_counter() - started, 1),
                     "grid_seconds": round(grid_s, 1), "failures": self.failures,
                     "partition_graphs": measurer.graphs_on_partitions,
                     "contention_uncovered": measurer.uncovered,
                     "passes_uncovered": self.passes_uncovered, "interrupted": self.interrupted,
                     "cuda_context_lost": self.poisoned, "sm_clock": clocks})
        write_meta(self.out_dir, meta)
        journal.close()
        return meta

    def _measure_all(self, points: list[Point], measurer: Measurer, journal: Journal, bar: Any) -> None:
        for p in points:
            if self.poisoned:
                return
            self._guarded(p.key, lambda p=p: journal.add(p.key, p.table, measurer.measure(p)))
            bar.update()

    def _guarded(self, key: str, work: Any) -> None:
        """Run one measurement; a failure is recorded (and retried on resume). A failure that
        leaves the CUDA context unusable (illegal address) stops the run."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - recorded in meta.json
            self.failures.append(f"{key}: {type(exc).__name__}: {exc}"[:300])
            try:
                self.timer.sync()
            except Exception:  # noqa: BLE001 - the context is gone
                self.poisoned = True

    def _graphs_stay_in_partition(self, factory: OperatorFactory) -> bool:
        """A graph replayed on a partition's stream must run as slowly as eager launches
        there (a memory-bound op on the smallest partition); else time partitions eagerly."""
        if not self.timer.cuda:
            return True
        sms = min(SPECS[self.mode].sm_counts)
        part, _ = self.partitions.pair(sms)
        build, _ = factory.builder("rmsnorm", 16384, 0, 0, None)
        eager = self.timer.measure(build, False, part.stream, graph=False).median_us
        graph = self.timer.measure(build, False, part.stream, graph=True).median_us
        return graph >= 0.8 * eager

    def _pass(self, forward: Forward, stream: Any) -> tuple[Any, str]:
        """(one step of the pass, captured in a CUDA graph where there is CUDA; method)."""
        io = IterationIO(self.device)
        self.timer.sync()  # the inputs were made on the current stream
        with self.timer.on(stream):
            forward.run()
            self.timer.sync()
            run, method = forward.run, "eager" if self.timer.cuda else "cpu"
            if self.timer.cuda:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    forward.run()
                self.timer.sync()
                run, method = graph.replay, "graph"
        return (lambda: io.step(run, forward.sampled)), method

    def _iteration(self, factory: OperatorFactory, batch: MixedBatch) -> dict[str, Any]:
        """One whole pass, captured and timed as the engine steps it; with `batch.sms`, on a
        partition of that many SMs (the kernels sized for it, as a Nexus lane runs them); with
        `batch.corunner` (or `batch.corunner_prompt`), while a decode-only pass (or a prompt)
        loops on the other SMs from before the first timed step to after the last (counted in
        meta.json's passes_uncovered if it did not)."""
        part, rest = self.partitions.pair(batch.sms) if batch.sms else (None, None)
        stream = part.stream if part is not None else None
        forward = Forward(factory, list(batch.chunks), list(batch.decode_context), batch.num_logits,
                          batch.sms or None)
        step, method = self._pass(forward, stream)
        prepared = self.timer.prepare(lambda g: [step], stream, graph=False)
        decodes, context = batch.corunner
        prompt = batch.corunner_prompt
        co_end = None
        if (decodes or prompt) and rest is not None and self.timer.cuda:  # (no concurrency on a CPU)
            co_forward = Forward(factory, [(prompt, 0)], [], 1, rest.sms) if prompt else \
                Forward(factory, [], [context] * decodes, decodes, rest.sms)
            co_step, _ = self._pass(co_forward, rest.stream)
            co_us = self.timer.prepare(lambda g: [co_step], rest.stream, graph=False).estimate_us
            loops = math.ceil(1.5 * 5 * (prepared.estimate_us + 100.0) / max(co_us, 1.0)) + 2
            with self.timer.on(rest.stream):
                for _ in range(loops):
                    co_step()
                co_end = torch.cuda.Event(enable_timing=True)
                co_end.record()
        with self.timer.on(stream):
            pairs = self.timer.enqueue(prepared, 5, flush=False)
        self.timer.sync()
        if co_end is not None and pairs[-1][-1].elapsed_time(co_end) < 0:
            self.passes_uncovered += 1
        timing = summarize(self.timer.elapsed_us(pairs, 1), method + ("+corun" if decodes or prompt else ""))
        return {**batch.row(), "sms": batch.sms or self.partitions.num_sms,
                "corunner_sms": rest.sms if (decodes or prompt) and rest is not None else 0, **timing.row()}

    def _runtime_prompts(self, journal: Journal) -> None:
        """The runtime's whole prompt passes in serving's context (`runtime_passes`)."""
        rows = measure_runtime_prompts(self.arch, self.device, self.mode, self.partitions.num_sms, _say)
        for key, row in zip(runtime_keys(rows), rows, strict=True):
            journal.add(key, "passes", row)

    def _tables(self, journal: Journal) -> dict[str, pd.DataFrame]:
        keys = {p.key for p in self.points + self.held_out}
        keys |= {k for k in journal.rows if k.startswith(RUNTIME_KEY)}
        keys |= {f"validation_iters|{b.batch_id}" for b in self.batches}
        keys |= {f"passes|{b.batch_id}" for b in self.passes}
        tables = {name: journal.table(name, keys) for name in TABLES}
        tables["ops"] = pd.concat([tables["ops"], moe_combine_rows(tables["ops"])], ignore_index=True)
        return {name: frame for name, frame in tables.items() if len(frame) or name in ("ops", "sm_shares", "contention")}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _existing_profile(model: str, out_root: Path, device: torch.device, what: str) -> tuple[ModelArch, Path, dict[str, Any]]:
    """(arch, directory, meta.json) of the profile of `model` on this GPU under out_root, which
    an amendment (`what`) adds to; exits with a one-line reason where there is none."""
    arch = load_model(model)
    out_dir = out_root / provenance.device_key(device) / arch.name
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: no profile to add {what} to")
    meta = json.loads(meta_path.read_text())
    if meta.get("model") != arch.name or meta.get("gpu") != provenance.device_key(device):
        raise InputError(f"{meta_path}: a profile of {meta.get('model')} on {meta.get('gpu')}, not of "
                         f"{arch.name} on {provenance.device_key(device)}")
    return arch, out_dir, meta


def _provenance_now(device: torch.device, gpu_index: int | None, commit: str | None) -> dict[str, Any]:
    return {"commit": commit or provenance.git_commit(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "gpu_serial": provenance.gpu_serial(gpu_index),
            "nvidia_smi": provenance.nvidia_smi() if device.type == "cuda" else {}}


def add_runtime_passes(model: str, out_root: Path, mode: str, device_name: str, commit: str | None = None
                       ) -> dict[str, Any]:
    """Time the runtime's prompt passes (`runtime_passes`) into an existing profile of this GPU
    and model: its `passes` rows of those methods are replaced, the rest of the profile kept;
    meta.json's `runtime_passes` records when, where and with what code they were measured."""
    device = torch.device(device_name)
    arch, out_dir, meta = _existing_profile(model, out_root, device, "the runtime's passes")
    started = time.perf_counter()
    partitions = Partitions(device)
    gpu_index = smi_id(device) if device.type == "cuda" else None
    with ClockMonitor(gpu_index) as clock:
        rows = measure_runtime_prompts(arch, device, mode, partitions.num_sms, _say)
    passes = pd.read_parquet(out_dir / "passes.parquet")
    kept = passes[~passes.method.astype(str).str.startswith("runtime_")]
    table = pd.concat([kept, pd.DataFrame(rows, columns=list(TABLES["passes"]))], ignore_index=True)
    write_tables(out_dir, {"passes": table})
    meta["tables"]["passes"] = len(table)
    meta["runtime_passes"] = {**_provenance_now(device, gpu_index, commit),
                              "seconds": round(time.perf_counter() - started, 1), "rows": len(rows),
                              "sm_clock": clock.summary()}
    write_meta(out_dir, meta)
    return meta


PASS_IDENTITY = ("prefill_tokens", "prefill_prefix", "num_decodes", "decode_context", "max_decode_context",
                 "num_logits", "sms", "corunner_decodes", "corunner_context", "corunner_prompt")
"""The columns that name a pass of the `passes` grid (its batch_id is only its place in one run's list)."""


def _pass_identity(row: dict[Any, Any], num_sms: int) -> tuple[Any, ...]:
    out: list[Any] = []
    for col in PASS_IDENTITY:
        value = row.get(col)
        if col in ("prefill_tokens", "prefill_prefix"):
            out.append(str(value or "").strip())
        elif col == "sms":
            out.append(int(value or num_sms))
        else:
            out.append(int(value or 0))
    return tuple(out)


def add_passes(model: str, out_root: Path, mode: str, device_name: str, commit: str | None = None,
               missing: bool = False) -> dict[str, Any]:
    """Time the current grid's whole passes (`calibration_passes`: decode-only ones on the whole
    GPU and its partitions, mixed ones, the Nexus lanes' prompts alone and beside decodes, decode
    lanes beside prompts) into an existing profile of this GPU and model: its grid rows of the
    `passes` table are replaced (where a failure left a pass untimed, its earlier row stays),
    the runtime's prompt passes and every other table kept.
    `missing`: only the passes the table lacks are timed and added (a grid made finer: more
    co-runner or batch sizes), every row it has kept, so each pass stays that of the card it was
    timed on. meta.json's `passes_retimed` lists each such run. Returns the meta with this run
    last (written to meta.json unless `missing` found nothing to time)."""
    device = torch.device(device_name)
    arch, out_dir, meta = _existing_profile(model, out_root, device, "passes")
    prof = ModelProfiler(arch, out_root, mode, device)
    num_sms = prof.partitions.num_sms
    old = pd.read_parquet(out_dir / "passes.parquet") if (out_dir / "passes.parquet").is_file() \
        else pd.DataFrame(columns=list(TABLES["passes"]))
    runtime = old.method.astype(str).str.startswith("runtime_")
    batches = prof.passes
    if missing:
        have = {_pass_identity(r, num_sms) for r in old[~runtime].to_dict("records")}
        batches = [b for b in batches if _pass_identity({**b.row(), "sms": b.sms}, num_sms) not in have]
        if not batches:  # the profile already holds the whole grid: nothing timed, nothing written
            return {**meta, "passes_retimed": [*meta.get("passes_retimed", []),
                                               {"missing_only": True, "rows": 0, "seconds": 0.0}]}
    started = time.perf_counter()
    factory = OperatorFactory(arch, device, max(kv_tokens(s) for s in prof.specs()))
    gpu_index = smi_id(device) if device.type == "cuda" else None
    rows: list[dict[str, Any]] = []
    first_id = int(old.batch_id.max()) + 1 if missing and len(old) else 0
    with ClockMonitor(gpu_index) as clock:
        prof._guarded("warm-up pass", lambda: prof._iteration(factory, batches[0]))  # thrown away (`run`)
        for i, batch in enumerate(tqdm(batches, mininterval=15, desc=f"{arch.name} passes", file=sys.stderr)):
            batch = dataclasses.replace(batch, batch_id=first_id + i)
            prof._guarded(f"passes|{batch.batch_id}", lambda b=batch: rows.append(prof._iteration(factory, b)))
            if prof.poisoned:
                break
    factory.free()
    # The runtime's prompt passes stay; the grid's earlier rows go where every pass was timed
    # again, and only those replaced where a failure left some untimed (or with `missing`).
    timed = {_pass_identity(r, num_sms) for r in rows}
    replaced = pd.Series([_pass_identity(r, num_sms) in timed for r in old.to_dict("records")],
                         index=old.index, dtype=bool)
    kept = old[runtime | ~replaced] if missing or len(rows) < len(batches) else old[runtime]
    new = pd.DataFrame(rows, columns=list(TABLES["passes"]))
    table = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    write_tables(out_dir, {"passes": table})
    meta.setdefault("tables", {})["passes"] = len(table)
    meta["passes_retimed"] = [*meta.get("passes_retimed", []),
                              {"missing_only": missing, "rows": len(rows), "asked": len(batches),
                               "failures": prof.failures, "passes_uncovered": prof.passes_uncovered,
                               **_provenance_now(device, gpu_index, commit),
                               "seconds": round(time.perf_counter() - started, 1), "sm_clock": clock.summary()}]
    write_meta(out_dir, meta)
    return meta


def retime_ops(model: str, out_root: Path, mode: str, device_name: str, ops: Sequence[str],
               commit: str | None = None, missing: bool = False) -> dict[str, Any]:
    """Time the current grid's whole-GPU points of `ops` into an existing profile of this GPU
    and model: the `ops` table's rows of those operators are replaced (every other row and table
    kept), so a grid made finer for one operator needs that operator timed, not a whole profile.
    `missing`: only the points the table lacks are timed and added, every row it has kept (and
    the held-out shapes not timed again). meta.json's `retimed` lists each such run (operators,
    grid axes then, code, card, clocks). Returns the meta with this run last in `retimed`
    (written to meta.json unless `missing` found nothing to time)."""
    device = torch.device(device_name)
    arch, out_dir, meta = _existing_profile(model, out_root, device, "operators")
    partitions = Partitions(device)
    points = [p for p in all_points(arch, mode, partitions.num_sms) if p.table == "ops" and p.op in ops]
    unknown = sorted(set(ops) - {p.op for p in points})
    if unknown:
        raise InputError(f"--ops-only {','.join(unknown)}: not an operator of {arch.name}'s {mode} grid")
    if missing:
        old = pd.read_parquet(out_dir / "ops.parquet")
        have = set(zip(old.op, old.a.astype(float), old.b.astype(float), old.c.astype(float), strict=True))
        points = [p for p in points if (p.op, float(p.a), float(p.b), float(p.c)) not in have]
        if not points:  # the profile already holds the whole grid: nothing timed, nothing written
            return {**meta, "retimed": [*meta.get("retimed", []),
                                        {"ops": list(ops), "missing_only": True, "rows": 0, "seconds": 0.0}]}
    started = time.perf_counter()
    factory = OperatorFactory(arch, device, max(kv_tokens(s) for s in specs_of(points, {}, {})))
    quick = mode != "full"
    timer = Timer(device, target_us=2000.0 if quick else 5000.0, max_reps=20 if quick else 30)
    measurer = Measurer(factory, timer, partitions, SPECS[mode].split_sms)
    gpu_index = smi_id(device) if device.type == "cuda" else None
    held = (out_dir / "validation_ops.parquet").is_file() and not missing
    if held:  # the held-out shapes of these operators, timed again with them (sweep_order)
        points = sweep_order(points, [p for p in held_out_points(arch, mode, HELD_OUT_PER_OP) if p.op in ops])
    rows: dict[str, list[dict[str, Any]]] = {"ops": [], "validation_ops": []}
    with ClockMonitor(gpu_index) as clock:
        for p in tqdm(points, mininterval=15, desc=f"{arch.name} {','.join(ops)}", file=sys.stderr):
            rows[p.table].append(measurer.measure(p))
    factory.free()
    tables = {}
    for name in ("ops", "validation_ops") if held else ("ops",):
        old = pd.read_parquet(out_dir / f"{name}.parquet")
        kept = old if missing else old[~old.op.isin(list(ops))]
        tables[name] = pd.concat([kept, pd.DataFrame(rows[name], columns=list(TABLES[name]))], ignore_index=True)
        meta["tables"][name] = len(tables[name])
    write_tables(out_dir, tables)
    table = tables["ops"]
    spec = json.loads(json.dumps(dataclasses.asdict(SPECS[mode])))  # tuples as meta.json holds them
    grid = {k: v for k, v in spec.items() if meta.get("grid", {}).get(k) != v}
    meta.setdefault("grid", {}).update(grid)
    meta["grid"].setdefault("points", {}).update({op: int((table.op == op).sum()) for op in ops})
    meta["retimed"] = [*meta.get("retimed", []),
                       {"ops": list(ops), "missing_only": missing, "rows": len(rows["ops"]),
                        "held_out_rows": len(rows["validation_ops"]),
                        "grid_changed": sorted(grid),
                        **_provenance_now(device, gpu_index, commit),
                        "seconds": round(time.perf_counter() - started, 1), "sm_clock": clock.summary()}]
    write_meta(out_dir, meta)
    return meta


def moe_combine_rows(ops: pd.DataFrame) -> pd.DataFrame:
    """The combine kernel is private to servesim.kernels.moe: its time is fused MoE minus the
    parts (align, grouped gate_up, SiLU-mul, grouped down), uniform routing, floored at 1 us."""
    cols = list(TABLES["ops"])
    if "moe_fused" not in set(ops.op):
        return pd.DataFrame(columns=cols)
    t = {op: ops[(ops.op == op) & (ops.b == 0)].set_index("a").median_us
         for op in ("moe_fused", "moe_align", "moe_gate_up", "moe_silu_mul", "moe_down")}
    parts = t["moe_align"] + t["moe_gate_up"] + t["moe_silu_mul"] + t["moe_down"]
    combine = (t["moe_fused"] - parts).dropna().clip(lower=1.0)
    return pd.DataFrame({"op": "moe_combine", "a": combine.index, "b": 0.0, "c": 0.0,
                         "median_us": combine.values, "p20_us": combine.values, "p80_us": combine.values,
                         "reps": 0, "method": "derived"})[cols]


def profile_models(models: Sequence[str], out_root: Path, mode: str, device_name: str,
                   validate: bool, warm_workers: int, commit: str | None = None,
                   per_op: int = HELD_OUT_PER_OP, iterations: int = 8, warm_only: bool = False) -> list[dict[str, Any]]:
    """Profile each model (compiling all kernels first, in parallel); returns each meta."""
    device = torch.device(device_name)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("servesim profile: --device cpu needs TRITON_INTERPRET=1 in the environment")
    profilers = {m: ModelProfiler(load_model(m), out_root, mode, device, validate, per_op, iterations)
                 for m in models}
    warm: dict[str, Any] = {}
    if warm_workers > 0:
        try:
            warm = warm_compile({m: p.specs() for m, p in profilers.items()}, warm_workers)
            print(f"compiled kernels in {warm['warm_compile_s']:.0f} s ({warm['warm_ran']} calls, "
                  f"{warm['warm_failed']} failed)", file=sys.stderr)
        except (RuntimeError, OSError) as exc:  # a broken worker pool: timing compiles instead
            print(f"parallel compile failed ({type(exc).__name__}: {exc}); compiling while timing", file=sys.stderr)
    metas: list[dict[str, Any]] = []
    if warm_only:
        return metas
    for prof in profilers.values():
        if metas and metas[-1].get("interrupted"):
            break
        meta = prof.run(commit or provenance.git_commit())
        meta.update(warm)
        write_meta(prof.out_dir, meta)
        print(f"{prof.arch.name}: {meta['profile_seconds']:.0f} s, {len(prof.failures)} failures -> {prof.out_dir}",
              file=sys.stderr)
        metas.append(meta)
    return metas


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="servesim profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(p)
    p.add_argument("--commit", help="project commit to record (default: git rev-parse HEAD)")
    p.add_argument("--warm-only", action="store_true", help="only compile the kernels (then exit)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = "tiny" if args.device == "cpu" else ("quick" if args.quick else "full")
    try:
        if args.missing and not (args.ops_only or args.passes_only):
            raise InputError("--missing goes with --ops-only OP[,OP] or --passes-only")
        if args.runtime_passes_only:
            for model in args.model:
                add_runtime_passes(model, Path(args.out), mode, args.device, args.commit)
            return 0
        if args.passes_only:
            for model in args.model:
                add_passes(model, Path(args.out), mode, args.device, args.commit, args.missing)
            return 0
        if args.ops_only:
            for model in args.model:
                retime_ops(model, Path(args.out), mode, args.device, args.ops_only.split(","), args.commit,
                           args.missing)
            return 0
    except InputError as e:
        print(f"servesim profile: error: {e}", file=sys.stderr)
        return 2
    profile_models(args.model, Path(args.out), mode, args.device, args.validate,
                   args.warm_workers, args.commit, warm_only=args.warm_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
