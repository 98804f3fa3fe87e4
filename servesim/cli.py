"""The `servesim` command. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from servesim import __version__, plots
from servesim.config import load_config, to_dict
from servesim.errors import InputError
from servesim.models.arch import list_models, load_model
from servesim.outputs import write_json, write_parquet, write_text, write_yaml
from servesim.policies import REGISTRY
from servesim.profiler.options import add_profile_arguments
from servesim.runner import run
from servesim.sim import profile_report
from servesim.sim.hardware import get_gpu, list_gpus
from servesim.sim.profile_tables import shipped_profiles
from servesim.sim.profiled import ProfiledCostModel
from servesim.sim.trace_export import chrome_trace
from servesim.sweep import SweepInterrupted, load_sweep, read_plot_specs, run_sweep

SUMMARY_ROWS = (
    ("cost model", lambda s: f"{s['cost_model']} ({s['cost_model_extrapolations']} lookups off the profile grid)"
     if s["cost_model"] == "profile" else s["cost_model"]),
    ("completed / rejected", lambda s: f"{s['completed']} / {s['failed']}"),
    ("duration (s)", lambda s: f"{s['duration']:.1f}"),
    ("request throughput (req/s)", lambda s: f"{s['request_throughput']:.3f}"),
    ("output throughput (tok/s)", lambda s: f"{s['output_throughput']:.1f}"),
    ("TTFT mean / p50 / p99 (ms)", lambda s: f"{s['mean_ttft_ms']:.1f} / {s['median_ttft_ms']:.1f} / {s['p99_ttft_ms']:.1f}"),
    ("TPOT mean / p50 / p99 (ms)", lambda s: f"{s['mean_tpot_ms']:.2f} / {s['median_tpot_ms']:.2f} / {s['p99_tpot_ms']:.2f}"),
    ("ITL p50 / p99 / max (ms)", lambda s: f"{s['median_itl_ms']:.2f} / {s['p99_itl_ms']:.2f} / {s['max_itl_ms']:.2f}"),
    ("E2E latency p50 / p99 (ms)", lambda s: f"{s['median_e2el_ms']:.1f} / {s['p99_e2el_ms']:.1f}"),
    ("SLO attainment", lambda s: f"{s['slo_attainment']:.3f}"),
    ("request goodput (req/s)", lambda s: f"{s['request_goodput']:.3f}"),
    ("preemptions", lambda s: f"{s['preemptions']}"),
    ("KV peak usage", lambda s: f"{s['kv_peak_usage']:.3f}"),
)


def cmd_simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    started = time.perf_counter()
    result = run(config, base_dir=Path(args.config).resolve().parent)
    wall_s = time.perf_counter() - started
    write_parquet(out / "requests.parquet", result.requests)
    write_yaml(out / "config.resolved.yaml", to_dict(config))
    write_json(out / "summary.json", result.summary)
    if args.timeline:
        write_json(Path(args.timeline), chrome_trace(result.result, f"{config.policy.name} {config.model}"))
    print(f"servesim {config.policy.name} on {config.model} / {config.hardware.gpu}: "
          f"{result.summary['num_requests']} requests, simulated {result.summary['duration']:.1f} s "
          f"in {wall_s:.1f} s wall")
    for label, fmt in SUMMARY_ROWS:
        print(f"  {label:<28} {fmt(result.summary)}")
    print(f"wrote {out}/summary.json, requests.parquet, config.resolved.yaml")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    profiles = shipped_profiles()
    print(f"{'model':<16} {'layers':>6} {'params (B)':>10} {'moe':>9}  {'KV bytes/token':>14}  profiles")
    for name in list_models():
        arch = load_model(name)
        moe = f"{arch.num_experts}x{arch.num_experts_per_tok}" if arch.is_moe else "-"
        gpus = ",".join(g for g, m in profiles if m == name) or "-"
        print(f"{name:<16} {arch.num_layers:>6} {arch.params / 1e9:>10.2f} {moe:>9}  "
              f"{arch.kv_bytes_per_token:>14}  {gpus}")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    for name, cls in REGISTRY.items():
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name:<12} {doc[0] if doc else ''}")
        for f in cls.Params.__dataclass_fields__.values():
            print(f"    {f.name} = {f.default!r}: {f.metadata.get('help', '')}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    started = time.perf_counter()
    try:
        done = run_sweep(spec, out, args.executor, args.workers, args.retry_failed)
    except SweepInterrupted as e:
        print(f"servesim: sweep stopped: {e}", file=sys.stderr)
        return 1
    failed = int((done.results.status != "ok").sum()) if len(done.results) else 0
    print(f"sweep {spec.name}: {done.planned} points, {done.ran} runs simulated, {failed} failed, "
          f"{time.perf_counter() - started:.1f} s wall; wrote {out}/results.parquet")
    if done.search is not None:
        for row in done.search.itertuples():
            print(f"  {row.criterion:<8} {row.variant:<40} rate_scale {row.rate_scale} "
                  f"({row.request_rate:.2f} req/s) {row.censored}  tried: {row.rates_tried}")
    if spec.plots and not args.no_plots:
        written, notes = plots.draw(out, [(p.kind, p.options) for p in spec.plots], spec.name)
        print("\n".join([f"  {n}" for n in notes] + [f"wrote {len(written)} figure files in {out}/figures"]))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if not (out / "results.parquet").exists():
        raise InputError(f"{out}: no results.parquet (run `servesim sweep` with --out {out} first)")
    kinds, title = read_plot_specs(out)
    written, notes = plots.draw(out, kinds, title, Path(args.out) if args.out else None)
    print("\n".join([f"  {n}" for n in notes] + [f"wrote {len(written)} figure files"]))
    return 0


def _gpu_module(name: str, command: str) -> Any:
    """Import a module that needs torch and triton. They are an optional dependency (the `gpu`
    extra) that only `validate` and `profile` use, so they are loaded here, on demand, and the
    rest of servesim works without them."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise InputError(f"{command} needs torch and triton (pip install -e '.[gpu]'): {e}") from None


