"""meta.json of a profile: schema version, GPU, clocks, driver, software, commit, date, grid."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
from typing import Any

import pandas as pd
import torch
import triton

from servesim.models.arch import ModelArch
from servesim.models.profile_schema import OP_AXES, SCHEMA_VERSION, gpu_key
from servesim.profiler.grid import SPECS
from servesim.profiler.partitions import Partitions

_SMI_FIELDS = ("clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "driver_version",
               "power.limit", "temperature.gpu")


def device_key(device: torch.device) -> str:
    """'h200' for an NVIDIA H200; 'cpu' for interpreter dry runs."""
    if device.type != "cuda":
        return "cpu"
    return gpu_key(torch.cuda.get_device_name(device))


def git_commit() -> str:
    """SERVESIM_COMMIT if set (the device copy of the tree has no .git), else git's HEAD."""
    if os.environ.get("SERVESIM_COMMIT"):
        return os.environ["SERVESIM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def nvidia_smi() -> dict[str, str]:
    """Clocks (MHz), driver, power limit and temperature as nvidia-smi reports them now."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        values = [v.strip() for v in out.stdout.splitlines()[0].split(",")]
        return dict(zip(_SMI_FIELDS, values, strict=True))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {}


def gpu_serial(smi: int | str | None) -> str:
    """The card's serial number (nvidia-smi's id `smi`: `runtime.clocks.smi_id`); "" if unknown."""
    if smi is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=serial", "--format=csv,noheader", f"--id={smi}"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def meta(arch: ModelArch, mode: str, device: torch.device, commit: str, partitions: Partitions,
         tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    ops = tables["ops"]
    return {
        "schema_version": SCHEMA_VERSION,
        "gpu": device_key(device),
        "gpu_name": props.name if props else "cpu (TRITON_INTERPRET=1)",
        "sm_count": props.multi_processor_count if props else partitions.num_sms,
        "memory_bytes": props.total_memory if props else 0,
        "l2_bytes": getattr(props, "L2_cache_size", 0) if props else 0,
        "nvidia_smi": nvidia_smi() if cuda else {},
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": arch.name,
        "arch": dataclasses.asdict(arch),
        "grid": {"mode": mode, **{k: v for k, v in dataclasses.asdict(SPECS[mode]).items()},
                 "points": {op: int((ops.op == op).sum()) for op in sorted(set(ops.op))},
                 "axes": {op: list(OP_AXES[op]) for op in sorted(set(ops.op))}},
        "tables": {name: len(frame) for name, frame in tables.items()},
        "partition_method": partitions.method,
        "timing": "CUDA events around CUDA-graph replays of G calls (own weights/KV each), "
                  "L2 flushed (256 MB read) before each replay of weight/KV-streaming ops, "
                  "a spin kernel hides host launch time; median with p20/p80 of >= 5 replays",
    }
