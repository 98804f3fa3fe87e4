"""Sweep speed: wall time of one 200-configuration sweep (sarathi, 8 token budgets x 5 rate
scales x 5 seeds, 60 s windows of the Azure conversation trace, about 290 requests a run) run
from scratch in-process (1 worker), on a local process pool of 2 workers, and on a local Ray of
2 CPUs; reports the 1 -> 2 worker scaling and checks the three results tables are identical.
Prints one JSON line; `--out FILE` also writes it.

    python benchmarks/sweep_speed.py [--workers 2] [--skip-ray] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from servesim.sweep import VOLATILE_COLUMNS, load_sweep, run_sweep

SWEEP: dict[str, Any] = {
    "name": "bench200",
    "base": {"workload": {"trace": "azure_conv", "duration_s": 60},
             "slo": {"ttft_s": 1.0, "tpot_s": 0.05}},
    "axes": [{"grid": {"policy.token_budget": [128, 256, 512, 768, 1024, 2048, 4096, 8192],
                       "workload.rate_scale": [1, 2, 3, 4, 5], "seed": [0, 1, 2, 3, 4]}}],
}


def timed(tmp: Path, label: str, executor: str, workers: int) -> tuple[float, pd.DataFrame]:
    spec = load_sweep(tmp / "bench200.yaml")
    started = time.perf_counter()
    done = run_sweep(spec, tmp / label, executor=executor, workers=workers, progress=False)
    wall = time.perf_counter() - started
    assert done.ran == 200 and (done.results.status == "ok").all()
    return wall, done.results.drop(columns=list(VOLATILE_COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "bench200.yaml").write_text(yaml.safe_dump(SWEEP))
        one, t1 = timed(tmp, "local1", "local", 1)
        two, t2 = timed(tmp, "local2", "local", args.workers)
        assert t1.equals(t2), "local tables differ"
        result: dict[str, Any] = {
            "configs": 200, "cpus": os.cpu_count(), "python": platform.python_version(),
            "local_1_worker_s": round(one, 2), f"local_{args.workers}_workers_s": round(two, 2),
            "scaling_1_to_n": round(one / two, 2), "per_run_ms_1_worker": round(1000 * one / 200, 1),
        }
        if not args.skip_ray:
            ray_s, t3 = timed(tmp, "ray", "ray", args.workers)
            assert t1.equals(t3), "Ray table differs"
            result[f"ray_local_{args.workers}_cpus_s"] = round(ray_s, 2)
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
