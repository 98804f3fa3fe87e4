"""GPU specifications the analytic cost model divides by: measured ceilings, not datasheet peaks.

Every H200 number below comes from shared/reference/H200.md (probe of 2026-11-29 on the lent
H200: torch 2.11, triton 3.6, CUDA 13.0, 132 SMs, SM clock 1980 MHz). The H100 preset has no
measurement of its own: it takes the public H100 SXM5 datasheet and applies the same
measured-over-datasheet ratios found on the H200 (same GH100 die, clocks and power limit).
Below the presets: what each kind of kernel reaches relative to those ceilings (the roofline
cost model's efficiencies), with the measurement behind every number.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import InputError

_GIB = 2**30


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU as the roofline model sees it."""

    name: str
    num_sms: int
    memory_bytes: int
    """HBM a process can allocate (what torch reports as total), not the datasheet figure."""
    peak_bf16_flops: float
    """Dense BF16 FLOP/s that a large cuBLAS GEMM reaches (measured, not the datasheet)."""
    hbm_bytes_per_s: float
    """Device-to-device copy bandwidth, read + write bytes counted (measured)."""
    launch_overhead_s: float
    """Fixed cost every kernel pays on top of its roofline time (launch gap + ramp)."""
    sm_step: int = 8
    """Granularity of SM partitions (green contexts round sizes up to multiples of 8)."""
    bandwidth_saturation_sms: int = 48
    """SMs a well-pipelined memory-bound kernel needs to reach full HBM bandwidth."""

    def __post_init__(self) -> None:
        if self.num_sms <= 0 or self.bandwidth_saturation_sms <= 0 or self.sm_step <= 0:
            raise ValueError(f"GpuSpec {self.name}: SM counts must be positive")


H200 = GpuSpec(
    name="h200",
    num_sms=132,
    # H200.md: 139.8 GiB usable of the 141 GB on the datasheet.
    memory_bytes=int(139.8 * _GIB),
    # H200.md: cuBLAS bf16 GEMM 8192^3 = 766 TFLOP/s (datasheet 989; Llama-3-8B shapes at
    # M >= 2048 reach 700-760). Per-op efficiencies in cost_model.py are relative to this.
    peak_bf16_flops=766e12,
    # H200.md: device-to-device copy of 2 GiB = 4.24 TB/s (datasheet 4.8), spread 0.03%.
    hbm_bytes_per_s=4.24e12,
    # Not measured in H200.md: an assumed 2 us per kernel for the gap between back-to-back
    # kernels of a CUDA graph; the profiled cost model measures what replaces it.
    launch_overhead_s=2e-6,
    # H200.md: green contexts round partitions up to multiples of 8 SMs (33 -> 40).
    sm_step=8,
    # H200.md / kernels.md 4.4: a pipelined copy saturates HBM at about 48 SMs (4.07 TB/s on
    # 48 SMs vs 4.00-4.06 on 64-132).
    bandwidth_saturation_sms=48,
)

# Public H100 SXM5 datasheet: 132 SMs, 80 GB HBM3 at 3.35 TB/s, 989 TFLOP/s dense BF16 (the
# same number as the H200: same die, clocks and 700 W limit). Scaled like the H200 measurement:
# compute 766/989 of the datasheet, copy bandwidth 4.24/4.8, usable memory 139.8 GiB/141 GB.
H100 = GpuSpec(
    name="h100",
    num_sms=132,
    memory_bytes=int(80 * 139.8 / 141 * _GIB),
    peak_bf16_flops=989e12 * 766 / 989,
    hbm_bytes_per_s=3.35e12 * 4.24 / 4.8,
    launch_overhead_s=2e-6,
    sm_step=8,
    # kernels.md 4.4: a copy moves about 89-96 GB/s per SM (R+W); 2.96 TB/s / 92 GB/s ~ 32 SMs.
    bandwidth_saturation_sms=32,
)

@dataclass(frozen=True, slots=True)
class KindEfficiency:
    """What one kind of kernel reaches, as fractions of the GpuSpec's measured ceilings."""

    compute: float
    """Fraction of peak_bf16_flops."""
    memory: float
    """Fraction of hbm_bytes_per_s."""
    latency_s: float = 0.0
    """Fixed cost of the memory path beyond the launch (pipeline fill, split-K reduction)."""


