"""The profiler's GPU machinery on the device: timing, green-context partitions, co-runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from servesim.models.arch import load_model
from servesim.profiler.grid import Point
from servesim.profiler.measure import Measurer
from servesim.profiler.operators import OperatorFactory
from servesim.profiler.partitions import Partitions
from servesim.profiler.timing import Timer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def parts() -> tuple[OperatorFactory, Timer, Partitions]:
    device = torch.device("cuda")
    return (OperatorFactory(load_model("llama-3.1-8b"), device, kv_tokens=1 << 20),
            Timer(device, target_us=1000.0), Partitions(device))


def test_timing_is_ordered_and_weights_stream(parts) -> None:
    factory, timer, _ = parts
    build, flush = factory.builder("gate_up", 1, 0, 0, None)
    t = timer.measure(build, flush)
    assert t.p20_us <= t.median_us <= t.p80_us and t.method == "graph"
    weight_bytes = 2 * 14336 * 4096 * 2
    assert 1.0e12 < weight_bytes / (t.median_us * 1e-6) < 4.8e12  # below the HBM datasheet


def test_driver_split_gives_disjoint_slower_partitions(parts) -> None:
    factory, timer, partitions = parts
    small, rest = partitions.pair(16)
    assert small.sms == 16 and rest is not None and rest.sms == 116 and partitions.disjoint
    build, flush = factory.builder("rmsnorm", 16384, 0, 0, None)
    whole = timer.measure(build, flush).median_us
    build16, _ = factory.builder("rmsnorm", 16384, 0, 0, 16)
    assert timer.measure(build16, flush, small.stream).median_us > 2 * whole


def test_corun_row_has_a_slowdown(parts) -> None:
    factory, timer, partitions = parts
    targets = {"attn_decode": Point("ops", "attn_decode", 64, 4096, 1)}
    corunners = {"decode_attn": Point("ops", "attn_decode", 128, 4096, 1)}
    m = Measurer(factory, timer, partitions, (32,), targets=targets, corunners=corunners)
    row = m.measure(Point("contention", "attn_decode", 64, 4096, 1, 32, "decode_attn", 100))
    assert row["sms"] == 32 and row["corunner_sms"] == 100 and 0.8 < row["slowdown"] < 5


def test_a_tiny_operator_times_the_same_in_short_and_long_graphs(parts) -> None:
    """Differential timing drops the replay's fixed cost: one rmsnorm call times the same
    whether the graph holds 8 or 32 calls (a plain replay / G differs by the fixed cost / G)."""
    factory, timer, _ = parts
    build, flush = factory.builder("rmsnorm", 16, 0, 0, None)
    prepared = timer.prepare(build)
    assert prepared.method == "graph" and prepared.copies >= 8 and prepared.short is not None
    times = {}
    for copies in (8, 32):
        fixed = Timer(torch.device("cuda"), target_us=1000.0)
        fixed_build = lambda g, copies=copies: build(copies)  # noqa: E731
        p = fixed.prepare(fixed_build)
        assert p.copies == copies and p.short_copies == copies // 2
        samples = fixed.enqueue(p, 20, flush)
        fixed.sync()
        times[copies] = float(np.median(fixed.elapsed_us(samples, p)))
        plain = float(np.median([s[2].elapsed_time(s[3]) * 1e3 / copies for s in samples]))
        assert plain > times[copies]  # the plain replay / G carries the fixed cost
    assert abs(times[8] / times[32] - 1) < 0.1, times
    assert 1.0 < times[32] < 8.0


def test_runtime_prompt_passes_are_captured_whole_and_cost_less_than_served() -> None:
    """The runtime's prompt passes on the GPU: each length in one CUDA graph (method names
    without the CPU suffix), timed after decode passes and after an idle GPU; the pass as the
    runtime issues it (piecewise graphs, attention and small kernels launched by the host) takes
    longer than the same pass in one graph."""
    from servesim.profiler.runtime_passes import RUNTIME_PROMPTS, measure_runtime_prompts

    rows = measure_runtime_prompts(load_model("tests/data/profiler/tiny-dense.json"), torch.device("cuda"),
                                   "tiny", torch.cuda.get_device_properties(0).multi_processor_count)
    by = {(r["method"], int(r["prefill_tokens"])): r["median_us"] for r in rows}
    assert set(by) == {(m, q) for m in ("runtime_graph", "runtime_graph_rested", "runtime_served")
                       for q in RUNTIME_PROMPTS["tiny"]}
    for q in RUNTIME_PROMPTS["tiny"]:
        assert 0 < by[("runtime_graph", q)] < by[("runtime_served", q)]
        assert by[("runtime_graph_rested", q)] > 0
