"""What the profiler measures for one model: every point of every table, as plain data.

GEMM rows follow the frozen launch configurations (`servesim.kernels.configs`): besides a
geometric ladder, both sides of every step of the tile/wave count are measured while a step is
still large (few waves), so linear interpolation between neighbours is exact across the steps.
Grid sizes: `full` (the shipped default), `quick` (fewer points and partitions) and `tiny`
(CPU dry runs under TRITON_INTERPRET=1 on toy models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servesim.kernels.configs import gemm_config, split_k_for
from servesim.models.arch import ModelArch
from servesim.models.ops import gemm_shapes
from servesim.models.profile_schema import CONTENTION_TARGETS, CORUNNERS, GEMM_ROW_CLASSES

MODES = ("full", "quick", "tiny")
_MOE_ELEMENTWISE = ("topk_softmax", "moe_align", "moe_silu_mul")
"""Timed on the MoE token grid, where `moe_combine` is derived (fused MoE minus its parts)."""
SM_COUNT_H200 = 132


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: `op` at axes (a, b, c) on `sms` SMs (0 = the whole GPU, default
    stream), next to `corunner` on `corunner_sms` SMs ('' = alone)."""

    table: str
    op: str
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    sms: int = 0
    corunner: str = ""
    corunner_sms: int = 0

    @property
    def key(self) -> str:
        return f"{self.table}|{self.op}|{self.a:g}|{self.b:g}|{self.c:g}|{self.sms}|{self.corunner}|{self.corunner_sms}"


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Axis values of one grid size."""

    max_tokens: int
    ladder_ratio: float
    fine_ladder: tuple[float, int]
    """(ratio, up to): a finer ladder for GEMM rows and MoE tokens at small counts, where a
    time moves by 5-15 % between points of one configuration (alignment, the last wave's
    fill) that a 1.5x ladder cannot follow (issue 4: held-out `o` GEMMs of 269-303 rows and
    MoE up-projections of 496 tokens 10-14 % off the shipped quick profiles)."""
    max_waves: int
    elementwise_tokens: tuple[int, ...]
    prefill_q: tuple[int, ...]
    prefill_prefix: tuple[int, ...]
    packed_q: tuple[int, ...]
    packed_seqs: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_context: tuple[int, ...]
    decode_skew: tuple[int, ...]
    sample_rows: tuple[int, ...]
    sm_counts: tuple[int, ...]
    split_sms: tuple[int, ...]
    """Decode-partition sizes of the contention splits (the prefill side gets the rest)."""
    share_tokens: tuple[int, ...]
    share_prefill: tuple[tuple[int, ...], tuple[int, ...]]
    """(q, prefix) axes of prefill attention inside partitions (a subset of the ops grid)."""
    share_decode: tuple[tuple[int, ...], tuple[int, ...]]
    """(batch, context) axes of decode attention inside partitions."""
    share_gemm_rows: tuple[int, ...] = ()
    """GEMM rows inside partitions beyond share_tokens: both sides of each step in the kernels'
    tiling (models.profile_schema.GEMM_ROW_CLASSES), so a partition's ratio is read within the
    tiling that runs (one interpolated from 1 and 64 rows priced 20-24 decodes on 92 SMs 6-9 %
    high, benchmarks/results/h200-pass-contention-batch.json)."""


# Elementwise grids hold 16 and 17 tokens: the embedding gather (torch.index_select) steps
# there on the H200, 11.6 us at 16 rows and 1.9 us at 17 (2.1 at 32), so a point between two
# others farther apart was priced at ~11 us (the dense quick profile of 4c5a36d,
# benchmarks/results/h200-profile-llama-3.1-8b-dense/).


def _class_edges() -> tuple[int, ...]:
    """The last row of each GEMM tiling class and the first of the next: 16, 17, 32, 33, 64, 65."""
    return tuple(sorted({r + d for r in GEMM_ROW_CLASSES for d in (0, 1)}))


def _pow2(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(int(math.log2(lo)), int(math.log2(hi)) + 1))


def _decode_batches(hi: int) -> tuple[int, ...]:
    """Decode attention's batch axis: powers of two, and from 64 up the point halfway between
    each two. Above 33 sequences (8 KV heads, 132 SMs) a launch has one split and its programs,
    8 per sequence and 528 at a time, run in waves: the first ends at 66 sequences, the second
    at 132. Between 64 and 128 a straight line priced the served decode batches of 84-102
    sequences' attention 7-12 % under their replayed time (benchmarks/results/
    h200-served-replay.json), those of 64-78 within 3 %."""
    return tuple(sorted({*_pow2(1, hi), *(3 * 2**i for i in range(5, int(math.log2(hi))) if 3 * 2**i < hi)}))


def _complements(shares: range, num_sms: int = SM_COUNT_H200) -> tuple[int, ...]:
    """The other side of each split of the GPU into `shares` and the rest. Green contexts split
    SMs in steps of 8, so the side that gets the rest of the H200's 132 is 4 past a multiple of
    8 (a Nexus decode lane beside 24-64 prefill SMs: 68-108), never on an 8-step grid; read
    between the 64- and 96-SM grids, decode passes on 68-84 SMs ran 2-7 % over their price
    (benchmarks/lane_fidelity.py, benchmarks/results/h200-lane-fidelity.json)."""
    return tuple(num_sms - n for n in shares)


SPECS: dict[str, GridSpec] = {
    "full": GridSpec(
        max_tokens=32768, ladder_ratio=1.25, fine_ladder=(1.25, 0), max_waves=16,
        elementwise_tokens=_pow2(1, 32768) + (3, 6, 12, 17, 24, 48, 96, 192, 384, 768, 1536, 3072, 6144, 12288,
                                              24576),
        prefill_q=(1, 4) + _pow2(16, 32768), prefill_prefix=(0, 512, 2048, 8192, 32768),
        packed_q=(16, 64, 256, 1024), packed_seqs=(1, 2, 4, 8, 16),
        decode_batch=_decode_batches(512), decode_context=(32, 128, 512, 1024, 2048, 4096, 8192, 16384),
        decode_skew=(1, 2, 4, 8), sample_rows=_pow2(1, 4096),
        sm_counts=tuple(sorted({*range(8, 132, 8), *_complements(range(24, 65, 8))})),
        split_sms=(16, 32, 48, 64, 80, 96),
        share_tokens=(1, 16, 64, 256, 1024, 4096, 16384),
        share_prefill=((128, 1024, 8192), (0, 8192)),
        share_decode=((1, 16, 128), (512, 4096)),
        share_gemm_rows=_class_edges(),
    ),
    "quick": GridSpec(
        max_tokens=32768, ladder_ratio=1.5, fine_ladder=(1.25, 4096), max_waves=8,
        elementwise_tokens=(1, 2, 4, 8, 16, 17, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096,
                            8192, 16384, 32768),
        prefill_q=(1, 16, 64, 256, 512, 768, 1024, 2048, 4096, 8192, 16384),
        prefill_prefix=(0, 512, 2048, 8192, 32768),
        packed_q=(16, 128, 1024), packed_seqs=(1, 4, 16),
        decode_batch=_decode_batches(256), decode_context=(64, 512, 2048, 8192, 16384),
        decode_skew=(1, 2, 4, 8), sample_rows=_pow2(1, 4096),
        sm_counts=tuple(sorted({8, 16, 24, 32, 40, 48, 56, 64, 96, 120, 128, *_complements(range(24, 65, 8))})),
        split_sms=(16, 32, 64, 96),
        share_tokens=(1, 64, 256, 512, 1024, 4096, 16384),
        share_prefill=((256, 1024, 4096), (0, 2048, 8192)),
        share_decode=((1, 16, 256), (512, 2048)),
        share_gemm_rows=_class_edges(),
    ),
    "tiny": GridSpec(
        max_tokens=64, ladder_ratio=2.0, fine_ladder=(2.0, 0), max_waves=2,
        elementwise_tokens=(1, 8, 64), prefill_q=(1, 16, 64), prefill_prefix=(0, 32),
        packed_q=(16,), packed_seqs=(1, 2), decode_batch=(1, 4), decode_context=(16, 64),
        decode_skew=(1, 2), sample_rows=(1, 8, 64), sm_counts=(2,), split_sms=(2,),
        share_tokens=(1, 64), share_prefill=((16,), (0,)), share_decode=((1,), (64,)),
    ),
}


def _ladder(hi: int, ratio: float) -> set[int]:
    out, x = {1}, 1.0
    while x < hi:
        x = max(x * ratio, x + 1)
        out.add(min(hi, round(x)))
    return out


def _ladders(hi: int, spec: GridSpec) -> set[int]:
    """The spec's geometric ladder up to `hi`, finer below its `fine_ladder` bound."""
    ratio, fine_max = spec.fine_ladder
    return _ladder(hi, spec.ladder_ratio) | _ladder(min(hi, fine_max), ratio)


