"""Simulated vs measured, side by side in one run: the real runtime (servesim's kernels on the
GPU) and the simulator serve the same trace under the same policy objects; prints the error of
every latency percentile and writes report.json / report.md / per-request CSVs / the ITLs /
the runtime's step table (with the cost model's prediction per step) to --out.

    PYTHONPATH=. python benchmarks/validate_runtime.py examples/validate_sarathi.yaml --out DIR
    PYTHONPATH=. python benchmarks/validate_runtime.py --matrix examples/validate_matrix.yaml --out DIR
    python benchmarks/validate_runtime.py --matrix examples/validate_matrix.yaml --measured DIR --out DIR2
    ... --host benchmarks/results/h200-runtime-overhead.json   (host constants of that file)

With --measured, --host prices each run's host timings (before and after it served) against that
file's loops instead of the file the run was calibrated against.

--matrix runs every policy of a matrix file at every load (a fraction of that policy's
capacity) in one process, sharing the model, its compiled kernels and graphs; each run goes to
DIR/<policy>-load<percent>/. --measured predicts again, on a CPU, for measurements already
taken (another cost model or host constants in the configs): the measured side is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from runtime_overhead import graph_issue_us, per_seq_fit  # (benchmarks/, beside this script)

from servesim.config import Config, load_config

GZIP = {"method": "gzip", "mtime": 0}
"""The step tables' compression: no time stamp in the header, so a prediction made again is the
same bytes."""

STEP_FLOATS = "%.9g"
"""The step tables' floats: nine significant digits (0.1 us of a 100 s run's start times, far
below a step's own noise) keep a 30 % run's table at 0.6 MB rather than 1.1 MB (the committed
results travel with every device call, which takes at most 64 MiB), and a table read and
written again is the same bytes."""


def _matrix(path: Path, sets: list[str]) -> dict[str, Config]:
    """Run name -> config of every (policy, load) of a matrix file."""
    spec = yaml.safe_load(path.read_text())
    runs = {}
    for policy, file in spec["configs"].items():
        for load in spec["loads"]:
            scale = round(load * spec["capacity"][policy], 4)
            extra = [f"workload.rate_scale={scale}", f"workload.duration_s={round(wall_s(spec, load) * scale, 2)}"]
            runs[f"{policy}-load{round(100 * load)}"] = load_config(str(path.parent / file), [*extra, *sets])
    return runs


def wall_s(spec: dict[str, Any], load: float) -> float:
    """Seconds of arrivals a matrix file's run at `load` replays: `wall_s`, or for a load that
    `wall_s_by_load` names, that (the lightest load's runs hold the fewest requests, and the
    median TTFT of a few dozen has a 95 % interval of +-10-15 %)."""
    return float(spec.get("wall_s_by_load", {}).get(load, spec["wall_s"]))


def _write(out: Path, report: dict[str, Any], result: Any) -> None:
    from servesim.validate import report_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    if result is not None:
        result.measured.to_csv(out / "measured_requests.csv", index=False)
        np.savez_compressed(out / "itl.npz", measured=result.measured_itl_s, predicted=result.predicted_itl_s)
        result.steps.to_csv(out / "steps.csv.gz", index=False, compression=GZIP, float_format=STEP_FLOATS)
    print(report_markdown(report), flush=True)


def _measure(runs: dict[str, Config], base: Path, out: Path, args: argparse.Namespace) -> None:
    from servesim.profiler.provenance import git_commit
    from servesim.validate import validate

    commit = git_commit()[:7]  # SERVESIM_COMMIT where set: a copy of the tree may carry a stale .git
    models: dict[tuple[Any, ...], Any] = {}
    for name, config in runs.items():
        started = time.perf_counter()
        try:
            result = validate(config, base, args.device, args.max_kv_blocks, models=models,
                              host_reference=Path(args.host) if args.calibrate_host else None)
        except Exception:  # noqa: BLE001 - one broken run must not cost the others theirs
            traceback.print_exc()
            continue
        report = {**result.report, "commit": commit, "wall_s": time.perf_counter() - started,
                  "config": args.matrix or args.config, "run": name, "overrides": args.set}
        _write(out / name if len(runs) > 1 else out, report, result)
    if len(runs) > 1:
        _summary(out)


def _predict_again(runs: dict[str, Config], base: Path, measured: Path, out: Path,
                   host: Path | None = None, sensitivity: float = 0.0) -> None:
    from servesim.plots import plot_validation_cdf
    from servesim.validate import repredict

    for name, config in runs.items():
        folder = measured / name if len(runs) > 1 else measured
        # The device's own report (its measured side) if kept beside a re-prediction.
        source = next((f for f in (folder / "report.device.json", folder / "report.json") if f.exists()), None)
        if source is None:
            print(f"{name}: no measurement in {folder}, skipped", flush=True)
            continue
        report = json.loads(source.read_text())
        steps_file = next(f for f in (folder / "steps.csv.gz", folder / "steps.csv") if f.exists())
        steps = pd.read_csv(steps_file, dtype={"chunks": str, "prefixes": str, "layers": str})
        measured_itl = np.load(folder / "itl.npz")["measured"]
        measured_requests = pd.read_csv(folder / "measured_requests.csv")
        again = repredict(config, base, report, steps, measured_itl, measured_requests, host, sensitivity)
        target = out / name if len(runs) > 1 else out
        target.mkdir(parents=True, exist_ok=True)
        again.steps.to_csv(target / "steps.csv.gz", index=False, compression=GZIP, float_format=STEP_FLOATS)
        _write(target, again.report, None)
        plot_validation_cdf(measured_requests, again.predicted, measured_itl, again.predicted_itl_s, target / "cdf",
                            f"{name} on {config.model}: runtime vs simulator")
    _summary(out)


SUMMARY = ("median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "median_tpot_ms",
           "request_throughput")


def _summary(out: Path) -> None:
    """summary.md: the relative error of the headline metrics for every run under `out`."""
    lines = ["| run | requests | " + " | ".join(SUMMARY) + " | decode steps | steps with prefill "
             "| per-request TTFT (median, mean) | decode steps' host, measured / priced "
             "| host constants (us: launch, step, per seq, check, check per running seq, gap, graph issue) "
             "| host speed before / after serving | compiles while serving |",
             "|---|---:|" + "---:|" * (len(SUMMARY) + 4) + "---|---:|---:|"]
    for report_file in sorted(out.glob("*/report.json")):
        r = json.loads(report_file.read_text())
        cells = [f"{100 * r['metrics'][k]['rel_error']:+.1f}%" for k in SUMMARY]
        steps = [f"{100 * r['steps'][k]['median_error']:+.1f}%" if k in r.get("steps", {}) else "-"
                 for k in ("decode_only", "with_prefill")]
        ttft = r.get("paired", {}).get("ttft_s")
        steps.append(f"{100 * ttft['median_error']:+.1f}%, {100 * ttft['mean_error']:+.1f}%" if ttft else "-")
        host_ratio = r.get("steps", {}).get("decode_only", {}).get("host_ratio")
        steps.append(f"{host_ratio:.2f}" if host_ratio is not None else "-")
        cost = r.get("predicted_again", {}).get("cost_model") or {}
        host = ", ".join(f"{cost[k]:g}" for k in ("host_launch_us", "host_step_us", "host_per_seq_us",
                                                    "host_check_us", "host_check_per_seq_us", "host_gap_us",
                                                    "host_graph_issue_us")
                         if k in cost) or "-"
        compiles = r.get("runtime_health", {}).get("jit_compiles", "not counted")
        speed = r.get("host_calibration", {})
        speed_cell = "-" if not speed else f"{speed['factor']:.2f}" + (
            f" / {speed['after']['factor']:.2f}" if "drift" in speed else "")
        lines.append(f"| {report_file.parent.name} | {r['requests']} | " + " | ".join(cells + steps)
                     + f" | {host} | {speed_cell} | {compiles} |")
    lines += ["", "Target cells missed, with the 95 % interval of each error when the run's requests are drawn "
              "again (servesim.validate.error_intervals; an interval that reaches the target means the "
              "sample alone could account for the miss):", ""]
    missed = []
    for report_file in sorted(out.glob("*/report.json")):
        r = json.loads(report_file.read_text())
        for key, bound in TARGETS.items():
            row = r["metrics"][key]
            if abs(row["rel_error"]) > bound:
                ci = row.get("ci95")
                reach = "" if not ci else (f" (interval {100 * ci[0]:+.1f}% .. {100 * ci[1]:+.1f}%: "
                                           + ("reaches" if ci[0] <= bound and ci[1] >= -bound else "does not reach")
                                           + f" the {100 * bound:g} % target)")
                swing = row.get("sensitivity")
                delta = r.get("price_sensitivity", {}).get("delta", 0.0)
                swung = "" if not swing else (f"; with every price x{1 - delta:g} / x{1 + delta:g}: "
                                              f"{100 * swing[0]:+.1f}% / {100 * swing[1]:+.1f}%")
                missed.append(f"- {report_file.parent.name} {key}: {100 * row['rel_error']:+.1f}%{reach}{swung}")
    lines += missed or ["- none"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _summary_figure(out)


TARGETS = {"median_ttft_ms": 0.05, "p99_ttft_ms": 0.10, "median_itl_ms": 0.05, "p99_itl_ms": 0.10}
"""Issue 7's targets: 5 % at p50 and 10 % at p99 of TTFT and ITL."""


