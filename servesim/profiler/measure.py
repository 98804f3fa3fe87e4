"""Measures one grid point: alone on the whole GPU, inside a partition, or next to a co-runner.

Contention (H200.md, kernels.md §4.5): the co-runner is enqueued first on the complementary
partition, enough launches to outlast the target's timed replays by 1.5x; then the target's
replays are timed on its own partition. slowdown = co-run median / alone median, both on the
same partition in the same minute. Whether the co-runner really covered the whole window is
checked with events and counted (meta.json: contention_uncovered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from servesim.profiler.forward import fixed_cost_call
from servesim.profiler.grid import Point
from servesim.profiler.operators import OperatorFactory
from servesim.profiler.partitions import Partition, Partitions
from servesim.profiler.timing import Prepared, Timer, Timing, summarize


@dataclass
class Measurer:
    factory: OperatorFactory
    timer: Timer
    partitions: Partitions
    split_sms: tuple[int, ...]
    graphs_on_partitions: bool = True
    targets: dict[str, Point] = field(default_factory=dict)
    """Contention target class -> the ops point it times."""
    corunners: dict[str, Point] = field(default_factory=dict)
    """Co-runner class -> the ops point it loops."""
    uncovered: int = 0
    _alone: dict[tuple[str, int], Timing] = field(default_factory=dict)

    def measure(self, p: Point) -> dict[str, Any]:
        """The table row of point p (without the key)."""
        if p.table == "contention":
            return self._contention(p)
        if p.op == "iteration_fixed":
            timing = self.timer.measure(lambda g: [fixed_cost_call(self.factory) for _ in range(g)], flush=False)
            return {"op": p.op, "a": p.a, "b": p.b, "c": p.c, **timing.row()}
        if p.table == "sm_shares":
            part, _ = self.partitions.pair(p.sms)
            timing = self._alone_on(p, part)
            return {"op": p.op, "a": p.a, "b": p.b, "c": p.c, "sms": part.sms, **timing.row()}
        build, flush = self.factory.builder(p.op, p.a, p.b, p.c, None)
        timing = self.timer.measure(build, flush)
        return {"op": p.op, "a": p.a, "b": p.b, "c": p.c, **timing.row()}

    def _alone_on(self, p: Point, part: Partition) -> Timing:
        build, flush = self.factory.builder(p.op, p.a, p.b, p.c, part.sms)
        return self.timer.measure(build, flush, part.stream, self.graphs_on_partitions)

    def _sides(self, p: Point) -> tuple[Partition, Partition]:
        """(target partition, co-runner partition) of a contention point."""
        if p.sms in self.split_sms:
            first, rest = self.partitions.pair(p.sms)
            assert rest is not None
            return first, rest
        first, rest = self.partitions.pair(p.corunner_sms)
        assert rest is not None
        return rest, first

    def _contention(self, p: Point) -> dict[str, Any]:
        target_part, other_part = self._sides(p)
        spec = self.targets[p.op]
        build, flush = self.factory.builder(spec.op, spec.a, spec.b, spec.c, target_part.sms)
        key = (p.op, target_part.sms)
        if key not in self._alone:
            self._alone[key] = self.timer.measure(build, flush, target_part.stream, self.graphs_on_partitions)
        alone = self._alone[key]
        cor = self.corunners[p.corunner]
        cor_build, _ = self.factory.builder(cor.op, cor.a, cor.b, cor.c, other_part.sms)
        target = self.timer.prepare(build, target_part.stream, self.graphs_on_partitions)
        corunner = self.timer.prepare(cor_build, other_part.stream, self.graphs_on_partitions)
        corun = self._corun(target, corunner, flush, target_part, other_part)
        return {"op": p.op, "a": p.a, "b": p.b, "c": p.c, "sms": target_part.sms,
                "corunner": p.corunner, "corunner_sms": other_part.sms,
                "alone_us": alone.median_us, "corun_us": corun.median_us,
                "slowdown": corun.median_us / alone.median_us}

    def _corun(self, target: Prepared, corunner: Prepared, flush: bool,
               target_part: Partition, other_part: Partition) -> Timing:
        timer = self.timer
        reps = timer.reps_for(target)
        replays = 2 if target.short is not None else 1
        window_us = reps * (target.estimate_us * (target.copies + target.short_copies) + 300.0 * replays)
        launches = math.ceil(1.5 * window_us / max(corunner.estimate_us * corunner.copies, 1.0)) + 2
        if not timer.cuda:
            pairs = timer.enqueue(target, reps, flush)
            return summarize(timer.elapsed_us(pairs, target), target.method)
        with timer.on(other_part.stream):
            for _ in range(launches):
                corunner.launch()
            cor_end = torch.cuda.Event(enable_timing=True)
            cor_end.record()
        with timer.on(target_part.stream):
            pairs = timer.enqueue(target, reps, flush)
        timer.sync()
        if pairs[-1][1].elapsed_time(cor_end) < 0:
            self.uncovered += 1
        return summarize(timer.elapsed_us(pairs, target), target.method + "+corun")