# What each kind of kernel reaches on the H200, relative to the ceilings above (H200.md and
# research/kernels.md, all measured on our card). The H100 preset reuses them (same die).
_ELEMENTWISE = KindEfficiency(compute=0.5, memory=0.94)
"""Triton copy 4.0 TB/s vs torch copy 4.24 (kernels.md 1) for norms, RoPE, SiLU-mul and the
like; their FLOPs are ~100x below the ridge, so the compute fraction never binds."""
KERNEL_EFFICIENCY: dict[str, KindEfficiency] = {
    # cuBLAS Llama-3-8B GEMMs: at M >= 2048 702-759 TFLOP/s, i.e. 0.92-0.99 of 766 -> 0.94.
    # At M = 1-16 the four shapes fit t = 10.8 us + weight bytes / 4.05 TB/s within 5%
    # (O 19.1 us for 33.5 MB, gate_up 68.8 us for 235 MB): memory 4.05/4.24 = 0.955, latency
    # 10.8 us minus the 2 us launch. That fit is the measured 2.2-3.4 TB/s "weight streaming".
    "gemm": KindEfficiency(compute=0.94, memory=0.955, latency_s=8.8e-6),
    # Grouped (fused) MoE GEMM, not measured here: kernels.md 3 targets >= 60-70% of HBM when
    # streaming active experts (Liger on H100: 2.05 of 3.35 TB/s = 0.61) and 50-60% of dense
    # GEMM TFLOP/s in prefill -> 0.65 and 0.55 * 0.94 = 0.52.
    "moe_gemm": KindEfficiency(compute=0.52, memory=0.65, latency_s=8.8e-6),
    # SDPA decode, GQA 32/8, d=128: time = 13.7 us + KV bytes / 4.62 TB/s fits B=1 4k
    # (0.97 TB/s), B=32 2k (3.57, fit 3.74), B=64 4k (4.29, fit 4.36), B=128 8k (4.56).
    # 4.62 > the 4.24 copy because decode reads only (copy counts read + write).
    "attn_decode": KindEfficiency(compute=0.5, memory=4.62 / 4.24, latency_s=11.7e-6),
    # Prefill attention compute follows PREFILL_ATTN_TFLOPS below (compute=1.0 is unused);
    # KV reads as a copy.
    "attn_prefill": KindEfficiency(compute=1.0, memory=0.94),
    "kv_write": _ELEMENTWISE, "norm": _ELEMENTWISE, "rope": _ELEMENTWISE, "act": _ELEMENTWISE,
    "router": _ELEMENTWISE, "sample": _ELEMENTWISE, "embed": _ELEMENTWISE,
}
# torch SDPA causal prefill on the H200, 32 q / 8 kv heads, d=128: (S, TFLOP/s). Short
# sequences fill few SMs; cost_model reads a chunk at the causal S of equal work.
PREFILL_ATTN_TFLOPS = ((512, 132.0), (2048, 402.0), (8192, 563.0), (32768, 601.0))
# cuBLAS on Hopper tiles M by 64 (small M) or 128; a 257-row GEMM computes 384 rows.
GEMM_TILE_SMALL, GEMM_TILE = 64, 128
# Fused MoE pads each active expert's rows to its M tile (64): half a tile wasted on average.
MOE_TILE = 64
# HBM contention from the other SM partition (H200.md, kernels.md 4.5): a read kernel on 32
# SMs ran 1.62x slower next to a copy on 100 SMs (demand 4.0/4.24 = 0.94 of HBM) and 1.16x next
# to a GEMM (ideal demand 0.05). Memory-path slowdown = 1 + base + per_demand * demand fits
# both; single runs, and the 64+68 split read next to a GEMM saw only 1.01.
CORUN_BASE = 0.135
CORUN_PER_DEMAND = 0.515

_GPUS: dict[str, GpuSpec] = {gpu.name: gpu for gpu in (H200, H100)}


def list_gpus() -> list[str]:
    return sorted(_GPUS)


def get_gpu(name: str) -> GpuSpec:
    """A preset by (case-insensitive) name; an unknown name is an InputError listing them."""
    gpu = _GPUS.get(name.lower())
    if gpu is None:
        raise InputError(f"unknown GPU '{name}'; known GPUs: {', '.join(list_gpus())}")
    return gpu
