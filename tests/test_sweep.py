"""Sweeps: expansion (grid, zip, cases, nested keys), bad input, hashing, the results table,
failed runs, resume, and a worker killed mid-sweep."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sweepkit import SMALL, stable, write_sweep

from servesim.cli import main
from servesim.errors import InputError
from servesim.sweep import load_sweep, plan, required_policies, run_sweep


def _sweep(tmp: Path, axes: list[Any], **extra: Any) -> list[dict[str, Any]]:
    spec = load_sweep(write_sweep(tmp, {"base": SMALL["base"], "axes": axes, **extra}))
    return [dict(r.axes) | {"_config": r.config} for r in plan(spec)]


def test_grid_is_a_cartesian_product_in_order(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, [{"grid": {"workload.rate_scale": [1, 2], "seed": [0, 1, 2]}}])
    assert [(r["workload.rate_scale"], r["seed"]) for r in runs] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert [r["_config"]["seed"] for r in runs] == [0, 1, 2, 0, 1, 2]


def test_zip_goes_in_lock_step_and_blocks_multiply(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, [
        {"zip": {"policy.token_budget": [256, 512], "policy.max_num_seqs": [32, 64]}},
        {"grid": {"workload.rate_scale": [1, 3]}},
    ])
    got = [(r["_config"]["policy"]["token_budget"], r["_config"]["policy"]["max_num_seqs"],
            r["_config"]["workload"]["rate_scale"]) for r in runs]
    assert got == [(256, 32, 1), (256, 32, 3), (512, 64, 1), (512, 64, 3)]


def test_cases_nested_keys_and_fresh_policy_sections(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, [{"cases": [
        {"policy.name": "orca", "hardware.memory_utilization": 0.8},
        {"policy.name": "sarathi", "grid": {"policy.token_budget": [128, 2048]}},
    ]}], )
    assert [r["_config"]["policy"]["name"] for r in runs] == ["orca", "sarathi", "sarathi"]
    assert runs[0]["_config"]["hardware"]["memory_utilization"] == 0.8
    assert runs[0]["_config"]["policy"] == {"name": "orca", "max_num_seqs": 16}  # no sarathi knobs
    assert [r["_config"]["policy"]["token_budget"] for r in runs[1:]] == [128, 2048]


def test_slo_scale_multiplies_every_target(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, [{"grid": {"slo_scale": [0.5, 2]}}])
    assert [r["_config"]["slo"]["default"]["ttft_s"] for r in runs] == [0.25, 1.0]
    assert [r["_config"]["slo"]["default"]["tbt_s"] for r in runs] == [0.025, 0.1]


def test_hashes_name_resolved_configs(tmp_path: Path) -> None:
    spec = load_sweep(write_sweep(tmp_path, {
        "base": SMALL["base"], "axes": [{"grid": {"policy.token_budget": [512, 512, 1024]}}]}))
    runs = plan(spec)
    assert len(runs) == 2  # the default budget written out is the same run
    again = plan(load_sweep(write_sweep(tmp_path, SMALL | {"axes": SMALL["axes"]}, "b.yaml")))
    assert len({r.run_hash for r in again}) == 8
    assert required_policies(tmp_path / "b.yaml") == ["orca", "sarathi", "vllm"]


@pytest.mark.parametrize("axes, match", [
    ([{"grid": {"workload.rate_scal": [1]}}], "workload: unknown key 'rate_scal'"),
    ([{"grid": {"rate_scale": [1]}}], "axes\\[0\\].grid: unknown axis key 'rate_scale'"),
    ([{"grid": {"seed": []}}], "axes\\[0\\].grid.seed: expected a non-empty list"),
    ([{"grid": {"seed": 3}}], "axes\\[0\\].grid.seed: expected a non-empty list"),
    ([{"zip": {"seed": [1, 2], "workload.rate_scale": [1]}}], "zip: lists differ in length"),
    ([{"cases": []}], "axes\\[0\\].cases: expected a non-empty list"),
    ([{"grid": {"policy.name": ["nope"]}}], "unknown policy 'nope'"),
    ([{"grid": {"slo_scale": [-1]}}], "slo_scale: expected a positive number"),
    ([{}], "axes\\[0\\]: expected a mapping"),
])
def test_bad_axes_are_input_errors_naming_file_and_key(tmp_path: Path, axes: Any, match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        _sweep(tmp_path, axes)
    assert "sweep.yaml" in str(err.value)


@pytest.mark.parametrize("text, match", [
    ("axes: [grid: {seed: [1]\n", "invalid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping at the top level"),
    ("axis: []\n", "unknown key 'axis'"),
    ("search: {hi: 0}\n", "search"),
    ("plots: [histogram]\n", "plots\\[0\\]"),
])
def test_bad_sweep_files_exit_2_and_write_nothing(tmp_path: Path, text: str, match: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match=match):
        load_sweep(write_sweep(tmp_path, text))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servesim: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_results_table_is_complete_deterministic_and_resumable(tmp_path: Path) -> None:
    spec = load_sweep(write_sweep(tmp_path, SMALL))
    first = run_sweep(spec, tmp_path / "a", progress=False)
    assert (first.planned, first.ran) == (8, 8)
    r = first.results
    assert list(r.run_hash) == [x.run_hash for x in plan(spec)]
    assert set(r.status) == {"ok"} and (r.completed == 24).all()
    assert {"p99_ttft_ms", "p99_itl_ms", "slo_attainment", "policy.token_budget", "wall_s",
            "tokens_per_s_per_gpu", "variant"} <= set(r.columns)
    assert run_sweep(spec, tmp_path / "a", progress=False).ran == 0  # nothing is redone
    (tmp_path / "a" / "runs" / f"{r.run_hash[3]}.json").unlink()
    assert run_sweep(spec, tmp_path / "a", progress=False).ran == 1
    again = pd.read_parquet(tmp_path / "a" / "results.parquet")
    pd.testing.assert_frame_equal(stable(again), stable(r))
    other = run_sweep(spec, tmp_path / "b", progress=False).results
    pd.testing.assert_frame_equal(stable(other), stable(r))


def test_a_failed_run_is_recorded_and_does_not_stop_the_sweep(tmp_path: Path) -> None:
    data = copy.deepcopy(SMALL)
    data["axes"] = [{"grid": {"engine.max_model_len": [64, 8192]}}]
    done = run_sweep(load_sweep(write_sweep(tmp_path, data)), tmp_path / "o", progress=False)
    assert list(done.results.status) == ["failed", "ok"]
    assert "exceeds what the engine can ever hold" in done.results.error.iloc[0]
    assert done.results.error.iloc[1] == ""


def test_search_reports_goodput_and_capacity_with_rates_tried(tmp_path: Path) -> None:
    data = {"base": SMALL["base"], "axes": [{"grid": {"policy.name": ["vllm", "sarathi"]}}],
            "search": {"lo": 1, "hi": 64, "rel_tol": 0.25}}
    done = run_sweep(load_sweep(write_sweep(tmp_path, data)), tmp_path / "o", progress=False)
    s = done.search
    assert s is not None and list(s.criterion) == ["goodput", "capacity"] * 2
    assert (s.rates_tried.str.startswith("1:")).all() and (s.num_probes >= 1).all()
    assert set(done.results.kind) == {"grid", "search"}
    assert pd.read_parquet(tmp_path / "o" / "search.parquet").equals(s)


def _workers(pid: int) -> list[int]:
    """Process-pool workers (spawned children) of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if stat.rsplit(")", 1)[1].split()[1] == str(pid) and b"spawn_main" in cmd:
            out.append(int(entry.name))
    return out


def test_resume_after_a_worker_is_killed_mid_sweep(tmp_path: Path) -> None:
    data = copy.deepcopy(SMALL)
    data["base"]["workload"]["max_requests"] = 150
    data["axes"][0] = {"grid": {"workload.rate_scale": [2, 4, 8, 16]}}
    path, out = write_sweep(tmp_path, data), tmp_path / "o"
    cmd = [sys.executable, "-m", "servesim.cli", "sweep", str(path), "--out", str(out),
           "--workers", "2", "--no-plots"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list((out / "runs").glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _workers(proc.pid)
    assert victims, "no worker to kill"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    records = list((out / "runs").glob("*.json"))
    # 14 of 16 runs were still to do when the kill landed, so the sweep must have stopped.
    assert proc.returncode == 1 and "run the same command again to resume" in err
    assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
    before = {p.name: p.stat().st_mtime_ns for p in records}
    assert main(cmd[3:]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(after) == 16 and all(after[k] == v for k, v in before.items())
    assert not list((out / "runs").glob(".*"))
    fresh = run_sweep(load_sweep(path), tmp_path / "fresh", workers=1, progress=False).results
    pd.testing.assert_frame_equal(stable(pd.read_parquet(out / "results.parquet")), stable(fresh))
