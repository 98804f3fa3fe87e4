"""`--validate`: measurements the profile was not built from.

1. Held-out operator shapes: per operator table, random points inside the grid's bounding box
   whose first axis is off the grid (log-uniform integers), timed exactly like the grid.
2. Whole-model iterations of random mixed batches (prefill chunks with prefixes + decodes, or
   decodes only), every layer of the real layer count (forward.py), timed as one engine step.
The prediction errors are computed torch-free from these tables by `servesim.sim.profiled`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from servesim.models.arch import ModelArch
from servesim.models.profile_schema import OP_AXES
from servesim.profiler.grid import Point, ops_points

_NOT_HELD_OUT = {"iteration_fixed", "attn_prefill_packed"}
_DISCRETE_AXES = {"skew"}


def held_out_points(arch: ModelArch, mode: str, per_op: int, seed: int = 1) -> list[Point]:
    """`per_op` random off-grid shapes for every operator table of the grid, each operator's
    in ascending shape order as its grid is timed: the H200 caps its clock for power after a
    run of large GEMMs (down-projection held-out shapes drawn at 26,821, 21,995, then 1,874
    rows: the third measured 340-362 us in three profiles, 295 us timed after smaller shapes,
    beside 290 and 299 us for its grid neighbours at 1,314 and 1,971 rows)."""
    rng = np.random.default_rng(seed)
    grid: dict[str, list[Point]] = {}
    for p in ops_points(arch, mode):
        grid.setdefault(p.op, []).append(p)
    out = []
    for op, pts in grid.items():
        if op in _NOT_HELD_OUT:
            continue
        axes = OP_AXES[op]
        columns = [sorted({getattr(p, f) for p in pts}) for f in "abc"[: len(axes)]]
        on_grid = set(columns[0])
        drawn = []
        for _ in range(per_op):
            values = []
            for name, col in zip(axes, columns, strict=True):
                if name in _DISCRETE_AXES and op != "attn_decode":
                    values.append(float(rng.choice(col)))
                elif name == "skew":
                    values.append(float(round(rng.uniform(col[0], col[-1]), 2)))
                else:
                    values.append(float(_off_grid(rng, col[0], col[-1], on_grid if not values else set())))
            drawn.append(Point("validation_ops", op, *values))
        out += sorted(drawn, key=lambda p: (p.a, p.b, p.c))
    return out


def sweep_order(grid: list[Point], held_out: list[Point]) -> list[Point]:
    """The whole-GPU operator sweep with the held-out shapes in it: operators in the grid's
    order, each one's grid and held-out shapes together in ascending shape order, so a held-out
    shape is timed between its grid neighbours, in the same power state. Timed in a phase of
    their own after the grid, the held-out shapes ran at a lower clock (the H200 was capping
    its power, reason 0x4, in 80-100 % of that phase's clock samples against 18-64 % of the
    grid's in the four profiles shipped before 4680ea6), which the prediction error counted as
    if it were the interpolation's: held-out LM-head GEMMs of 164 and 179 rows measured 443 and
    432 us beside 387 and 399 us for the grid's 173 and 256 rows, all four in one
    configuration."""
    ops = list(dict.fromkeys(p.op for p in grid))
    ops += [op for op in dict.fromkeys(p.op for p in held_out) if op not in ops]
    rank = {op: i for i, op in enumerate(ops)}
    return sorted(grid + held_out, key=lambda p: (rank[p.op], p.a, p.b, p.c, p.table))


def _off_grid(rng: np.random.Generator, lo: float, hi: float, avoid: set[float]) -> int:
    """A log-uniform integer in [lo, hi] (0 allowed as lo) not in `avoid`."""
    for _ in range(100):
        x = int(round(math.exp(rng.uniform(math.log(max(lo, 1)), math.log(max(hi, 1))))))
        if lo == 0 and rng.random() < 0.2:
            x = 0
        if x not in avoid and lo <= x <= hi:
            return x
    return int(hi)


@dataclass(frozen=True, slots=True)
class MixedBatch:
    batch_id: int
    chunks: tuple[tuple[int, int], ...]
    """(new tokens, prefix) per prefill chunk."""
    decode_context: tuple[int, ...]
    sms: int = 0
    """SMs of the partition the pass runs on (0: the whole GPU)."""
    corunner: tuple[int, int] = (0, 0)
    """(decodes, context of each) of a decode-only pass looping on the other SMs meanwhile."""
    corunner_prompt: int = 0
    """Tokens of a prompt-only pass looping on the other SMs meanwhile (0: none)."""

    @property
    def num_logits(self) -> int:
        return len(self.chunks) + len(self.decode_context)

    def row(self) -> dict[str, object]:
        return {"batch_id": self.batch_id,
                "prefill_tokens": " ".join(str(q) for q, _ in self.chunks),
                "prefill_prefix": " ".join(str(p) for _, p in self.chunks),
                "num_decodes": len(self.decode_context),
                "decode_context": sum(self.decode_context),
                "max_decode_context": max(self.decode_context, default=0),
                "num_logits": self.num_logits,
                "corunner_decodes": self.corunner[0],
                "corunner_context": self.corunner[0] * self.corunner[1],
                "corunner_prompt": self.corunner_prompt}


def random_batches(count: int, mode: str, seed: int = 2) -> list[MixedBatch]:
    """Half decode-only (1-256 decodes), half mixed (1-3 chunks of 16-2048 tokens, half of them
    with a prefix of 16-16384 tokens, plus 0-128 decodes); contexts log-uniform 32-8192."""
    rng = np.random.default_rng(seed)
    tiny = mode == "tiny"
    max_q, max_prefix, max_ctx, max_dec = (32, 32, 48, 4) if tiny else (2048, 16384, 8192, 256)

    def loguni(lo: int, hi: int) -> int:
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    out = []
    for i in range(count):
        mixed = i % 2 == 1
        n_dec = loguni(1, max_dec) if not mixed else int(rng.integers(0, max_dec // 2 + 1))
        contexts = tuple(loguni(min(32, max_ctx), max_ctx) for _ in range(n_dec))
        chunks: tuple[tuple[int, int], ...] = ()
        if mixed:
            chunks = tuple((loguni(min(16, max_q), max_q), loguni(16, max_prefix) if rng.random() < 0.5 else 0)
                           for _ in range(int(rng.integers(1, 4))))
        out.append(MixedBatch(i, chunks, contexts))
    return out


PASS_BATCHES = {"tiny": (1, 4), "quick": (1, 2, 4, 8, 16, 32, 64, 256), "full": (1, 2, 4, 8, 16, 32, 64, 128, 256)}
PASS_CONTEXTS = {"tiny": (16, 48), "quick": (512, 4096), "full": (256, 1024, 4096, 16384)}
PASS_SMS = {"tiny": (2,), "quick": (64, 68, 76, 84, 92, 96, 100, 108), "full": (32, 64, 68, 76, 84, 92, 96, 100, 108)}
"""Partitions the passes also run on (besides the whole GPU): the decode shares Nexus picks.
In issue 7's Nexus runs, decode passes on 52-92 SMs measured at their operators' sum (-5..+5 %)
and the factor measured on the whole GPU (0.86-0.93 then) made them 12-16 % fast, so the factor
is measured per share: on each decode lane beside 24-64 prefill SMs (68-108), since a factor
read between 64 and 96 SMs priced passes on 68-84 SMs 2-7 % fast and on 92 2 % slow
(benchmarks/results/h200-lane-fidelity.json): a split-K GEMM's programs fill the SMs in whole
waves, so the time steps with the SM count rather than following a line."""


MIXED_PASS_TOKENS = {"tiny": (16, 32), "quick": (256, 1024, 4096), "full": (256, 1024, 4096, 8192)}
MIXED_PASS_DECODES = {"tiny": (0, 2), "quick": (0, 32), "full": (0, 32, 128)}
MIXED_PASS_CONTEXT = {"tiny": 32, "quick": 2048, "full": 2048}
"""Passes with prefill on the whole GPU: one prompt of each token count (no prefix) plus that
many decodes of this context, against their operators' sum (Qwen2.5-32B's mixed held-out
iterations are 7-8 % slower than it). Measured, not used by the cost model: on the H200 they
are 0.71-1.17 of the sum (0.71-0.92 for a 256-token prompt alone, 1.06-1.13 at 1,024-4,096
tokens on Llama-3.1-8B and Qwen2.5-32B), and scaling passes with prefill by them moved the
held-out mixed iterations of the other three models from -3..+5 % to -2..+12 % (Qwen2.5-32B's
from -8..0 % to +3..+4 %)."""


PREFILL_PASS_TOKENS = {"tiny": (16,), "quick": (256, 512, 1024, 2048), "full": (256, 512, 1024, 2048, 4096)}
PREFILL_PASS_SMS = {"tiny": (2,), "quick": (32, 40, 48, 56, 64, 96), "full": (24, 32, 40, 48, 56, 64, 96)}
PREFILL_PASS_CORUNNERS = {"tiny": ((2, 16),), "quick": ((1, 1024), (2, 1024), (4, 1024), (8, 1024), (16, 1024),
                                                         (32, 1024), (64, 1024)),
                          "full": ((1, 1024), (2, 1024), (4, 1024), (8, 1024), (16, 1024), (32, 1024),
                                   (64, 1024), (128, 1024))}
"""Prompts on partitions (a Nexus prefill lane), alone and beside a decode-only pass of
(decodes, context each) looping on the other SMs. The shares are those Nexus's controller
picked in the validation runs: prefill on 48 SMs at 30-60 % load, on 24-48 at 90 % (32 and 40
for half of its prefill passes), decode batches of 1-40, prefill batches up to its 2,048-token
budget (passes of 1,025-2,048 tokens, priced with 1,024's factor, came out +12 % slow). On the H200 (Llama-3.1-8B, benchmarks/
pass_contention.py) their operators' sum on the share was 3-7 % fast on 48 SMs and up to 10 %
slow on 96, and the contention composed from the operator table missed the whole pass's by
-16..+4 %: 1.51x measured beside 8 decodes against 1.40x composed, 1.31x beside 32 against
1.47x (the decode pass of 8 streams weights without pause; the operator table ranks decode
attention as the harsher co-runner). In the ninth session's Nexus runs, 1,025-2,048-token
prompts beside 1-8 / 9-16 / 17-32 / 33-64 decodes of ~1k context ran 1.35 / 1.23-1.31 /
1.22-1.24 / 1.07x their price alone, and a profile with two co-runners (8 x 1k, 32 x 2k) priced
1.27-1.42x; so the co-runners are one context (the runtime's decodes average 0.3-1.3k) at four
batch sizes, the axis the cost model interpolates. The profile of 191a6f5 (Llama-3.1-8B, 32-64
SMs) measured 1.36-1.59x beside 8 and 16 decodes, 1.27-1.34x beside 32 and 1.29-1.40x beside 64:
not monotonic, because the decode GEMMs change tiling at 17 rows (pass_contention.py --cases
batch: 1.48-1.54x beside 2-16 decodes, 1.24-1.31x beside 20-48), so the cost model reads these
co-runners within their tiling class (models.profile_schema.GEMM_ROW_CLASSES)."""


DECODE_BESIDE_SMS = {"tiny": (2,), "quick": (68, 76, 84, 92, 100), "full": (68, 76, 84, 92, 100, 108)}
DECODE_BESIDE_BATCHES = {"tiny": (2,), "quick": (8, 32), "full": (8, 32, 128)}
DECODE_BESIDE_CONTEXT = {"tiny": 16, "quick": 2048, "full": 2048}
"""Decode-only passes on a partition (a Nexus decode lane: the complements of 48 and 64 SMs)
alone and beside a prompt of each of PREFILL_PASS_TOKENS looping on the other SMs; the cost
model carries the slowdown measured (beside / alone) onto its price alone. The operator
table's contention for this direction moved between two profiles of Llama-3.1-8B taken hours
apart on the H200 from 1.03-1.12x to 1.30-1.55x for passes measured at 1.08-1.16x
(benchmarks/pass_contention.py); the whole pass measured beside its co-runner sets it."""


def calibration_passes(mode: str, partitions: bool = True) -> list[MixedBatch]:
    """The `passes` table's batches: decode-only ones (every decode with the same context) on
    the whole GPU and (with `partitions`) on each of PASS_SMS, then the mixed ones, then (with
    `partitions`) prompts on each of PREFILL_PASS_SMS alone and beside each decode co-runner,
    and decode-only passes on each of DECODE_BESIDE_SMS alone and beside each prompt."""
    shares = (0, *PASS_SMS[mode]) if partitions else (0,)
    grid = [(sms, n, ctx) for sms in shares for n in PASS_BATCHES[mode] for ctx in PASS_CONTEXTS[mode]]
    out = [MixedBatch(i, (), (ctx,) * n, sms) for i, (sms, n, ctx) in enumerate(grid)]
    ctx = MIXED_PASS_CONTEXT[mode]
    mixed = [(q, n) for q in MIXED_PASS_TOKENS[mode] for n in MIXED_PASS_DECODES[mode]]
    out += [MixedBatch(len(out) + i, ((q, 0),), (ctx,) * n) for i, (q, n) in enumerate(mixed)]
    if not partitions:
        return out
    lanes = [(sms, q, cor) for sms in PREFILL_PASS_SMS[mode] for q in PREFILL_PASS_TOKENS[mode]
             for cor in ((0, 0), *PREFILL_PASS_CORUNNERS[mode])]
    out += [MixedBatch(len(out) + i, ((q, 0),), (), sms, cor) for i, (sms, q, cor) in enumerate(lanes)]
    ctx = DECODE_BESIDE_CONTEXT[mode]
    beside = [(sms, n, q) for sms in DECODE_BESIDE_SMS[mode] for n in DECODE_BESIDE_BATCHES[mode]
              for q in (0, *PREFILL_PASS_TOKENS[mode])]
    return out + [MixedBatch(len(out) + i, (), (ctx,) * n, sms, corunner_prompt=q) for i, (sms, n, q) in enumerate(beside)]