def _gemm_step_key(m: int, n: int, k: int, sms: int) -> tuple[int, ...]:
    cfg = gemm_config(m, n, k, sms)
    if cfg.kind == "splitk":
        return (0, cfg.block_m, split_k_for(m, n, k, cfg, sms))
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    programs = min(sms, tiles)
    return (1, cfg.block_m, cfg.block_n, -(-tiles // programs))


def gemm_rows(n: int, k: int, spec: GridSpec, max_m: int, sms: int = SM_COUNT_H200) -> list[int]:
    """Rows to time a GEMM at: a geometric ladder plus both sides of every configuration step
    (another kernel, tile or split count: the time can jump by any amount, the LM head's
    doubles at some) and of every wave step up to `spec.max_waves` waves (beyond, a wave step
    is < 1/max_waves of the time)."""
    rows = _ladders(max_m, spec) | set(spec.share_tokens)
    prev = _gemm_step_key(1, n, k, sms)
    for m in range(2, max_m + 1):
        key = _gemm_step_key(m, n, k, sms)
        if key != prev and (key[:-1] != prev[:-1] or key[-1] <= spec.max_waves):
            rows |= {m - 1, m}
        prev = key
    return sorted(r for r in rows if r <= max_m)


def moe_tokens(arch: ModelArch, spec: GridSpec) -> list[int]:
    """Token counts for MoE: dense at small counts (experts hit grows fast there) and both
    sides of the fused-MoE block-size switches (16 and 64 rows per expert on average)."""
    tokens = _ladders(spec.max_tokens, spec) | set(spec.share_tokens)
    tokens |= set(range(1, min(16, spec.max_tokens) + 1, 1 if spec.max_tokens <= 64 else 2))
    for per_expert in (16, 64):
        t = per_expert * arch.num_experts // arch.num_experts_per_tok
        tokens |= {t, t + 1}
    return sorted(t for t in tokens if t <= spec.max_tokens)


def elementwise_ops(arch: ModelArch) -> list[str]:
    ops = ["rmsnorm", "rope", "kv_write", "embedding"]
    if arch.qk_norm:
        ops.append("qk_norm")
    if arch.is_moe:
        ops += ["topk_softmax", "moe_align", "moe_silu_mul"]
        if arch.shared_expert_intermediate_size:
            ops.append("shared_silu_mul")
    else:
        ops.append("silu_mul")
    return ops


def ops_points(arch: ModelArch, mode: str) -> list[Point]:
    """The `ops` table: every operator over its axes on the whole GPU."""
    spec = SPECS[mode]
    pts = [Point("ops", "iteration_fixed")]
    for op, (n, k) in gemm_shapes(arch).items():
        max_m = min(spec.max_tokens, 4096) if op == "lm_head" else spec.max_tokens
        pts += [Point("ops", op, m) for m in gemm_rows(n, k, spec, max_m)]
    for op in elementwise_ops(arch):
        tokens = moe_tokens(arch, spec) if op in _MOE_ELEMENTWISE else spec.elementwise_tokens
        pts += [Point("ops", op, t) for t in tokens]
    pts += [Point("ops", "sample", r) for r in spec.sample_rows]
    pts += [Point("ops", "attn_prefill", q, p) for q in spec.prefill_q for p in spec.prefill_prefix]
    pts += [Point("ops", "attn_prefill_packed", q, p, s) for q in spec.packed_q
            for p in spec.prefill_prefix[:2] for s in spec.packed_seqs]
    pts += [Point("ops", "attn_decode", b, ctx, sk) for b in spec.decode_batch
            for ctx in spec.decode_context for sk in spec.decode_skew]
    if arch.is_moe:
        for t in moe_tokens(arch, spec):
            pts += [Point("ops", op, t, skew) for op in ("moe_fused", "moe_gate_up", "moe_down")
                    for skew in (0, 1)]
    return pts


def share_points(arch: ModelArch, mode: str) -> list[Point]:
    """The `sm_shares` table: a coarse subset of the ops grid inside each partition size."""
    spec = SPECS[mode]
    base: list[Point] = []
    gemms = list(gemm_shapes(arch))
    for op in gemms + elementwise_ops(arch) + ["sample"]:
        tokens = [t for t in spec.share_tokens if (op not in ("lm_head", "sample") or t <= 4096)
                  and (op != "sample" or t in spec.sample_rows)]
        if op in gemms:
            tokens = sorted(set(tokens) | set(spec.share_gemm_rows))
        base += [Point("sm_shares", op, t) for t in tokens]
    base += [Point("sm_shares", "attn_prefill", q, p) for q in spec.share_prefill[0]
             for p in spec.share_prefill[1]]
    base += [Point("sm_shares", "attn_decode", b, ctx, 1) for b in spec.share_decode[0]
             for ctx in spec.share_decode[1]]
    if arch.is_moe:
        base += [Point("sm_shares", op, t, 0) for op in ("moe_gate_up", "moe_down")
                 for t in spec.share_tokens]
    return [Point(p.table, p.op, p.a, p.b, p.c, sms) for sms in spec.sm_counts for p in base]


def contention_targets(arch: ModelArch, mode: str) -> dict[str, Point]:
    """Representative operator of each target class (CONTENTION_TARGETS), as an ops point."""
    gemm = "qkv" if arch.is_moe else "gate_up"
    small = 64 if mode != "tiny" else 8
    large = 4096 if mode != "tiny" else 64
    ctx = 4096 if mode != "tiny" else 64
    targets = {
        "attn_decode": Point("ops", "attn_decode", small, ctx, 1),
        "gemm_small": Point("ops", gemm, small),
        "elementwise": Point("ops", "rmsnorm", large),
        "gemm_large": Point("ops", gemm, large),
        "attn_prefill": Point("ops", "attn_prefill", large // 2, 0),
    }
    assert tuple(targets) == CONTENTION_TARGETS
    return targets


def corunner_ops(arch: ModelArch, mode: str) -> dict[str, Point]:
    """The operator each co-runner class loops (long enough to outlast the target's timing)."""
    gemm = "qkv" if arch.is_moe else "gate_up"
    big = 8192 if mode != "tiny" else 64
    corunners = {
        "decode_attn": Point("ops", "attn_decode", 128 if mode != "tiny" else 4, big // 2, 1),
        "decode_gemm": Point("ops", gemm, 64 if mode != "tiny" else 8),
        "prefill_gemm": Point("ops", gemm, big),
        "prefill_attn": Point("ops", "attn_prefill", big // 2, big // 2),
    }
    assert tuple(corunners) == CORUNNERS
    return corunners


def contention_points(arch: ModelArch, mode: str, num_sms: int = SM_COUNT_H200) -> list[Point]:
    """Every target class on both sides of each split, next to every co-runner class."""
    pts = []
    for n in SPECS[mode].split_sms:
        for sms, other in ((n, num_sms - n), (num_sms - n, n)):
            for target, op in contention_targets(arch, mode).items():
                pts += [Point("contention", target, op.a, op.b, op.c, sms, cor, other)
                        for cor in CORUNNERS]
    return pts


def all_points(arch: ModelArch, mode: str, num_sms: int = SM_COUNT_H200) -> list[Point]:
    if mode not in MODES:
        raise ValueError(f"grid mode must be one of {MODES}, got {mode!r}")
    return ops_points(arch, mode) + share_points(arch, mode) + contention_points(arch, mode, num_sms)
