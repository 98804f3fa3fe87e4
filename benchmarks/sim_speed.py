"""Simulator speed: simulated seconds per wall-clock second and peak RSS on the whole Azure
conversation trace (19,366 requests over 3,502 s), Llama-3.1-8B / H200 / sarathi (budget 512),
roofline or the shipped H200 profile. Prints one JSON line; `--out FILE` also writes it.

    python benchmarks/sim_speed.py [--policy sarathi] [--cost-model roofline|profile] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

from servesim.config import from_mapping
from servesim.runner import run


def measure(policy: str, repeat: int, cost_model: str = "roofline") -> dict[str, object]:
    raw = {
        "model": "llama-3.1-8b",
        "cost_model": {"kind": cost_model},
        "workload": {"trace": "azure_conv"},
        "policy": {"name": policy, **({"token_budget": 512} if policy == "sarathi" else {})},
    }
    config = from_mapping(raw, "benchmarks/sim_speed.py")
    walls, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run(config)
        walls.append(time.perf_counter() - started)
    assert out is not None
    wall = sorted(walls)[len(walls) // 2]
    simulated = out.summary["duration"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {
        "benchmark": "sim_speed",
        "trace": "azure_conv (19,366 requests)",
        "policy": policy,
        "cost_model": cost_model,
        "requests": out.summary["num_requests"],
        "completed": out.summary["completed"],
        "iterations": out.summary["num_iterations"],
        "simulated_s": round(simulated, 1),
        "wall_s_median": round(wall, 2),
        "wall_s_all": [round(w, 2) for w in walls],
        "speedup_x_real_time": round(simulated / wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", default="sarathi")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cost-model", default="roofline", choices=["roofline", "profile"])
    parser.add_argument("--out")
    args = parser.parse_args()
    result = measure(args.policy, args.repeat, args.cost_model)
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
