"""Simulated vs measured, side by side in one run: the real runtime (servesim's kernels on the
GPU) and the simulator serve the same trace under the same policy objects; prints the error of
every latency percentile and writes report.json / report.md / per-request CSVs to --out.

    PYTHONPATH=. python benchmarks/validate_runtime.py examples/validate_sarathi.yaml --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from servesim.config import load_config
from servesim.validate import report_markdown, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-kv-blocks", type=int)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    started = time.perf_counter()
    result = validate(config, Path(args.config).resolve().parent, args.device, args.max_kv_blocks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {**result.report, "commit": commit, "wall_s": time.perf_counter() - started,
              "config": args.config, "overrides": args.set}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    result.measured.to_csv(out / "measured_requests.csv", index=False)
    result.predicted.to_csv(out / "predicted_requests.csv", index=False)
    np.savez_compressed(out / "itl.npz", measured=result.measured_itl_s, predicted=result.predicted_itl_s)
    print(report_markdown(report))


if __name__ == "__main__":
    main()
