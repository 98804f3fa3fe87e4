"""The GPU's SM clock while the runtime serves or the profiler times, sampled by `nvidia-smi` in
its own process: a run whose clock sagged (power or thermal capping, another tenant) measures a
slower GPU than the profile's, and its report says so instead of blaming the cost model; a
profile's meta.json records it per phase (operators, held-out shapes, passes, partitions)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import tempfile
from typing import Any, NamedTuple, Self

import numpy as np

FIELDS = "timestamp,clocks.sm,clocks.max.sm,clocks_event_reasons.active,power.draw"
# Event reasons that slow the clock down for a reason other than an idle GPU or the
# application's own clock setting (nvidia-smi's bit values).
POWER_CAP = 0x4
SLOWING_REASONS = POWER_CAP | 0x8 | 0x20 | 0x40 | 0x80  # power cap, HW slowdown, SW thermal, HW thermal, HW power brake


class _Sampler:
    """A sampling process (`command`) started on entering the block and stopped on leaving it;
    `lines` are what it printed. It prints into a file: a pipe read only at the end fills at
    64 KiB (about 1,000 nvidia-smi samples) and the sampler then stops. No command (None):
    samples nothing."""

    def __init__(self, command: list[str] | None) -> None:
        self.command = command
        self._proc: subprocess.Popen[str] | None = None
        self._out: Any = None
        self.lines: list[str] = []

    def __enter__(self) -> Self:
        if self.command is not None:
            unbuffer = shutil.which("stdbuf")  # line-buffered: else the last samples die in its buffer
            self._out = tempfile.TemporaryFile(mode="w+")
            self._proc = subprocess.Popen([*([unbuffer, "-oL"] if unbuffer else []), *self.command],
                                          stdout=self._out, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._out.seek(0)
        self.lines = self._out.read().splitlines()
        self._out.close()


def smi_id(device: Any) -> int | str:
    """nvidia-smi's id of a torch CUDA device: its UUID, which names the same card whatever
    CUDA_VISIBLE_DEVICES maps (a process on the second GPU sees it as index 0); the index
    where torch gives no UUID."""
    import torch

    index = device.index or 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else index


class ClockMonitor(_Sampler):
    """`with ClockMonitor(index) as clocks:` ... `clocks.summary()` after the block, and
    `clocks.trace(t0)` for the samples themselves."""

    def __init__(self, index: int | str | None, period_ms: int = 100) -> None:
        """`index`: the GPU's nvidia-smi id (`smi_id`); None samples nothing (a run off the GPU)."""
        exe = shutil.which("nvidia-smi")
        super().__init__(None if exe is None or index is None else
                         [exe, f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
                          f"--loop-ms={period_ms}", f"--id={index}"])
        self.index, self.period_ms = index, period_ms

    def summary(self) -> dict[str, Any]:
        return clock_summary(self.lines)

    def trace(self, t0_epoch: float) -> list[ClockSample]:
        """The samples, their times in seconds after the epoch time `t0_epoch`."""
        return [s._replace(t_s=s.t_s - t0_epoch) for s in clock_samples(self.lines)]


class ClockSample(NamedTuple):
    t_s: float
    """When (epoch seconds, or seconds after a start in a trace)."""
    sm_mhz: float
    max_mhz: float
    reasons: int
    """nvidia-smi's clock event reasons (bits)."""
    power_w: float
    """Board power (NaN where nvidia-smi gave none)."""


def clock_samples(lines: list[str]) -> list[ClockSample]:
    """nvidia-smi's CSV lines (FIELDS), unreadable ones skipped; its timestamps are local time."""
    samples = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5:
            continue
        try:
            stamp = datetime.datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            clock, top = float(cells[1]), float(cells[2])
        except ValueError:
            continue
        try:
            reasons = int(cells[3], 16)
        except ValueError:
            reasons = 0
        try:
            power = float(cells[4])
        except ValueError:
            power = float("nan")
        samples.append(ClockSample(stamp, clock, top, reasons, power))
    return samples


def clock_summary(lines: list[str]) -> dict[str, Any]:
    """Median and minimum SM clock, median power, and the share of samples the driver slowed
    for power or heat, from nvidia-smi's CSV lines (empty when it printed none)."""
    samples = clock_samples(lines)
    if not samples:
        return {}
    values = np.asarray([s.sm_mhz for s in samples])
    slowed = [s.reasons & SLOWING_REASONS for s in samples]
    power = [s.power_w for s in samples if s.power_w == s.power_w]
    return {"sm_clock_samples": len(values), "sm_clock_median_mhz": float(np.median(values)),
            "sm_clock_min_mhz": float(values.min()), "sm_clock_max_mhz": max(s.max_mhz for s in samples),
            "clock_slowed_share": float(np.mean([s != 0 for s in slowed])),
            "clock_slowed_reasons": f"{int(np.bitwise_or.reduce(slowed)):#x}",
            **({"power_median_w": float(np.median(power))} if power else {})}


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
    print(f"{time.time():.6f} {time.perf_counter_ns() - t}", flush=True)
    time.sleep(period)
"""
HOST_SLOW_RATIO = 1.25
"""A sample slower than this times the run's fast decile counts as the host slowed."""


class HostMonitor(_Sampler):
    """`with HostMonitor() as host:` ... `host.summary()` after the block, and `host.trace(t0)`
    for the samples themselves."""

    def __init__(self, period_ms: int = 100) -> None:
        super().__init__([sys.executable, "-c", _HOST_PROBE, str(period_ms / 1e3)])
        self.period_ms = period_ms

    def summary(self) -> dict[str, Any]:
        return host_summary(self.lines)

    def trace(self, t0_epoch: float) -> list[tuple[float, float]]:
        """(seconds after the epoch time `t0_epoch`, the probe's time in us) of every sample."""
        return [(t - t0_epoch, us) for t, us in host_samples(self.lines)]


def host_samples(lines: list[str]) -> list[tuple[float, float]]:
    """(epoch seconds, us) of each line the probe printed ("EPOCH NS"); others skipped."""
    samples = []
    for line in lines:
        cells = line.split()
        if len(cells) != 2:
            continue
        try:
            samples.append((float(cells[0]), int(cells[1]) / 1e3))
        except ValueError:
            continue
    return samples


def host_summary(lines: list[str]) -> dict[str, Any]:
    """Median time of the probe's work, its fast decile, and the share of samples slower than
    HOST_SLOW_RATIO x the fast decile (empty without samples)."""
    values = [us for _, us in host_samples(lines)]
    if len(values) < 10:
        return {}
    us = np.asarray(values)
    fast = float(np.percentile(us, 10))
    return {"host_probe_samples": len(us), "host_probe_median_us": float(np.median(us)),
            "host_probe_fast_us": fast, "host_slowed_share": float(np.mean(us > HOST_SLOW_RATIO * fast))}
