"""How long a batch takes on a GPU: the `CostModel` protocol and its analytic implementations.

`step_time` is the simulator's fast path (one float); `batch_cost` gives the same total with
per-layer and per-operator seconds, HBM bytes and FLOPs. `RooflineCostModel` prices each operator
of `servesim.models.ops` against the measured ceilings of a `GpuSpec` and the per-kernel-kind
efficiencies beside them in `hardware.py`; `ConstantCostModel` is linear in the batch's counts,
for tests and queueing-theory checks. The profiled model (measured kernel tables) implements
the same protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol

from servesim.errors import InputError
from servesim.models import ops as model_ops
from servesim.models.arch import ModelArch
from servesim.models.ops import OpSpec
from servesim.models.shapes import BatchCost, BatchShape, Corunner, OpCost
from servesim.sim.hardware import (
    CORUN_BASE,
    CORUN_PER_DEMAND,
    GEMM_TILE,
    GEMM_TILE_SMALL,
    H200,
    KERNEL_EFFICIENCY,
    MOE_TILE,
    PREFILL_ATTN_TFLOPS,
    GpuSpec,
)


class CostModel(Protocol):
    """Prices one forward pass on `sms` SMs (None = the whole GPU) next to `corunner`."""

    def step_time(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> float:
        """Seconds for the batch: the fast path, called once per simulated iteration."""
        ...

    def batch_cost(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> BatchCost:
        """The full breakdown; its total_s equals step_time for the same arguments."""
        ...


@dataclass(frozen=True, slots=True)
class ConstantCostModel:
    """total = fixed + per_prefill_token * prefill tokens + per_decode * decodes
    + per_context_token * decode context + per_chunk * chunks; an empty batch costs 0.
    SM share and co-runner are ignored; the breakdown splits the total evenly over layers."""

    fixed_s: float = 0.0
    per_prefill_token_s: float = 0.0
    per_decode_s: float = 0.0
    per_context_token_s: float = 0.0
    per_chunk_s: float = 0.0
    num_layers: int = 1

    def step_time(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> float:
        if batch.is_empty:
            return 0.0
        return (self.fixed_s + self.per_prefill_token_s * batch.num_prefill_tokens
                + self.per_decode_s * batch.num_decodes
                + self.per_context_token_s * batch.decode_context
                + self.per_chunk_s * len(batch.prefill_tokens))

    def batch_cost(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> BatchCost:
        total_s = self.step_time(batch, sms, corunner)
        per_layer_s = total_s / self.num_layers
        ops = tuple(OpCost(layer, "layer", per_layer_s, 0.0, 0.0) for layer in range(self.num_layers))
        return BatchCost(total_s, (per_layer_s,) * self.num_layers, ops, 0.0, 0.0)


_MAX_CACHE_ENTRIES = 500_000


def _gemm_rows(m: float) -> float:
    tile = GEMM_TILE_SMALL if m <= GEMM_TILE_SMALL else GEMM_TILE
    return math.ceil(m / tile) * tile


def _prefill_attn_fraction(attended: float) -> float:
    """Fraction of the H200 GEMM peak reached by causal attention over `attended` positions,
    interpolated in log S at the causal length S = sqrt(2 * attended) of equal work."""
    s = math.sqrt(2.0 * attended)
    (s0, t0) = PREFILL_ATTN_TFLOPS[0]
    if s <= s0:
        return max(t0 * s / s0, 1.0) * 1e12 / H200.peak_bf16_flops
    for (s1, t1) in PREFILL_ATTN_TFLOPS[1:]:
        if s <= s1:
            t = t0 + (t1 - t0) * math.log(s / s0) / math.log(s1 / s0)
            return t * 1e12 / H200.peak_bf16_flops
        s0, t0 = s1, t1
    return t0 * 1e12 / H200.peak_bf16_flops


def _effective_flops(op: OpSpec) -> tuple[float, float]:
    """(FLOPs the kernel really computes after tile padding, compute efficiency)."""
    eff = KERNEL_EFFICIENCY[op.kind].compute
    if op.kind == "gemm":
        m = op.shape["m"]
        return op.flops * _gemm_rows(m) / m if m else 0.0, eff
    if op.kind == "moe_gemm":
        rows = op.shape["rows"]
        padded = rows + op.shape["experts_hit"] * MOE_TILE / 2
        return op.flops * padded / rows if rows else 0.0, eff
    if op.kind == "attn_prefill":
        return op.flops, _prefill_attn_fraction(op.shape["attended"])
    return op.flops, eff


class _Terms(NamedTuple):
    """A group of ops priced so that it can be re-priced under any HBM contention."""

    seconds: float
    """With no co-runner."""
    hbm_bytes: float
    ops: tuple[tuple[float, float, float], ...]
    """(compute_s, latency_s, memory_s) per op."""


_NO_OPS = _Terms(0.0, 0.0, ())


class RooflineCostModel:
    """Per operator: launch + max(FLOPs / (peak * sms/num_sms * eff_compute),
    latency + bytes * contention / (bandwidth * min(1, sms/saturation_sms) * eff_memory)).

    Compute scales linearly with the SM share (H200.md: cuBLAS 4096^3 1.29 ms on 16 SMs, 0.182
    on 132; small shares run up to 19% faster per SM, which this ignores). The token-count-only
    part of a layer, each (chunk, prefix) attention and the pass ends are priced once and cached;
    decode attention is linear in the decode context, so a decode step is a few dict lookups.
    """

    def __init__(self, arch: ModelArch, gpu: GpuSpec) -> None:
        self.arch = arch
        self.gpu = gpu
        self._dense: dict[tuple[int, int], _Terms] = {}
        self._attn: dict[tuple[int, int, int], _Terms] = {}
        self._ends: dict[tuple[int, int, int, int], _Terms] = {}
        self._decode_coef: dict[int, tuple[float, float, float, float]] = {}
        self._contentions: dict[Corunner, float] = {}
        # Decode attention bytes = context tokens * KV per token + decodes * (q in, out).
        self._context_bytes = model_ops.decode_attention_cost(arch, 0, 1)[1]
        self._decode_bytes = model_ops.decode_attention_cost(arch, 1, 0)[1]

    def step_time(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> float:
        num_sms = self._check_sms(sms)
        if corunner is not None or batch.prefill_tokens:
            return self._total(batch, num_sms, self._contention(corunner))[0]
        num_decodes = batch.num_decodes
        if not num_decodes:
            return 0.0
        # Decode-only fast path: the same arithmetic as _total, without its branches.
        ends = self._cached(self._ends, (num_decodes, num_decodes, batch.num_logits, num_sms))
        dense = self._cached(self._dense, (num_decodes, num_sms))
        attn_s = self._decode_attn_s(num_decodes, batch.decode_context, num_sms, 1.0)
        return ends.seconds + self.arch.num_layers * (dense.seconds + attn_s)

    def batch_cost(
        self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None
    ) -> BatchCost:
        """Prices every op of the pass one by one; total_s is step_time's. Layers that run the
        same tokens have the same ops, so each kind of layer is priced once and repeated."""
        num_sms, contention = self._check_sms(sms), self._contention(corunner)
        num_layers = self.arch.num_layers
        entering, leaving = model_ops.boundary_tokens(self.arch, batch)
        priced_kinds: dict[bool, list[tuple[model_ops.OpSpec, float]]] = {}
        op_costs: list[OpCost] = []
        specs: list[model_ops.OpSpec] = []

        def emit(layer: int, priced: list[tuple[model_ops.OpSpec, float]]) -> None:
            for op, seconds in priced:
                op_costs.append(OpCost(layer, op.name, seconds, op.flops, op.hbm_bytes))
                specs.append(op)

        if not batch.is_empty:
            emit(-1, self._priced(model_ops.embedding_ops(self.arch, entering), num_sms, contention))
            for layer in range(num_layers):
                kind = model_ops.runs_prefill(self.arch, batch, layer)
                if kind not in priced_kinds:
                    ops = model_ops.layer_ops(self.arch, batch, layer)
                    priced_kinds[kind] = self._priced(ops, num_sms, contention)
                emit(layer, priced_kinds[kind])
            head = model_ops.head_ops(self.arch, leaving, batch.num_logits)
            emit(num_layers, self._priced(head, num_sms, contention))
        layer_s = [0.0] * num_layers
        for op in op_costs:
            if 0 <= op.layer < num_layers:
                layer_s[op.layer] += op.seconds
        return BatchCost(
            total_s=self.step_time(batch, sms, corunner),
            layer_s=tuple(layer_s),
            ops=tuple(op_costs),
            flops=sum(op.flops for op in specs),
            hbm_bytes=sum(op.hbm_bytes for op in specs),
            expert_bytes=sum(op.weight_bytes for op in specs if op.kind == "moe_gemm"),
        )

    def _priced(
        self, ops: list[model_ops.OpSpec], sms: int, contention: float
    ) -> list[tuple[model_ops.OpSpec, float]]:
        launch_s = self.gpu.launch_overhead_s
        out = []
        for op in ops:
            compute_s, latency_s, memory_s = self._op_terms(op, sms)
            out.append((op, launch_s + max(compute_s, latency_s + memory_s * contention)))
        return out

    def _check_sms(self, sms: int | None) -> int:
        if sms is None:
            return self.gpu.num_sms
        if not 0 < sms <= self.gpu.num_sms:
            raise ValueError(f"sms={sms} outside 1..{self.gpu.num_sms} on {self.gpu.name}")
        return sms

    def _contention(self, corunner: Corunner | None) -> float:
        """Slowdown of the memory path from the HBM bandwidth the co-runner draws alone;
        cached per co-runner, which usually outlives many steps of this partition."""
        if corunner is None or corunner.batch.is_empty:
            return 1.0
        contention = self._contentions.get(corunner)
        if contention is None:
            if len(self._contentions) >= _MAX_CACHE_ENTRIES:
                self._contentions.clear()
            seconds, hbm_bytes = self._total(corunner.batch, self._check_sms(corunner.sms), 1.0)
            demand = min(1.0, hbm_bytes / seconds / self.gpu.hbm_bytes_per_s)
            contention = self._contentions[corunner] = 1.0 + CORUN_BASE + CORUN_PER_DEMAND * demand
        return contention

    def _total(self, batch: BatchShape, sms: int, contention: float) -> tuple[float, float]:
        """(seconds, HBM bytes) of the pass: ends + prefill layers + decode-only layers."""
        if batch.is_empty:
            return 0.0, 0.0
        num_layers, num_decodes = self.arch.num_layers, batch.num_decodes
        start, end = batch.prefill_layers or (0, num_layers) if batch.prefill_tokens else (0, 0)
        if not 0 <= start <= end <= num_layers:
            raise ValueError(f"prefill_layers {batch.prefill_layers} outside 0..{num_layers}")
        prefill_tokens = batch.num_prefill_tokens if end > start else 0
        entering = num_decodes + (prefill_tokens if start == 0 else 0)
        leaving = num_decodes + (prefill_tokens if end == num_layers else 0)
        ends = self._cached(self._ends, (entering, leaving, batch.num_logits, sms))
        attn_s = self._decode_attn_s(num_decodes, batch.decode_context, sms, contention)
        attn_bytes = self._context_bytes * batch.decode_context + self._decode_bytes * num_decodes
        total_s, total_bytes = self._price(ends, contention), ends.hbm_bytes
        if prefill_tokens:
            dense = self._cached(self._dense, (prefill_tokens + num_decodes, sms))
            layer_s, layer_bytes = self._price(dense, contention) + attn_s, dense.hbm_bytes + attn_bytes
            for q_tokens, prefix_tokens in zip(batch.prefill_tokens, batch.prefill_prefix, strict=True):
                chunk = self._attn_terms(q_tokens, prefix_tokens, sms)
                layer_s += self._price(chunk, contention)
                layer_bytes += chunk.hbm_bytes
            total_s += (end - start) * layer_s
            total_bytes += (end - start) * layer_bytes
        num_decode_layers = num_layers - (end - start)
        if num_decodes and num_decode_layers:
            dense = self._cached(self._dense, (num_decodes, sms))
            total_s += num_decode_layers * (self._price(dense, contention) + attn_s)
            total_bytes += num_decode_layers * (dense.hbm_bytes + attn_bytes)
        return total_s, total_bytes

    def _decode_attn_s(self, num_decodes: int, context: int, sms: int, contention: float) -> float:
        """Decode attention in closed form: its FLOPs and bytes are linear in the context."""
        if not num_decodes:
            return 0.0
        coef = self._decode_coef.get(sms)
        if coef is None:
            flops = model_ops.decode_attention_cost(self.arch, 0, 1)[0]
            compute_s, latency_s, memory_s = self._terms("attn_decode", flops, 0.0, 1.0, sms)
            coef = self._decode_coef[sms] = (compute_s, latency_s, memory_s * self._context_bytes,
                                             memory_s * self._decode_bytes)
        compute_s, latency_s, context_s, decode_s = coef
        memory_s = (context_s * context + decode_s * num_decodes) * contention
        return self.gpu.launch_overhead_s + max(compute_s * context, latency_s + memory_s)

    def _attn_terms(self, q_tokens: int, prefix_tokens: int, sms: int) -> _Terms:
        return self._cached(self._attn, (q_tokens, prefix_tokens, sms)) if q_tokens else _NO_OPS

    def _cached(self, cache: dict[Any, _Terms], key: Any) -> _Terms:
        """Price a group of ops once: the key names the group, its last element is the SMs."""
        terms = cache.get(key)
        if terms is None:
            if len(cache) >= _MAX_CACHE_ENTRIES:
                cache.clear()
            ops = self._group_ops(cache, key)
            priced = tuple(self._op_terms(op, key[-1]) for op in ops)
            launch_s = self.gpu.launch_overhead_s
            seconds = sum(launch_s + max(c, lat + m) for c, lat, m in priced)
            terms = cache[key] = _Terms(seconds, sum(op.hbm_bytes for op in ops), priced)
        return terms

    def _group_ops(self, cache: dict[Any, _Terms], key: Any) -> list[OpSpec]:
        if cache is self._dense:
            return model_ops.dense_layer_ops(self.arch, key[0])
        if cache is self._attn:
            return [model_ops.prefill_attention(self.arch, key[0], key[1])]
        entering, leaving, num_logits, _ = key
        return (model_ops.embedding_ops(self.arch, entering)
                + model_ops.head_ops(self.arch, leaving, num_logits))

    def _price(self, terms: _Terms, contention: float) -> float:
        if contention == 1.0:
            return terms.seconds
        launch_s = self.gpu.launch_overhead_s
        return sum(launch_s + max(c, lat + m * contention) for c, lat, m in terms.ops)

    def _op_terms(self, op: OpSpec, sms: int) -> tuple[float, float, float]:
        flops, compute_eff = _effective_flops(op)
        return self._terms(op.kind, flops, compute_eff, op.hbm_bytes, sms)

    def _terms(
        self, kind: str, flops: float, compute_eff: float, hbm_bytes: float, sms: int
    ) -> tuple[float, float, float]:
        """(compute_s, latency_s, memory_s) of one op; compute_eff 0 = the kind's default."""
        eff, gpu = KERNEL_EFFICIENCY[kind], self.gpu
        compute_rate = gpu.peak_bf16_flops * (compute_eff or eff.compute) * sms / gpu.num_sms
        bandwidth = gpu.hbm_bytes_per_s * eff.memory * min(1.0, sms / gpu.bandwidth_saturation_sms)
        return flops / compute_rate, eff.latency_s, hbm_bytes / bandwidth


_COST_MODELS = ("constant", "roofline")


def make_cost_model(kind: str, arch: ModelArch, gpu: GpuSpec, **params: float) -> CostModel:
    """A cost model by name; `params` are the constant model's fields (none for roofline)."""
    if kind == "constant":
        known = {f.name for f in fields(ConstantCostModel)}
        _reject_unknown(kind, params, known)
        settings: dict[str, Any] = {"num_layers": arch.num_layers, **params}
        return ConstantCostModel(**settings)
    if kind == "roofline":
        _reject_unknown(kind, params, set())
        return RooflineCostModel(arch, gpu)
    raise InputError(f"unknown cost model '{kind}'; known: {', '.join(_COST_MODELS)}")


def _reject_unknown(kind: str, params: dict[str, float], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise InputError(f"cost model '{kind}': unknown parameter '{unknown[0]}' (allowed: {allowed})")
