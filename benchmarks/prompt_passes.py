"""The runtime's whole prompt passes against their price, and what pricing prompt passes from
them does to the validation runs (CPU only: it reads a profile and measured runs).

1. The profile's runtime prompt passes (`servesim profile --runtime-passes-only`, method
   `runtime_graph` and the two kept for comparison) over the operators' sum of the same pass.
2. Every measured run under DIR (validate_runtime.py's folders) predicted again with
   `cost_model.prompt_passes` = ops (the default) and = runtime_graph: per run, the median over
   its requests of predicted / measured - 1 of the time from scheduled to first token, by prompt
   length, and the four headline errors.

    PYTHONPATH=. python benchmarks/prompt_passes.py --measured benchmarks/results/h200-validate \
        [--measured benchmarks/results/h200-validate-2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_runtime as vr  # noqa: E402

from servesim.models.arch import load_model  # noqa: E402
from servesim.models.shapes import BatchShape  # noqa: E402
from servesim.sim.hardware import get_gpu  # noqa: E402
from servesim.sim.profiled import ProfiledCostModel  # noqa: E402
from servesim.validate import repredict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "examples" / "validate_matrix.yaml"
HOSTS = {"vllm": "vllm-layered", "layered": "vllm-layered", "sarathi": "sarathi-layered",
         "flowprefill": "sarathi-layered"}
"""The host constants each policy's runs were predicted with (the matrix folders' README)."""
BUCKETS = (0, 256, 512, 2048, 8192)
HEADLINE = ("median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms")
SETTINGS = ("ops", "runtime_graph", "runtime")
"""`cost_model.prompt_passes` values compared."""


def profile_rows(model: str = "llama-3.1-8b") -> list[dict[str, Any]]:
    cost = ProfiledCostModel(load_model(model), get_gpu("h200"))
    rows = cost.profile.tables["passes"]
    rows = rows[rows.method.astype(str).str.startswith("runtime_")]
    table = rows.pivot(index="prefill_tokens", columns="method", values="median_us")
    out = []
    for q in sorted(table.index, key=int):
        price = cost.step_time(BatchShape((int(q),), (0,), num_logits=1)) * 1e6
        out.append({"tokens": int(q), "price_us": round(price, 1),
                    **{f"{m}_ratio": round(float(table.loc[q, m]) / price, 4) for m in table.columns}})
    return out


def _run(folder: Path, config: Any) -> tuple[dict[str, float], dict[str, float]]:
    report = json.loads((folder / "report.device.json").read_text())
    steps = pd.read_csv(folder / "steps.csv.gz", dtype={"chunks": str, "prefixes": str, "layers": str})
    measured = pd.read_csv(folder / "measured_requests.csv")
    again = repredict(config, MATRIX.parent, report, steps, np.load(folder / "itl.npz")["measured"], measured)
    both = measured.set_index("request_id").join(again.predicted.set_index("request_id"), rsuffix="_p")
    run_s = both.first_token_s - both.first_scheduled_s
    error = (both.first_token_s_p - both.first_scheduled_s_p) / run_s - 1
    bucket = pd.cut(both.num_prompt_tokens, BUCKETS)
    by_length = {str(k): round(100 * v, 2) for k, v in error.groupby(bucket, observed=True).median().items()}
    headline = {k: round(100 * again.report["metrics"][k]["rel_error"], 2) for k in HEADLINE}
    return by_length, headline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measured", action="append", required=True, help="a folder of measured runs")
    parser.add_argument("--out")
    args = parser.parse_args()
    result: dict[str, Any] = {"profile": profile_rows(), "runs": []}
    print("| tokens | price ms | " + " | ".join(k for k in result["profile"][0] if k.endswith("ratio")) + " |")
    for r in result["profile"]:
        print(f"| {r['tokens']} | {r['price_us'] / 1e3:.2f} | "
              + " | ".join(f"{v:.3f}" for k, v in r.items() if k.endswith("ratio")) + " |")
    for setting in SETTINGS:
        for measured in args.measured:
            for policy, host in HOSTS.items():
                common, _ = vr.host_overrides(json.loads(
                    (ROOT / "benchmarks/results/h200-validate" / f"runtime-overhead-{host}.json").read_text()))
                runs = vr._matrix(MATRIX, [*common, f"cost_model.prompt_passes={setting}"])
                for name, config in runs.items():
                    if config.policy.name != policy or not (Path(measured) / name).is_dir():
                        continue
                    by_length, headline = _run(Path(measured) / name, config)
                    result["runs"].append({"setting": setting, "matrix": Path(measured).name, "run": name,
                                           "scheduled_to_first_token": by_length, "headline": headline})
                    print(f"{setting:>13} {Path(measured).name:>16} {name:<19} " + " ".join(
                        f"{k} {v:+.1f}" for k, v in by_length.items()) + " | " + " ".join(
                        f"{v:+.1f}" for v in headline.values()), flush=True)
    frame = pd.DataFrame([{"setting": r["setting"], **r["scheduled_to_first_token"],
                           **r["headline"]} for r in result["runs"]])
    summary = frame.groupby("setting").agg(lambda c: round(float(np.mean(np.abs(c))), 2))
    result["mean_abs"] = summary.to_dict(orient="index")
    result["misses"] = {s: int(sum((abs(r["headline"][k]) > (5 if k.startswith("median") else 10))
                                   for r in result["runs"] if r["setting"] == s for k in HEADLINE))
                        for s in SETTINGS}
    print("mean absolute error (%), by setting:")
    print(summary.to_string())
    print("headline cells outside their target:", result["misses"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
