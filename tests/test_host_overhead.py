"""The host-overhead wrapper: host-bound iterations take launches x launch cost, GPU-bound ones
their GPU time, and the op breakdown still sums to the total."""

from __future__ import annotations

import pytest

from servesim.models import ops as model_ops
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape
from servesim.sim.cost_model import RooflineCostModel
from servesim.sim.hardware import get_gpu
from servesim.sim.host_overhead import HostOverheadCostModel

ARCH = load_model("llama-3.1-8b")
GPU_MODEL = RooflineCostModel(ARCH, get_gpu("h200"))
DECODE = BatchShape((), (), 8, 8000, 1000, 8)
PREFILL = BatchShape((8192,), (0,), num_logits=1)


def test_launches_count_the_ops_of_the_pass() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 0.0)
    assert host.launches(DECODE) == len(model_ops.forward_ops(ARCH, DECODE))
    two_chunks = BatchShape((100, 200), (0, 0), 8, 8000, 1000, 10)
    one_chunk = BatchShape((300,), (0,), 8, 8000, 1000, 9)
    assert host.launches(two_chunks) == host.launches(one_chunk)  # one varlen kernel per layer


def test_host_bound_decode_and_gpu_bound_prefill() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6)
    assert host.step_time(DECODE) == pytest.approx(300e-6 + host.launches(DECODE) * 50e-6)
    assert host.step_time(DECODE) > GPU_MODEL.step_time(DECODE)
    assert host.step_time(PREFILL) == pytest.approx(300e-6 + GPU_MODEL.step_time(PREFILL))
    assert host.step_time(BatchShape()) == 0.0


def test_breakdown_sums_to_the_total() -> None:
    host = HostOverheadCostModel(GPU_MODEL, ARCH, 50e-6, 300e-6)
    for batch in (DECODE, PREFILL):
        cost = host.batch_cost(batch)
        assert cost.total_s == pytest.approx(host.step_time(batch))
        assert sum(op.seconds for op in cost.ops) == pytest.approx(cost.total_s, rel=1e-9)