def cmd_validate(args: argparse.Namespace) -> int:
    validation = _gpu_module("servesim.validate", "validate")
    config = load_config(args.config, args.set or [])
    out = Path(args.out)
    result = validation.validate(config, Path(args.config).resolve().parent, args.device,
                                 args.max_kv_blocks, host_reference=args.host_reference,
                                 sensitivity=args.sensitivity)
    write_json(out / "report.json", result.report)
    write_text(out / "report.md", validation.report_markdown(result.report))
    write_parquet(out / "requests_measured.parquet", result.measured)
    write_parquet(out / "requests_predicted.parquet", result.predicted)
    write_parquet(out / "steps.parquet", result.steps)
    write_yaml(out / "config.resolved.yaml", to_dict(config))
    plots.plot_validation_cdf(result.measured, result.predicted, result.measured_itl_s,
                              result.predicted_itl_s, out / "cdf",
                              f"{config.policy.name} on {config.model}: runtime vs simulator")
    print(validation.report_markdown(result.report))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    profiler = _gpu_module("servesim.profiler.run", "profile")
    mode = "tiny" if args.device == "cpu" else ("quick" if args.quick else "full")
    if args.missing and not (args.ops_only or args.passes_only):
        raise InputError("--missing goes with --ops-only OP[,OP] or --passes-only")
    if args.runtime_passes_only:
        for model in args.model:
            meta = profiler.add_runtime_passes(model, Path(args.out), mode, args.device)
            runtime = meta["runtime_passes"]
            print(f"{meta['model']} on {meta['gpu']}: {runtime['rows']} runtime prompt passes in "
                  f"{runtime['seconds']:.0f} s -> {Path(args.out) / meta['gpu'] / meta['model']}")
        return 0
    if args.passes_only:
        for model in args.model:
            meta = profiler.add_passes(model, Path(args.out), mode, args.device, missing=args.missing)
            done = meta["passes_retimed"][-1]
            print(f"{meta['model']} on {meta['gpu']}: {done['rows']} passes in {done['seconds']:.0f} s -> "
                  f"{Path(args.out) / meta['gpu'] / meta['model']}")
        return 0
    if args.ops_only:
        for model in args.model:
            meta = profiler.retime_ops(model, Path(args.out), mode, args.device, args.ops_only.split(","),
                                       missing=args.missing)
            done = meta["retimed"][-1]
            print(f"{meta['model']} on {meta['gpu']}: {done['rows']} points of {','.join(done['ops'])} in "
                  f"{done['seconds']:.0f} s -> {Path(args.out) / meta['gpu'] / meta['model']}")
        return 0
    metas = profiler.profile_models(args.model, Path(args.out), mode, args.device, args.validate,
                                    args.warm_workers)
    for model, meta in zip(args.model, metas, strict=False):
        where = Path(args.out) / meta["gpu"] / meta["model"]
        print(f"{meta['model']} on {meta['gpu']}: {meta['profile_seconds']:.0f} s -> {where}")
        if args.validate and meta["gpu"] in list_gpus():
            rep = profile_report.report(ProfiledCostModel(load_model(model), get_gpu(meta["gpu"]), where))
            write_json(where / "validation_report.json", rep)
            write_text(where / "validation_report.md", profile_report.markdown(rep))
            print(profile_report.markdown(rep))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servesim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("simulate", help="replay a workload under a policy on a simulated GPU")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="output directory (default runs/<config name>)")
    p.add_argument("--timeline", metavar="FILE",
                   help="also write a Chrome/Perfetto trace of the simulated GPU (JSON)")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("sweep", help="run a sweep of configurations into a results table")
    p.add_argument("sweep", help="sweep file (YAML)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local process pool, or Ray (RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs")
    p.add_argument("--out", help="output directory (default runs/<sweep name>)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--no-plots", action="store_true", help="skip the sweep's plots")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("plot", help="draw the figures of a sweep directory")
    p.add_argument("dir", help="a sweep's output directory")
    p.add_argument("--out", help="figure directory (default DIR/figures)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("validate", help="on a GPU: measure the real runtime and compare the simulator")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (tiny models)")
    p.add_argument("--max-kv-blocks", type=int, help="cap the KV cache (both sides use the cap)")
    p.add_argument("--host-reference", type=Path, metavar="FILE",
                   help="the benchmarks/runtime_overhead.py result the config's host constants come from: "
                        "time the host against it just before and just after serving; the runtime serves "
                        "with the constants scaled by the ratio before, the prediction is priced at the "
                        "faster of the two")
    p.add_argument("--sensitivity", type=float, default=0.0, metavar="D",
                   help="also predict with every price (the profile's GPU times, the host constants) "
                        "times 1-D and 1+D: each metric's error at both (report.md's last column)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("profile", help="on a GPU: time every operator of a model into a profile")
    add_profile_arguments(p)
    p.set_defaults(func=cmd_profile)
    sub.add_parser("models", help="list built-in models and their shipped profiles").set_defaults(func=cmd_models)
    sub.add_parser("policies", help="list policies and their knobs").set_defaults(func=cmd_policies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except InputError as e:
        print(f"servesim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("servesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `servesim ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
