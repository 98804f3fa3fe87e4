"""The GPU's SM clock while the runtime serves or the profiler times, sampled by `nvidia-smi` in
its own process: a run whose clock sagged (power or thermal capping, another tenant) measures a
slower GPU than the profile's, and its report says so instead of blaming the cost model; a
profile's meta.json records it per phase (operators, held-out shapes, passes, partitions)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any, Self

import numpy as np

FIELDS = "clocks.sm,clocks.max.sm,clocks_event_reasons.active"
# Event reasons that slow the clock down for a reason other than an idle GPU or the
# application's own clock setting (nvidia-smi's bit values).
SLOWING_REASONS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80  # power cap, HW slowdown, SW thermal, HW thermal, HW power brake


class _Sampler:
    """A sampling process (`command`) started on entering the block and stopped on leaving it;
    `lines` are what it printed. No command (None): samples nothing."""

    def __init__(self, command: list[str] | None) -> None:
        self.command = command
        self._proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def __enter__(self) -> Self:
        if self.command is not None:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self.lines = self._proc.communicate(timeout=5)[0].splitlines()


def smi_id(device: Any) -> int | str:
    """nvidia-smi's id of a torch CUDA device: its UUID, which names the same card whatever
    CUDA_VISIBLE_DEVICES maps (a process on the second GPU sees it as index 0); the index
    where torch gives no UUID."""
    import torch

    index = device.index or 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else index


class ClockMonitor(_Sampler):
    """`with ClockMonitor(index) as clocks:` ... `clocks.summary()` after the block."""

    def __init__(self, index: int | str | None, period_ms: int = 200) -> None:
        """`index`: the GPU's nvidia-smi id (`smi_id`); None samples nothing (a run off the GPU)."""
        exe = shutil.which("nvidia-smi")
        super().__init__(None if exe is None or index is None else
                         [exe, f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
                          f"--loop-ms={period_ms}", f"--id={index}"])
        self.index, self.period_ms = index, period_ms

    def summary(self) -> dict[str, Any]:
        return clock_summary(self.lines)


def clock_summary(lines: list[str]) -> dict[str, Any]:
    """Median and minimum SM clock, and the share of samples the driver slowed for power or
    heat, from nvidia-smi's CSV lines (empty when it printed none)."""
    clocks, reasons, max_clock = [], [], 0.0
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 3:
            continue
        try:
            clock, top = float(cells[0]), float(cells[1])
        except ValueError:
            continue
        clocks.append(clock)
        max_clock = max(max_clock, top)
        try:
            reasons.append(int(cells[2], 16))
        except ValueError:
            reasons.append(0)
    if not clocks:
        return {}
    values = np.asarray(clocks)
    slowed = [r & SLOWING_REASONS for r in reasons]
    return {"sm_clock_samples": len(values), "sm_clock_median_mhz": float(np.median(values)),
            "sm_clock_min_mhz": float(values.min()), "sm_clock_max_mhz": max_clock,
            "clock_slowed_share": float(np.mean([s != 0 for s in slowed])),
            "clock_slowed_reasons": f"{int(np.bitwise_or.reduce(slowed)) if slowed else 0:#x}"}


# The host's speed, sampled in its own process: a fixed piece of pure-Python work timed every
# period. A serving loop is host-bound for small decode batches, so a host that slows for a
# few seconds (another tenant, a frequency step) stretches those steps; the cost model holds one
# host constant, measured by benchmarks/runtime_overhead.py, and cannot know.
_HOST_PROBE = """
import sys, time
period = float(sys.argv[1])
while True:
    t = time.perf_counter_ns()
    s = 0
    for i in range(20000):
        s += i
    print(time.perf_counter_ns() - t, flush=True)
    time.sleep(period)
"""
HOST_SLOW_RATIO = 1.25
"""A sample slower than this times the run's fast decile counts as the host slowed."""


class HostMonitor(_Sampler):
    """`with HostMonitor() as host:` ... `host.summary()` after the block."""

    def __init__(self, period_ms: int = 100) -> None:
        super().__init__([sys.executable, "-c", _HOST_PROBE, str(period_ms / 1e3)])
        self.period_ms = period_ms

    def summary(self) -> dict[str, Any]:
        return host_summary(self.lines)


def host_summary(lines: list[str]) -> dict[str, Any]:
    """Median time of the probe's work, its fast decile, and the share of samples slower than
    HOST_SLOW_RATIO x the fast decile (empty without samples)."""
    values = []
    for line in lines:
        try:
            values.append(int(line) / 1e3)
        except ValueError:
            continue
    if len(values) < 10:
        return {}
    us = np.asarray(values)
    fast = float(np.percentile(us, 10))
    return {"host_probe_samples": len(us), "host_probe_median_us": float(np.median(us)),
            "host_probe_fast_us": fast, "host_slowed_share": float(np.mean(us > HOST_SLOW_RATIO * fast))}
