"""GEMM times between the profile's grid points: measured the profiler's way, beside what the
profiled cost model prices there and what a straight line between the two grid points around
it would price.

The quick grid times both sides of a GEMM's wave steps only up to 8 waves
(`profiler.grid.GridSpec.max_waves`); beyond, the cost model interpolates over the tiling's wave
count (`sim.kernel_work.gemm_terms`). Issue 7's serving runs showed where a straight line fails:
1,025-1,400-token prompts priced 3-4 % above their time, the gate-up projection's 9th and 10th
waves (1,153 and 1,281 rows) lying between grid points at 1,059 and 1,314. Rows here: both sides
of the wave steps of each GEMM between ROWS_FROM and ROWS_TO that the shipped grid does not
hold, and a row inside each wave. Prints a table per operator and the error summary; --out
writes the JSON; --measured FILE prices a written JSON again (no GPU).

    PYTHONPATH=. python benchmarks/gemm_steps.py [--models llama-3.1-8b,qwen2.5-32b] --out FILE
    PYTHONPATH=. python benchmarks/gemm_steps.py --measured FILE
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from servesim.models.arch import load_model
from servesim.models.ops import gemm_shapes
from servesim.sim import kernel_work
from servesim.sim.hardware import get_gpu
from servesim.sim.profiled import ProfiledCostModel

ROWS_FROM, ROWS_TO = 1025, 3072
MAX_ROWS_PER_OP = 24
MODELS = ("llama-3.1-8b",)


def off_grid_rows(model: ProfiledCostModel, op: str, sms: int) -> list[int]:
    """Both sides of each wave step of `op` in [ROWS_FROM, ROWS_TO] that the grid lacks, and a
    row inside each wave (at most MAX_ROWS_PER_OP, spread over the range)."""
    n, k = gemm_shapes(model.arch)[op]
    grid = set(model.profile.tables["ops"].query("op == @op").a.astype(int))
    rows: list[int] = []
    prev = kernel_work.gemm_tiling(ROWS_FROM - 1, n, k, sms)
    start = ROWS_FROM
    for m in range(ROWS_FROM, ROWS_TO + 1):
        t = kernel_work.gemm_tiling(m, n, k, sms)
        waves = _waves(m, n, t, sms)
        if t != prev or waves != _waves(m - 1, n, prev, sms):
            rows.append((start + m - 1) // 2)
            if not {m - 1, m} & grid:
                rows += [m - 1, m]
            start = m
        prev = t
    picked = sorted(set(rows) - grid)
    if len(picked) > MAX_ROWS_PER_OP:
        picked = [picked[round(i)] for i in np.linspace(0, len(picked) - 1, MAX_ROWS_PER_OP)]
    return picked


def _waves(m: int, n: int, t: kernel_work.GemmTiling, sms: int) -> int:
    tiles = -(-m // t.block_m) * -(-n // t.block_n)
    return -(-tiles // min(sms, tiles))


def measure(models: tuple[str, ...]) -> list[dict[str, Any]]:
    import torch

    from servesim.profiler.operators import OperatorFactory
    from servesim.profiler.timing import Timer
    device = torch.device("cuda")
    timer = Timer(device, target_us=2000.0, max_reps=20)  # the quick profile's timer
    out = []
    for name in models:
        arch = load_model(name)
        model = ProfiledCostModel(arch, get_gpu("h200"))
        factory = OperatorFactory(arch, device, 16)
        for op in gemm_shapes(arch):
            started = time.perf_counter()
            rows = off_grid_rows(model, op, 132)
            for m in rows:
                build, flush = factory.builder(op, m, 0, 0, None)
                timing = timer.measure(build, flush)
                out.append({"model": name, "op": op, "m": m, **timing.row()})
            factory.free_weights()
            print(f"{name} {op}: {len(rows)} rows in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row priced both ways; per model, the absolute errors' median, p95 and max."""
    models: dict[str, ProfiledCostModel] = {}
    summary: dict[str, Any] = {}
    print("| model | op | rows | measured us | priced (waves) | error | straight line | error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        model = models.get(r["model"]) or models.setdefault(
            r["model"], ProfiledCostModel(load_model(r["model"]), get_gpu("h200")))
        grid = model.profile.tables["ops"].query("op == @r['op']").sort_values("a")
        r["priced_us"] = 1e6 * model.table_seconds(r["op"], (float(r["m"]),))[0]
        r["line_us"] = float(np.interp(r["m"], grid.a, grid.median_us))
        print(f"| {r['model']} | {r['op']} | {r['m']} | {r['median_us']:.1f} | {r['priced_us']:.1f} | "
              f"{r['priced_us'] / r['median_us'] - 1:+.1%} | {r['line_us']:.1f} | {r['line_us'] / r['median_us'] - 1:+.1%} |")
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        for key, label in (("priced_us", "waves"), ("line_us", "straight_line")):
            errs = sorted(abs(r[key] / r["median_us"] - 1) for r in mine)
            summary[f"{name} {label}"] = {"rows": len(errs), "median_pct": round(100 * statistics.median(errs), 2),
                                          "p95_pct": round(100 * float(np.percentile(errs, 95)), 2),
                                          "max_pct": round(100 * errs[-1], 2)}
    print(json.dumps(summary))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--measured", help="a JSON this script wrote: price its rows again, no GPU")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models with shipped profiles")
    args = parser.parse_args()
    if args.measured:
        result = json.loads(Path(args.measured).read_text())
    else:
        import torch
        if not torch.cuda.is_available():
            print("gemm_steps.py: needs a CUDA GPU (or --measured FILE)", file=sys.stderr)
            return 2
        result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "command": f"PYTHONPATH=. python benchmarks/gemm_steps.py --models {args.models} --out FILE",
                  "rows": measure(tuple(args.models.split(",")))}
    result["summary"] = report(result["rows"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
