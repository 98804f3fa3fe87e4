"""Launch structure of servesim's attention kernels, torch-free, for the profiled cost model.

`profile_tables.OpTable` interpolates measured attention time divided by a structural estimate
of it, so steps that the grid does not resolve come from the kernels' launch rules instead of
a straight line between grid points. Two matter: the decode split count falls from 9 to 3
between the grid's batches 4 and 16 (8 KV heads on 132 SMs), so at batch 11 the longest
program already walks a third of the context, as at batch 16; and prefill attention goes from
one wave of programs to several between the grid's q = 256 and 1024.

The estimate counts programs and tiles of 64 keys per program: prefill attention as the
makespan of its programs started in launch order on free SMs; decode attention (priced at
every decode step, so closed-form) as the two bounds of that schedule, the longest program and
the work per program slot. The functions mirror the GPU launchers of
servesim.kernels.attention_decode and attention_prefill (sim never imports kernels;
tests/test_profiled_cost_model.py pins the split rule against the launcher's).

GEMMs get the same treatment: their time steps with the tile and wave counts of the frozen
launch configurations (servesim.kernels.configs, mirrored by `gemm_tiling` and pinned to it by
a test), and the profile resolves those steps only while they are large (up to `max_waves`
waves of the grid). Beyond, a straight line between two grid points a few waves apart priced
the gate-up projection of a 1,152-row Llama pass (8 waves, as at 1,059 rows) 7 % above its time,
the serving runs' 1,025-1,400-token prompts 3-4 % above theirs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import NamedTuple

from servesim.models.arch import ModelArch

KEY_TILE = 64
"""BLOCK_N of both attention kernels on the GPU: keys per inner-loop step."""
PROGRAM_TILES = 1.0
"""Per program: loading q and writing the output, about one key tile's time."""
_DECODE_PROGRAMS_PER_SM = 2
"""Stage 1 of decode holds 3 stages of 64x128 K and V (96 KB): two programs per SM."""
_PREFILL_BLOCK_M = 128
"""Query rows (tokens x grouped heads) per prefill program; 128 KB of shared memory: one per SM."""


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, num_sms: int) -> int:
    """attention_decode.decode_num_splits: about two programs per SM, >= 256 tokens a split."""
    want = -(-2 * num_sms // max(1, num_seqs * num_kv_heads))
    return max(1, min(want, max_context_len // 256, 64))


def decode_terms(arch: ModelArch, num_sms: int, x: tuple[float, ...]) -> list[float]:
    """[1, max, min of (longest program, work per program slot) in key tiles, 1 if a merge
    kernel runs] for `batch` decodes of `mean` context, the longest `skew` x the mean and the
    others equal (the profiler's shapes: profiler/operators.py decode_contexts)."""
    batch, mean, skew = max(1, round(x[0])), max(x[1], 1.0), x[2]
    longest = float(int(min(max(skew, 1.0), batch) * mean + 1e-6))  # whole tokens, as the profiler's
    units = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    return [decode_estimate(arch, num_sms, batch, u)(batch * mean, longest) for u in units]


def decode_estimate(arch: ModelArch, num_sms: int, batch: int, scale: tuple[float, ...], rows: int = 0
                    ) -> Callable[[float, float], float]:
    """scale . decode_terms at `batch` decodes as a function of (total context, longest
    context; the others equal): priced at every decode step, so all else is bound here.
    `rows` > batch: a launch padded to that many rows (a decode graph's), the split count the
    batch's own, each padding row one token: its programs still take their PROGRAM_TILES of a
    slot (on the H200, 9 decodes in a 16-row launch: 27-54 us a pass over a launch of 9 rows,
    benchmarks/lane_fidelity.py --kernels)."""
    c0, c1, c2, c3 = scale
    wanted = decode_num_splits(batch, arch.num_kv_heads, 1 << 20, num_sms)  # the SM-budget term
    per_slot = arch.num_kv_heads / (_DECODE_PROGRAMS_PER_SM * num_sms)
    launched = max(rows, batch)

    def estimate(total: float, longest: float) -> float:
        splits = longest // 256 if longest < 256 * wanted else wanted
        if splits > 1:  # the launcher's tokens a split: a whole number of key tiles
            tiles = -(-longest // (splits * KEY_TILE))
            splits = -(-longest // (tiles * KEY_TILE))
            merge = c3
        else:
            tiles, splits, merge = -(-longest // KEY_TILE), 1, 0.0
        program = tiles + PROGRAM_TILES
        tokens = total if total > longest + batch - 1 else longest + batch - 1  # others >= 1 token
        slot = per_slot * ((tokens + launched - batch) / KEY_TILE + launched * splits * PROGRAM_TILES)
        return c0 + (c1 * program + c2 * slot if program > slot else c1 * slot + c2 * program) + merge

    return estimate


def prefill_terms(arch: ModelArch, num_sms: int, x: tuple[float, ...]) -> list[float]:
    """[1, makespan in key tiles] of `seqs` (x[2], default 1) equal chunks of q new tokens over a
    prefix: program i of a chunk holds BLOCK_M // G tokens and walks the keys up to its last
    token; programs start in launch order (per KV head and chunk, longest first), each on the
    first free SM, one per SM (128 KB of shared memory). Between one and a few waves the
    makespan is not the work per SM: 176 near-equal programs take two rounds on 132 SMs,
    1.5x the work per SM (Llama, q = 689 over a 14k-token prefix)."""
    q, prefix = max(round(x[0]), 1), x[1]
    heads = arch.num_kv_heads * max(round(x[2]), 1) if len(x) > 2 else arch.num_kv_heads
    group = arch.num_heads // arch.num_kv_heads
    block_q = max(_PREFILL_BLOCK_M, 1 << (group - 1).bit_length()) // group
    blocks = -(-q // block_q)
    tiles = [math.ceil((prefix + min((i + 1) * block_q, q)) / KEY_TILE) + PROGRAM_TILES
             for i in range(blocks - 1, -1, -1)]
    return [1.0, _makespan(tiles, heads, num_sms)]


def _makespan(tiles: list[float], repeats: int, slots: int) -> float:
    """Greedy list scheduling of `tiles` (longest first) repeated `repeats` times on `slots`."""
    if len(tiles) * repeats <= slots:
        return tiles[0]
    jobs = tiles * repeats
    free = jobs[:slots]
    heapq.heapify(free)
    for t in jobs[slots:]:
        heapq.heapreplace(free, free[0] + t)
    return max(free)


class GemmTiling(NamedTuple):
    """What sets a GEMM launch's work per SM: its kernel, tile and split count."""

    kind: str
    block_m: int
    block_n: int
    splits: int


_SMALL_M_MAX = 64
_FROZEN_SPLITK = {(4096, 14336): (33, 64, (64, 128, 128))}
"""kernels.configs.FROZEN: (N, K) -> (first M, last M, (BLOCK_M, BLOCK_N, BLOCK_K)) of its
split-K entries (the M bucket 64)."""


def gemm_tiling(m: int, n: int, k: int, num_sms: int) -> GemmTiling:
    """kernels.configs.gemm_config and split_k_for, reduced to the tiling (the rule is plain
    data; a test checks the two agree on every GEMM of the shipped models)."""
    frozen = _FROZEN_SPLITK.get((n, k))
    if frozen is not None and frozen[0] <= m <= frozen[1]:
        (bm, bn, bk), fixed = frozen[2], 0
    elif m <= 16:
        bm, bn, bk, fixed = (16, 64, 256, 0) if n >= 16384 else (16, 32, 128, 0)
    elif m <= _SMALL_M_MAX:
        bm, bn, bk, fixed = (32 if m <= 32 else 64), 64, 128, (1 if n * k <= 8192 * 8192 else 0)
    else:
        if -(-m // 128) * -(-n // 256) >= 0.7 * num_sms:
            return GemmTiling("tma", 128, 256, 1)
        if -(-m // 128) * -(-n // 128) >= 0.45 * num_sms:
            return GemmTiling("tma", 128, 128, 1)
        return GemmTiling("tma", 64, 128, 1)
    if fixed:
        return GemmTiling("splitk", bm, bn, fixed)
    tiles = -(-m // bm) * -(-n // bn)
    want = max(1, -(-2 * num_sms // tiles))
    splits = max(1, min(want, -(-k // bk) // 4, 16))
    return GemmTiling("splitk", bm, bn, splits)


def gemm_terms(n: int, k: int, num_sms: int, x: tuple[float, ...]) -> list[float]:
    """[1, compute, bytes] of out[m, n] = x[m, k] @ w[n, k].T: compute is the multiply-adds of
    the SM with the most tiles (the persistent kernel: whole waves of tiles; split-K: its
    programs spread evenly, several to an SM), bytes what the launch moves through HBM (inputs,
    output, split-K's fp32 partials written and read back)."""
    m = max(round(x[0]), 1)
    t = gemm_tiling(m, n, k, num_sms)
    tiles = -(-m // t.block_m) * -(-n // t.block_n)
    waves = -(-tiles // min(num_sms, tiles)) if t.kind == "tma" else tiles / num_sms
    compute = waves * t.block_m * t.block_n * k
    partials = 8 * t.splits * m * n if t.splits > 1 else 0
    return [1.0, float(compute), float(2 * (m * k + n * k + m * n) + partials)]