def _summary_figure(out: Path) -> None:
    """summary.png / .svg / .points.csv: every run's errors as a grid, green within target."""
    from servesim.plots import plot_validation_matrix

    rows = {}
    for report_file in sorted(out.glob("*/report.json")):
        r = json.loads(report_file.read_text())
        row = {k: r["metrics"][k]["rel_error"] for k in (*TARGETS, "median_tpot_ms")}
        ttft = r.get("paired", {}).get("ttft_s")
        row["per-request TTFT (median)"] = ttft["median_error"] if ttft else float("nan")
        rows[report_file.parent.name] = row
    if rows:
        plot_validation_matrix(pd.DataFrame.from_dict(rows, orient="index"), TARGETS, out / "summary",
                               f"{out.name}: predicted vs measured, error in % (green: within target)")


def host_overrides(measured: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The config overrides (KEY=VALUE) of a runtime_overhead.py result's host constants: those
    of every policy, and those Nexus's partitioned loop sets on top (empty for a file without
    it)."""
    constants = measured["graphed"]
    common = [f"cost_model.{k}={constants[k]}" for k in
              ("host_launch_us", "host_step_us", "host_per_seq_us", "host_check_us", "host_gap_us",
               "host_check_per_seq_us")
              if k in constants]
    full = measured.get("full_decode")
    per_seq = float(constants.get("host_per_seq_us", 0.0))
    if full:  # a file of the runtime with full decode graphs (from 2540a07 on; 2540a07's has no total)
        common += [f"cost_model.host_graph_issue_us={full.get('host_graph_issue_us') or graph_issue_us(full['loops'])}"]
        # Decode-only steps (which set every token gap) replay full graphs: their host time
        # is the full-graph loops' line (the piecewise loops' lies 66-172 us above it; a line
        # through both put host_step_us 34-71 us higher).
        fit = per_seq_fit(full["loops"])
        per_seq = fit["host_per_seq_us"]
        common += [f"cost_model.{k}={v}" for k, v in fit.items()]
    partitioned: list[str] = []
    if "partitioned" in measured:  # Nexus's runtime: one host thread for both partitions
        loop = measured["partitioned"]
        # its launch cost, and (files from the fourteenth session on) its own host time
        # around a step and issue of a decode pass replayed whole
        partitioned = [f"cost_model.{k}={loop[k]}" for k in ("host_launch_us", "host_graph_issue_us") if k in loop]
        around = loop.get("full_decode")
        if isinstance(around, dict):
            partitioned.append(f"cost_model.host_step_us={partitioned_host_step_us(around, full, per_seq)}")
    return common, partitioned


def partitioned_host_step_us(around: dict[str, float], full: dict[str, Any] | None, per_seq: float) -> float:
    """Nexus's host time around a decode step at no sequences: the plain runtime's line (the
    full-graph loops' intercept) plus what the partitioned loop takes over the plain loop of
    the same batch. Each loop set times one batch size at a time, and a single point carries its
    own residual: the plain 32-decode loop lies 110 us above its line, and the partitioned loop's
    32-decode point less 32 slopes (the earlier derivation, 709.7 us) carried it, pricing the
    fifteenth session's Nexus runs' decode-step host at 1.27-1.37x what they measured; the
    difference of the two loops at the same batch cancels it (600.8 us). Without a plain loop of
    that batch, the point less its slopes."""
    total = 1e3 * (around["before_ms"] + around["after_ms"])
    loops = (full or {}).get("loops", {})
    plain = loops.get(f"decode_b{int(around['batch'])}")
    if isinstance(plain, dict) and "host_step_us" in plain:
        return round(per_seq_fit(loops)["host_step_us"] + total - plain["host_step_us"], 1)
    return round(total - per_seq * around["batch"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--matrix")
    parser.add_argument("--out", required=True)
    parser.add_argument("--measured", help="predict again for the measurements in this folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-kv-blocks", type=int)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--policies", help="with --matrix: only these policies (comma-separated)")
    parser.add_argument("--host", help="predict with the host constants of this runtime_overhead.py "
                        "result (its 'graphed' entry; host_step_us and host_per_seq_us fitted over its "
                        "full-decode-graph loops), measured on the same machine")
    parser.add_argument("--sensitivity", type=float, default=0.0, metavar="D",
                        help="with --measured: each metric's error also with every price (GPU and host) "
                        "times 1-D and 1+D (report.json's metrics' 'sensitivity', a column of report.md)")
    parser.add_argument("--calibrate-host", action="store_true",
                        help="with --host: time the host against that file's loops in each run's process "
                        "just before it serves, and scale the host constants by the ratio")
    args = parser.parse_args()
    if args.calibrate_host and not args.host:
        parser.error("--calibrate-host needs --host")
    if args.sensitivity and not args.measured:
        parser.error("--sensitivity needs --measured")
    partitioned: list[str] = []
    if args.host:
        common, partitioned = host_overrides(json.loads(Path(args.host).read_text()))
        args.set += common
    if bool(args.config) == bool(args.matrix):
        parser.error("give a config or --matrix")
    source = Path(args.matrix or args.config)
    runs = _matrix(source, args.set) if args.matrix else {"run": load_config(args.config, args.set)}
    if partitioned:
        again = _matrix(source, args.set + partitioned) if args.matrix \
            else {"run": load_config(args.config, args.set + partitioned)}
        runs = {name: again[name] if config.policy.name == "nexus" else config for name, config in runs.items()}
    if args.policies:
        runs = {name: c for name, c in runs.items() if c.policy.name in args.policies.split(",")}
    base = source.resolve().parent
    if args.measured:
        _predict_again(runs, base, Path(args.measured), Path(args.out), Path(args.host) if args.host else None,
                       args.sensitivity)
    else:
        _measure(runs, base, Path(args.out), args)


if __name__ == "__main__":
    main()
