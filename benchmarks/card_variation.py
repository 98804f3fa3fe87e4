"""Two profiles of the same model and grid taken on two GPUs of one kind, side by side: how far
one card's times are from the other's, per kind of measurement (CPU only).

    PYTHONPATH=. python benchmarks/card_variation.py A_DIR B_DIR [--out FILE.json]

For every point both profiles timed (same table, operator or pass shape, SM count, co-runner),
the ratio B / A of their median times; printed per group (whole-GPU operators by kind, operators
on partitions, decode-only passes, passes with a prompt) as the median ratio and its 5th-95th
percentile range. A profile taken on one card and used to predict another carries this much
error before any modelling error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.sim.profile_report import kind_of

_OP_KEYS = ["op", "a", "b", "c"]
_PASS_KEYS = ["prefill_tokens", "prefill_prefix", "num_decodes", "decode_context", "max_decode_context",
              "sms", "corunner_decodes", "corunner_context", "corunner_sms", "corunner_prompt"]


def _ratios(a: Path, b: Path) -> pd.DataFrame:
    """One row per point timed in both: its group and B / A."""
    frames = []
    for table, keys in (("ops", _OP_KEYS), ("sm_shares", [*_OP_KEYS, "sms"]), ("passes", _PASS_KEYS)):
        left, right = (pd.read_parquet(d / f"{table}.parquet") for d in (a, b))
        keys = [k for k in keys if k in left and k in right]
        left, right = (f.assign(**{k: f[k].astype(str) for k in keys}) for f in (left, right))
        both = left.merge(right, on=keys, suffixes=("_a", "_b")).dropna(subset=["median_us_a", "median_us_b"])
        if table == "ops":
            group = "whole GPU: " + both.op.map(kind_of)
        elif table == "sm_shares":
            group = "partitions: " + both.op.map(kind_of)
        else:
            prompt = both.prefill_tokens.str.strip() != ""
            whole = both.sms.isin(["nan", "None", "132", "132.0"])
            group = np.where(prompt, "passes with a prompt", "decode-only passes") + \
                np.where(whole, " (whole GPU)", " (partitions)")
        frames.append(pd.DataFrame({"group": group, "ratio": both.median_us_b / both.median_us_a}))
    return pd.concat(frames, ignore_index=True)


def summary(a: Path, b: Path) -> list[dict[str, object]]:
    rows = []
    for group, part in _ratios(a, b).groupby("group", sort=True):
        r = part.ratio.to_numpy(float)
        rows.append({"group": group, "points": len(r), "median": round(float(np.median(r)), 4),
                     "p5": round(float(np.percentile(r, 5)), 4), "p95": round(float(np.percentile(r, 95)), 4)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--out")
    args = parser.parse_args()
    for d in (args.a, args.b):
        if not (d / "meta.json").exists():
            print(f"card_variation.py: {d}: no profile (meta.json) there", file=sys.stderr)
            return 2
    metas = [json.loads((d / "meta.json").read_text()) for d in (args.a, args.b)]
    if metas[0]["model"] != metas[1]["model"] or metas[0]["gpu"] != metas[1]["gpu"]:
        print("card_variation.py: the two profiles are of different models or GPU kinds", file=sys.stderr)
        return 2
    rows = summary(args.a, args.b)
    print(f"B / A: B = {args.b} ({metas[1]['date']}), A = {args.a} ({metas[0]['date']})")
    print("| points | group | median | p5-p95 |\n|---|---|---:|---|")
    for r in rows:
        print(f"| {r['points']} | {r['group']} | {r['median']:.3f} | {r['p5']:.3f}-{r['p95']:.3f} |")
    if args.out:
        result = {"a": str(args.a), "b": str(args.b), "a_date": metas[0]["date"], "b_date": metas[1]["date"],
                  "command": "PYTHONPATH=. python benchmarks/card_variation.py A_DIR B_DIR", "groups": rows}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
