"""Where the committed validation runs' passes leave their price, pooled over runs (no GPU):
reads each run folder's step table (`steps.csv.gz`: every measured pass beside the cost model's
price for that same pass) and report, and prints three tables.

  host     the host's time around each pass (busy - GPU span: scheduling, KV blocks, inputs)
           less its price, at the reference host's speed (divided by the run's priced host
           factor, so runs on fast and slow hosts pool), by policy, kind of step (decode-only,
           prompt-only, mixed) and prompt tokens: the median residual in us, and the median
           host time measured.
  lanes    SM-partitioned runs (Nexus): each prompt pass's GPU span, predicted / measured - 1,
           by its SMs and by the mean batch of the decode passes that overlapped it on the
           other partition (the step table prices a pass beside the co-runner running at its
           start; the overlap is what it actually ran beside).
  decodes  decode-only passes that started alone, GPU span predicted / measured - 1, by SMs
           and batch (where 50 or more ran): the runtime replays them from graphs captured at
           GRAPH_SIZES rows, the profile's passes table holds a few batches between which the
           price is interpolated.

    python benchmarks/step_residuals.py benchmarks/results/h200-validate*/ [--out FILE]

A run folder is any folder under the arguments holding steps.csv.gz and report.json; runs
without a host calibration (no priced factor) are left out of the host table.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TOKEN_BINS = [-1, 0, 256, 512, 1024, 2048, 4096, 1 << 20]
DECODE_BINS = [-1, 0.5, 2, 4, 8, 16, 32, 64, 256]


def run_folders(roots: list[Path]) -> list[Path]:
    found = {p.parent for root in roots for p in root.rglob("steps.csv.gz")}
    return sorted(f for f in found if (f / "report.json").is_file())


@functools.cache
def _run(folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A run folder's report and step table, read once for all three tables."""
    return json.loads((folder / "report.json").read_text()), pd.read_csv(folder / "steps.csv.gz")


def _policy(report: dict[str, Any]) -> str:
    policy = report["policy"]
    return str(policy if isinstance(policy, str) else policy.get("name"))


def host_residuals(folders: list[Path]) -> pd.DataFrame:
    frames = []
    for folder in folders:
        report, steps = _run(folder)
        factor = report.get("host_calibration", {}).get("priced_factor")
        if factor is None or _policy(report) == "nexus":
            continue
        measured = (steps.busy_s - steps.gpu_s) / factor
        priced = (steps.predicted_s - steps.predicted_gpu_s) / factor
        kind = np.where(steps.num_prefills == 0, "decode", np.where(steps.num_decodes == 0, "prompt", "mixed"))
        frames.append(pd.DataFrame({"policy": _policy(report), "kind": kind, "tokens": steps.prefill_tokens,
                                    "residual_us": 1e6 * (measured - priced), "host_us": 1e6 * measured}))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    table["prompt_tokens"] = pd.cut(table.tokens, TOKEN_BINS)
    out = table.groupby(["policy", "kind", "prompt_tokens"], observed=True).agg(
        steps=("residual_us", "size"), residual_us=("residual_us", "median"), host_us=("host_us", "median"))
    return out.round(1).reset_index()


def lane_errors(folders: list[Path]) -> pd.DataFrame:
    frames = []
    for folder in folders:
        steps = _run(folder)[1]
        if "partition" not in steps or not (steps.partition == 1).any():
            continue
        decode = steps[steps.partition == 1]
        starts, ends, batch = decode.start_s.to_numpy(), (decode.start_s + decode.busy_s).to_numpy(), \
            decode.num_decodes.to_numpy()
        prompts = steps[(steps.partition == 0) & (steps.prefill_tokens > 0)]
        beside = []
        for start, busy in zip(prompts.start_s, prompts.busy_s, strict=True):
            overlap = (starts < start + busy) & (ends > start)
            beside.append(float(batch[overlap].mean()) if overlap.any() else 0.0)
        frames.append(pd.DataFrame({"sms": prompts.sms.astype(int), "decodes_beside": beside,
                                    "error": prompts.predicted_gpu_s / prompts.gpu_s - 1}))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    table["decodes_beside"] = pd.cut(table.decodes_beside, DECODE_BINS)
    out = table.groupby(["sms", "decodes_beside"], observed=True).agg(
        passes=("error", "size"), median_error=("error", "median"), mean_error=("error", "mean"))
    return out.round(4).reset_index()


def decode_errors(folders: list[Path], min_passes: int = 50) -> pd.DataFrame:
    """Decode-only passes running alone (no co-runner at their start), GPU span predicted /
    measured - 1, by SMs (0: the whole GPU) and batch, where at least `min_passes` ran."""
    frames = []
    for folder in folders:
        steps = _run(folder)[1]
        alone = (steps.num_prefills == 0) & (steps.num_decodes > 0)
        if "corunner" in steps:
            alone &= steps.corunner < 0
        part = steps[alone]
        sms = part.sms.astype(int) if "sms" in part else pd.Series(0, index=part.index)
        frames.append(pd.DataFrame({"sms": sms, "decodes": part.num_decodes.astype(int),
                                    "error": part.predicted_gpu_s / part.gpu_s - 1,
                                    "gpu_ms": 1e3 * part.gpu_s}))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True).groupby(["sms", "decodes"]).agg(
        passes=("error", "size"), median_error=("error", "median"), median_gpu_ms=("gpu_ms", "median"))
    return out[out.passes >= min_passes].round(4).reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write both tables as JSON")
    args = parser.parse_args(argv)
    folders = run_folders(args.roots)
    if not folders:
        print(f"no run folders (steps.csv.gz beside report.json) under {', '.join(map(str, args.roots))}",
              file=sys.stderr)
        return 2
    host, lanes, decodes = host_residuals(folders), lane_errors(folders), decode_errors(folders)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(f"{len(folders)} runs\n\nhost: measured - priced around each pass, us at the reference host's speed")
        print(host.to_string(index=False) if not host.empty else "(no host-calibrated runs)")
        print("\nlanes: prompt passes' GPU span, predicted / measured - 1")
        print(lanes.to_string(index=False) if not lanes.empty else "(no partitioned runs)")
        print("\ndecodes: decode-only passes alone, GPU span predicted / measured - 1 (sms 0: whole GPU)")
        print(decodes.to_string(index=False))
    if args.out:
        def rows(table: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(table.astype({c: str for c in table.columns if str(table[c].dtype) == "category"})
                              .to_json(orient="records"))
        args.out.write_text(json.dumps({"runs": [str(f) for f in folders], "host": rows(host),
                                        "lanes": rows(lanes), "decodes": rows(decodes)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
