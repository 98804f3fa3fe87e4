"""SM partitions of one GPU for the profiler: green contexts from one driver-level split.

H200.md: two `torch.cuda.green_contexts.GreenContext.create` calls of the same size get the same
SMs, so disjoint partitions need one driver split (`cuDevSmResourceSplitByCount`: a group of n
SMs plus the remainder), each half with its own green context and stream; Triton launches on
such a stream (wrapped as `torch.cuda.ExternalStream`) stay on its SMs (kernels.md §4.2).
If the driver split is unavailable the fallback is torch's GreenContext per size: SM-share
timings stay valid but the two halves may overlap, so contention is then not measured; the
method in use is recorded in meta.json. Sizes round up to multiples of 8 SMs on Hopper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.cuda.green_contexts import GreenContext


@dataclass
class Partition:
    sms: int
    """SMs granted by the driver."""
    stream: Any
    """A torch stream whose launches run on these SMs only (None = the whole GPU)."""
    handle: Any = None


class PartitionError(RuntimeError):
    pass


def _ok(result: Any) -> Any:
    """cuda.bindings returns (CUresult, *values): raise unless success, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise PartitionError(f"CUDA driver error {err}")
    return values[0] if len(values) == 1 else tuple(values)


class Partitions:
    """Pairs (n SMs, the rest) from one driver split per n; `method` says what was used."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "none"
        self._pairs: dict[int, tuple[Partition, Partition | None]] = {}
        self._driver: Any = None
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        if device.type != "cuda":
            self.method = "cpu (num_sms argument only)"
            return
        try:
            from cuda.bindings import driver  # optional: only on machines with cuda-bindings

            self._driver = driver
            self.method = "driver split (cuDevSmResourceSplitByCount + cuGreenCtxCreate)"
        except ImportError:
            self.method = "torch GreenContext per size (halves may overlap)"

    @property
    def disjoint(self) -> bool:
        return self.method.startswith("driver") or self.method.startswith("cpu")

    def pair(self, n: int) -> tuple[Partition, Partition | None]:
        """(a partition of n SMs, the remaining SMs or None) — cached per n."""
        if n not in self._pairs:
            self._pairs[n] = self._make(n)
        return self._pairs[n]

    def _make(self, n: int) -> tuple[Partition, Partition | None]:
        if self.device.type != "cuda":
            return Partition(n, None), Partition(self.num_sms - n, None)
        if self._driver is not None:
            try:
                return self._driver_split(n)
            except Exception as exc:  # noqa: BLE001 - fall back, recorded in meta.json
                self.method = f"torch GreenContext per size (driver split failed: {exc})"
                self._driver = None
        ctx: Any = GreenContext.create(num_sms=n, device_id=self.device.index or 0)
        other = None
        if self.num_sms - n >= 8:
            rest: Any = GreenContext.create(num_sms=self.num_sms - n, device_id=self.device.index or 0)
            other = Partition(self.num_sms - n, rest.Stream(), rest)
        return Partition(n, ctx.Stream(), ctx), other

    def _driver_split(self, n: int) -> tuple[Partition, Partition | None]:
        drv = self._driver
        torch.cuda.init()
        dev = _ok(drv.cuDeviceGet(self.device.index or 0))
        resource = _ok(drv.cuDeviceGetDevResource(dev, drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
        groups, _, rest = _ok(drv.cuDevSmResourceSplitByCount(1, resource, 0, n))
        first = self._green(dev, groups[0])
        other = self._green(dev, rest) if rest.sm.smCount >= 8 else None
        return first, other

    def _green(self, dev: Any, resource: Any) -> Partition:
        drv = self._driver
        desc = _ok(drv.cuDevResourceGenerateDesc([resource], 1))
        flags = drv.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM
        ctx = _ok(drv.cuGreenCtxCreate(desc, dev, flags))
        stream = _ok(drv.cuGreenCtxStreamCreate(ctx, drv.CUstream_flags.CU_STREAM_NON_BLOCKING, 0))
        pointer = int(stream) if hasattr(stream, "__int__") else int(stream.getPtr())
        torch_stream = torch.cuda.ExternalStream(pointer, device=self.device)
        return Partition(int(resource.sm.smCount), torch_stream, (ctx, stream))
