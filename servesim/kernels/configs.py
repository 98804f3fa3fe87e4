"""Frozen GEMM launch configurations, chosen per (N, K, M bucket); profiling never autotunes.

A configuration is picked by `gemm_config(m, n, k, num_sms)`: an explicit entry of `FROZEN`
for the (N, K) of a known model matrix and the M bucket wins; otherwise a rule based on the
tile count picks one. Both are plain data, so a profile taken today and one taken next month
run the same kernels. The rule's starting points come from research/kernels.md: 128x256x64,
8 warps, 3 stages for the persistent TMA kernel (89-94% of cuBLAS on the H200 probe), and
BLOCK_M 16-64 with split-K for decode sizes, where the GEMM streams weights.
"""

from __future__ import annotations

from dataclasses import dataclass

# M at or below which the split-K weight-streaming kernel is used (decode sizes).
SMALL_M_MAX = 64
# M buckets: a config for bucket b serves every M <= b (the last bucket is open-ended).
M_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class GemmConfig:
    """One launch configuration of a GEMM kernel."""

    kind: str  # "splitk" (small M), "tma" (persistent tensor-descriptor kernel) or "tiled"
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    split_k: int = 0  # 0: derived from the SM count at launch; >= 1: fixed


def m_bucket(m: int) -> int:
    """The smallest bucket that holds m tokens (the last bucket for anything larger)."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


# Explicit choices for model matrices, (N, K) -> {M bucket: config}. Entries here override the
# rule below; they are written from the one-shot search in benchmarks/kernels.py on the H200.
FROZEN: dict[tuple[int, int], dict[int, GemmConfig]] = {
    (4096, 14336): {64: GemmConfig("splitk", 64, 128, 128, 4, 4)},  # 49.8 vs 50.1 us
}


def _rule(m: int, n: int, k: int, num_sms: int) -> GemmConfig:
    # Distilled from the H200 search of 2026-11-29 (benchmarks/results/h200-kernels.json).
    if m <= 16:
        if n >= 16384:
            return GemmConfig("splitk", 16, 64, 256, 4, 3)  # gate_up 28672x4096: 68 vs 78 us
        return GemmConfig("splitk", 16, 32, 128, 4, 6)
    if m <= SMALL_M_MAX:
        bm = 32 if m <= 32 else 64
        if n * k <= 8192 * 8192:
            # Enough N tiles already; split-K partials cost more than they give (25 vs 31 us).
            return GemmConfig("splitk", bm, 64, 128, 4, 4, split_k=1)
        return GemmConfig("splitk", bm, 64, 128, 4, 4)
    tiles_big = -(-m // 128) * -(-n // 256)
    if tiles_big >= 0.7 * num_sms:
        return GemmConfig("tma", 128, 256, 64, 8, 3)
    tiles_mid = -(-m // 128) * -(-n // 128)
    if tiles_mid >= 0.45 * num_sms:
        if k <= 8192:
            return GemmConfig("tma", 128, 128, 128, 8, 3)
        return GemmConfig("tma", 128, 128, 64, 8, 4)
    return GemmConfig("tma", 64, 128, 64, 4, 4)


def gemm_config(m: int, n: int, k: int, num_sms: int) -> GemmConfig:
    """The frozen configuration for out[m, n] = x[m, k] @ w[n, k].T on num_sms SMs."""
    entry = FROZEN.get((n, k), {}).get(m_bucket(m))
    if entry is not None and (entry.kind == "splitk") == (m <= SMALL_M_MAX):
        return entry
    return _rule(m, n, k, num_sms)


def split_k_for(m: int, n: int, k: int, cfg: GemmConfig, num_sms: int) -> int:
    """Split count that gives about two programs per SM without slicing K below 4 tiles."""
    if cfg.split_k > 0:
        return cfg.split_k
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    k_tiles = -(-k // cfg.block_k)
    want = max(1, -(-2 * num_sms // tiles))
    return max(1, min(want, k_tiles // 4, 16))
