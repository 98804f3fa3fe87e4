"""A small sweep shared by the sweep, plot and Ray tests: 3 policies x 2 rates on a 24-request
window of the Azure conversation trace (about 0.1 s a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from servesim.sweep import VOLATILE_COLUMNS

SMALL: dict[str, Any] = {
    "name": "small",
    "base": {
        "workload": {"trace": "azure_conv", "max_requests": 24},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.03, "tbt_s": 0.05},
    },
    "axes": [
        {"grid": {"workload.rate_scale": [4, 16]}},
        {"cases": [
            {"policy.name": "vllm"},
            {"policy.name": "orca", "policy.max_num_seqs": 8},
            {"policy.name": "sarathi", "grid": {"policy.token_budget": [256, 1024]}},
        ]},
    ],
}


def write_sweep(tmp: Path, data: dict[str, Any] | str, name: str = "sweep.yaml") -> Path:
    path = tmp / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def stable(results: pd.DataFrame) -> pd.DataFrame:
    """The results table without the columns that differ between identical sweeps."""
    return results.drop(columns=list(VOLATILE_COLUMNS)).reset_index(drop=True)
