"""Host-bound iterations: an engine that launches every kernel from Python (no CUDA graphs)
cannot issue work faster than its host loop runs. This wrapper adds that to any cost model:

    iteration = host_step_s + max(gpu time, kernel launches x host_launch_s)

host_step_s is the scheduler and input preparation before the first launch; the GPU starts as
soon as the first kernel is issued, so launching and executing overlap and the slower of the
two sets the pace. Both constants are measured on the engine being modelled
(benchmarks/runtime_overhead.py measures servesim's own runtime); an engine with CUDA graphs
has host_launch_s near 0. The op breakdown of `batch_cost` is stretched uniformly to the total.
"""

from __future__ import annotations

import dataclasses

from servesim.models import ops as model_ops
from servesim.models.arch import ModelArch
from servesim.models.shapes import BatchCost, BatchShape, Corunner
from servesim.sim.cost_model import CostModel


class HostOverheadCostModel:
    """`inner` plus the host's launch and step costs."""

    def __init__(self, inner: CostModel, arch: ModelArch, host_launch_s: float, host_step_s: float) -> None:
        self.inner, self.arch = inner, arch
        self.host_launch_s, self.host_step_s = host_launch_s, host_step_s
        self._launches: dict[tuple[bool, bool, int, int], int] = {}

    def launches(self, batch: BatchShape) -> int:
        """Kernels one pass launches: every op of the op list, with the prefill chunks' attention
        in one varlen kernel per layer (as servesim's runtime and vLLM launch it)."""
        start, end = batch.prefill_layers or (0, self.arch.num_layers)
        key = (bool(batch.prefill_tokens), batch.num_decodes > 0, start, end)
        count = self._launches.get(key)
        if count is None:
            probe = BatchShape((1,) if key[0] else (), (0,) if key[0] else (),
                               1 if key[1] else 0, 1 if key[1] else 0, 1 if key[1] else 0,
                               1, batch.prefill_layers)
            count = self._launches[key] = len(model_ops.forward_ops(self.arch, probe))
        return count

    def step_time(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> float:
        gpu_s = self.inner.step_time(batch, sms, corunner)
        if batch.is_empty:
            return gpu_s
        return self.host_step_s + max(gpu_s, self.launches(batch) * self.host_launch_s)

    def batch_cost(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> BatchCost:
        cost = self.inner.batch_cost(batch, sms, corunner)
        total = self.step_time(batch, sms, corunner)
        scale = total / cost.total_s if cost.total_s > 0 else 1.0
        ops = tuple(dataclasses.replace(op, seconds=op.seconds * scale) for op in cost.ops)
        layer_s = tuple(s * scale for s in cost.layer_s)
        return dataclasses.replace(cost, total_s=total, ops=ops, layer_s=layer_s)
