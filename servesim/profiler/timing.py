"""Timing one operator on the GPU: CUDA events around CUDA-graph replays, medians with p20/p80.

Method (research/kernels.md §5, METHOD.md): run once to compile and warm up; estimate; capture
G calls into one CUDA graph, G chosen so a replay lasts >= ~150 us (G = 1 for longer
operators), each call with its own weights/KV copy so none is warm in L2; before each timed
replay flush L2 (a 256 MB read) for weight- and KV-streaming operators, then a spin kernel of
~50 us + host time so that the host's launch never shows up as idle GPU time; the time of one
call is the replay's event interval / G. Graph capture failures fall back to eager launches
(method 'eager'). On the CPU (TRITON_INTERPRET=1 dry runs) the host clock times eager calls.

The flush reads, it does not write: after a memset L2 is full of dirty lines, and the timed
operator's first loads pay for writing them back to HBM (up to the L2 size, ~60 MB, per
replay), which a pass never does (the previous operator's lines are mostly clean weights).
That write-back made small decode operators look ~10-25 % slower than inside a real pass.

A captured graph holds raw device pointers, not tensors: `Prepared` keeps the calls (and so
every tensor they bind: outputs, block tables, activations) alive as long as the graph. Without
that, the co-runner's allocations and the `empty_cache()` inside its `torch.cuda.graph` capture
reuse or unmap the target's buffers before the target replays (issue 4: illegal addresses).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Call = Callable[[], Any]
Builder = Callable[[int], list[Call]]
"""Given G, returns G independent calls of the operator (own cold tensors each)."""

_FLUSH_BYTES = 256 * 2**20
_SMALL_US = 150.0
_MAX_COPIES = 32
_CLOCK_HZ = 1.98e9  # H200.md: SM clock 1980 MHz; only sizes the spin kernel


@dataclass(frozen=True, slots=True)
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    reps: int
    method: str

    def row(self) -> dict[str, Any]:
        return {"median_us": self.median_us, "p20_us": self.p20_us, "p80_us": self.p80_us,
                "reps": self.reps, "method": self.method}


@dataclass
class Prepared:
    """An operator ready to time: `launch` enqueues G calls (one graph replay or eager)."""

    launch: Call
    copies: int
    estimate_us: float
    method: str
    calls: list[Call]
    """The G calls; holding them keeps the tensors a captured graph reads and writes alive."""
    graph: Any = None


class Timer:
    """Times operators on one device; `target_us` is the timed work per point."""

    def __init__(self, device: torch.device, target_us: float = 4000.0, min_reps: int = 5,
                 max_reps: int = 30, graphs: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.target_us, self.min_reps, self.max_reps = target_us, min_reps, max_reps
        self.graphs = graphs and self.cuda
        self._flush = torch.ones(_FLUSH_BYTES // 4, dtype=torch.float32, device=device) if self.cuda else None
        self._flush_out = torch.zeros((), dtype=torch.float32, device=device) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def on(self, stream: Any) -> Iterator[None]:
        """Make `stream` (a partition's, or None = the current one) current."""
        if stream is None or not self.cuda:
            yield
        else:
            with torch.cuda.stream(stream):
                yield

    def prepare(self, build: Builder, stream: Any = None, graph: bool = True) -> Prepared:
        """Warm up (compile), estimate one call, then capture G calls in a graph."""
        # Inputs are made on the current stream; a partition's stream (non-blocking, in another
        # context) does not wait for it, so sync before it reads them (indices from randperm,
        # top-k or moe_align included).
        first = build(1)
        self.sync()
        with self.on(stream):
            first[0]()
            self.sync()
            estimate_us = self._once(first)
        copies = 1 if estimate_us >= _SMALL_US else min(_MAX_COPIES, math.ceil(_SMALL_US / max(estimate_us, 1.0)))
        calls = build(copies) if copies > 1 else first
        if copies > 1:
            self.sync()
            with self.on(stream):
                for call in calls[1:]:
                    call()
                self.sync()
        if graph and self.graphs:
            captured = self._capture(calls, stream)
            if captured is not None:
                return Prepared(captured.replay, len(calls), estimate_us, "graph", calls, captured)
        return Prepared(lambda: [c() for c in calls], len(calls), estimate_us,
                        "eager" if self.cuda else "cpu", calls)

    def _once(self, calls: list[Call]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            calls[0]()
            return (time.perf_counter() - start) * 1e6
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        calls[0]()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * 1e3

    def _capture(self, calls: list[Call], stream: Any) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                for call in calls:
                    call()
            self.sync()
            return graph
        except Exception:  # noqa: BLE001 - an op that cannot be captured is timed eagerly
            self.sync()
            return None

    def reps_for(self, prepared: Prepared) -> int:
        per_launch = max(prepared.estimate_us * prepared.copies, 1.0)
        return int(min(self.max_reps, max(self.min_reps, round(self.target_us / per_launch))))

    def enqueue(self, prepared: Prepared, reps: int, flush: bool) -> list[tuple[Any, Any]]:
        """Enqueue `reps` timed launches on the current stream; returns their event pairs
        (or host-clock pairs on the CPU). Read them with `elapsed_us` after a sync."""
        pairs = []
        for _ in range(reps):
            if not self.cuda:
                start = time.perf_counter()
                prepared.launch()
                pairs.append((start, time.perf_counter()))
                continue
            if flush and self._flush is not None:
                torch.sum(self._flush, dim=0, out=self._flush_out)  # a read: leaves L2 clean
            host_us = 50.0 if prepared.method == "graph" else 50.0 + 80.0 * prepared.copies
            torch.cuda._sleep(int(host_us * 1e-6 * _CLOCK_HZ))
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            prepared.launch()
            end.record()
            pairs.append((begin, end))
        return pairs

    def elapsed_us(self, pairs: list[tuple[Any, Any]], copies: int) -> np.ndarray:
        if not self.cuda:
            return np.array([(b - a) * 1e6 / copies for a, b in pairs])
        return np.array([a.elapsed_time(b) * 1e3 / copies for a, b in pairs])

    def measure(self, build: Builder, flush: bool, stream: Any = None, graph: bool = True) -> Timing:
        """Median (p20, p80) microseconds of one call of the operator."""
        prepared = self.prepare(build, stream, graph)
        with self.on(stream):
            pairs = self.enqueue(prepared, self.reps_for(prepared), flush)
            self.sync()
        return summarize(self.elapsed_us(pairs, prepared.copies), prepared.method)


def summarize(samples_us: np.ndarray, method: str) -> Timing:
    p20, med, p80 = np.percentile(samples_us, [20, 50, 80])
    return Timing(float(med), float(p20), float(p80), len(samples_us), method)
