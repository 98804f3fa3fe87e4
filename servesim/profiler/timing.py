"""Timing one operator on the GPU: CUDA events around CUDA-graph replays, medians with p20/p80.

Method (research/kernels.md §5, METHOD.md): run once to compile and warm up; estimate; capture
G calls into one CUDA graph, G chosen so a replay lasts >= ~150 us (G = 1 for longer
operators), each call with its own weights/KV copy so none is warm in L2; before each timed
replay flush L2 (a 256 MB read) for weight- and KV-streaming operators, then a spin kernel of
~50 us + host time so that the host's launch never shows up as idle GPU time. Graph capture
failures fall back to eager launches (method 'eager'). On the CPU (TRITON_INTERPRET=1 dry runs)
the host clock times eager calls.

The time of one call is a difference: each rep replays a graph of the first H = G/2 calls and
then the graph of all G, and one call is (long - short) / (G - H). A replay also pays a fixed
few microseconds (the graph's first launch, the events) that a call inside a pass never pays;
divided by G it made a 3 us operator read 10-50 % slow, by an amount that changed with G, and G
with the noise of the first estimate (issue 4: held-out rmsnorm and silu_mul points). G comes
from a one-call graph replay, not an eager call, whose host launch latency (~20-40 us, ~180 us
for the first calls of a shape) made G too small for operators of a few microseconds. An
operator of >= 150 us (G = 1) is timed one call per replay: the fixed cost is then < 2 %.

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
_MIN_DIFF_COPIES = 1
"""Differential timing needs a short graph of at least this many calls (so G >= 2)."""
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
    short: Call | None = None
    """Replays the first `short_copies` calls: the subtrahend of differential timing."""
    short_copies: int = 0
    short_graph: Any = None

    @property
    def per_call_copies(self) -> int:
        """Calls one timed sample is divided by."""
        return self.copies - self.short_copies


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
        one_call = None
        if graph and self.graphs:
            estimate_us, one_call = self._graph_once(first, stream, estimate_us)
        copies = 1 if estimate_us >= _SMALL_US else min(_MAX_COPIES, math.ceil(_SMALL_US / max(estimate_us, 1.0)))
        calls = build(copies) if copies > 1 else first
        if copies > 1:
            self.sync()
            with self.on(stream):
                for call in calls[1:]:
                    call()
                self.sync()
        if graph and self.graphs:
            captured = one_call if copies == 1 else self._capture(calls, stream)
            if captured is not None:
                prepared = Prepared(captured.replay, len(calls), estimate_us, "graph", calls, captured)
                half = len(calls) // 2
                short = self._capture(calls[:half], stream) if half >= _MIN_DIFF_COPIES else None
                if short is not None:
                    prepared.short, prepared.short_copies, prepared.short_graph = short.replay, half, short
                return prepared
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

    def _graph_once(self, first: list[Call], stream: Any,
                    eager_us: float) -> tuple[float, torch.cuda.CUDAGraph | None]:
        """One call's time from the fastest of 3 replays of a one-call graph, and the graph (a
        G = 1 operator is timed with it); eager_us and None if the call cannot be captured. The
        eager estimate alone is not enough even to tell small from large: the first eager calls
        of a new shape can take ~180 us of host time, which left 3 us operators timed one per
        replay."""
        graph = self._capture(first, stream)
        if graph is None:
            return eager_us, None
        with self.on(stream):
            pairs = []
            for _ in range(3):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                graph.replay()
                end.record()
                pairs.append((begin, end))
            self.sync()
        return min(a.elapsed_time(b) * 1e3 for a, b in pairs), graph

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

    def enqueue(self, prepared: Prepared, reps: int, flush: bool) -> list[tuple[Any, ...]]:
        """Enqueue `reps` timed samples on the current stream; returns their event pairs (two
        pairs, short then long, under differential timing; host-clock pairs on the CPU). Read
        them with `elapsed_us` after a sync."""
        samples: list[tuple[Any, ...]] = []
        for _ in range(reps):
            if not self.cuda:
                start = time.perf_counter()
                prepared.launch()
                samples.append((start, time.perf_counter()))
                continue
            pair = self._timed(prepared.launch, prepared, flush)
            samples.append(pair if prepared.short is None
                           else self._timed(prepared.short, prepared, flush) + pair)
        return samples

    def _timed(self, launch: Call, prepared: Prepared, flush: bool) -> tuple[Any, Any]:
        if flush and self._flush is not None:
            torch.sum(self._flush, dim=0, out=self._flush_out)  # a read: leaves L2 clean
        host_us = 50.0 if prepared.method == "graph" else 50.0 + 80.0 * prepared.copies
        torch.cuda._sleep(int(host_us * 1e-6 * _CLOCK_HZ))
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        launch()
        end.record()
        return begin, end

    def elapsed_us(self, samples: list[tuple[Any, ...]], prepared: Prepared | int) -> np.ndarray:
        """Microseconds of one call per sample; `prepared` (or a plain call count) divides."""
        if isinstance(prepared, int):
            copies = prepared
        else:
            copies = prepared.per_call_copies
        if not self.cuda:
            return np.array([(s[-1] - s[-2]) * 1e6 / copies for s in samples])
        out = []
        for s in samples:
            long_us = s[-2].elapsed_time(s[-1]) * 1e3
            short_us = s[0].elapsed_time(s[1]) * 1e3 if len(s) == 4 else 0.0
            out.append((long_us - short_us) / copies)
        return np.array(out)

    def measure(self, build: Builder, flush: bool, stream: Any = None, graph: bool = True) -> Timing:
        """Median (p20, p80) microseconds of one call of the operator."""
        prepared = self.prepare(build, stream, graph)
        with self.on(stream):
            pairs = self.enqueue(prepared, self.reps_for(prepared), flush)
            self.sync()
        return summarize(self.elapsed_us(pairs, prepared), prepared.method)


def summarize(samples_us: np.ndarray, method: str) -> Timing:
    p20, med, p80 = np.percentile(samples_us, [20, 50, 80])
    return Timing(float(med), float(p20), float(p80), len(samples_us), method)
