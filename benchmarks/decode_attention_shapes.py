"""Decode attention over batches of the same size and total context but different spreads of
context, on the GPU: what the profile's shapes (`servesim.profiler.operators.decode_contexts`:
all equal, or one straggler beside equal others) leave out of a serving batch, whose contexts
spread from short to long, in any order, padded by the runtime's decode graphs with rows of
one token up to a captured size.

Per batch size it times servesim's decode attention kernel (one layer, L2 flushed, CUDA-graph
replays: the profiler's Timer) on these contexts, each with the same mean:

- `equal`: every sequence at the mean (the profile's skew 1);
- `straggler`: one at SKEW x the mean, the others equal (the profile's skew axis);
- `spread`: the longest SKEW x the mean, the others rising from short to long as u^(SKEW-1)
  (`spread_contexts`; mean kept);
- `spread_shuffled`: the same contexts in a seeded random order;
- `spread_padded`: `spread_shuffled` plus the runtime's padding rows (one token each) up to the
  next of `servesim.runtime.model.GRAPH_SIZES`.

    PYTHONPATH=. python benchmarks/decode_attention_shapes.py [--mean 1152] [--skew 1.6] \
        [--batches 40:140:4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servesim import kernels as K  # noqa: E402
from servesim.models.arch import load_model  # noqa: E402
from servesim.profiler.operators import OperatorFactory, decode_contexts  # noqa: E402
from servesim.profiler.timing import Timer  # noqa: E402
from servesim.runtime.model import GRAPH_SIZES  # noqa: E402

SHAPES = ("equal", "straggler", "spread", "spread_shuffled", "spread_padded")


def spread_contexts(batch: int, mean: int, skew: float) -> list[int]:
    """Contexts of `batch` decodes with the given mean: the longest min(skew, batch) x the mean,
    the others rising from short to long as u^(skew - 1) (u evenly spaced; all equal at skew 1),
    scaled to keep the mean, shortest first (>= 1 token each)."""
    if batch == 1 or skew <= 1:
        return [mean] * batch
    longest = int(min(skew, batch) * mean)
    raw = [((i + 1) / batch) ** (skew - 1.0) for i in range(batch - 1)]
    rest = max(0, mean * batch - longest)
    lens = [max(1, int(r * rest / sum(raw))) for r in raw]
    for i in range(min(len(lens), max(0, rest - sum(lens)))):  # whole tokens: the rounding, one each
        lens[-1 - i] += 1
    return [*lens, longest]


def contexts(shape: str, n: int, mean: int, skew: float, seed: int) -> list[int]:
    if shape == "equal":
        return [mean] * n
    if shape == "straggler":
        return decode_contexts(n, mean, skew)
    lens = spread_contexts(n, mean, skew)
    if shape == "spread":
        return lens
    random.Random(seed + n).shuffle(lens)
    if shape == "spread_shuffled":
        return lens
    i = bisect.bisect_left(GRAPH_SIZES, n)
    padded = GRAPH_SIZES[i] if i < len(GRAPH_SIZES) else n
    return lens + [1] * (padded - n)


def time_shape(factory: OperatorFactory, timer: Timer, lens: list[int]) -> float:
    arch = factory.arch
    rows = len(lens)
    queries = factory.rand(rows, arch.num_heads, arch.head_dim)
    ctx = torch.tensor(lens, dtype=torch.int32, device=factory.device)
    kc, vc = factory.kv()
    kv_bytes = sum(lens) * arch.kv_bytes_per_token_per_layer

    def build(g: int) -> list:
        calls = []
        for i in range(factory.copies_for(g, kv_bytes)):
            bt = factory._blocks(i, rows, lens)
            calls.append(lambda bt=bt: K.decode_attention(queries, kc, vc, bt, ctx, max(lens)))
        return calls

    return timer.measure(build, True).median_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--mean", type=int, default=1152)
    parser.add_argument("--skew", type=float, default=1.6)
    parser.add_argument("--batches", default="40:140:4", help="start:stop:step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    start, stop, step = map(int, args.batches.split(":"))
    batches = list(range(start, stop, step))
    arch = load_model(args.model)
    device = torch.device("cuda")
    need = int(max(batches) * args.mean * max(args.skew, 1.0) * 1.2) + 4096
    factory = OperatorFactory(arch, device, kv_tokens=need)
    timer = Timer(device, target_us=2000.0, max_reps=20)
    rows = []
    for n in batches:
        row: dict[str, float | int] = {"batch": n}
        for shape in SHAPES:
            row[shape] = round(time_shape(factory, timer, contexts(shape, n, args.mean, args.skew, args.seed)), 2)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(device), "mean": args.mean,
              "skew": args.skew, "seed": args.seed, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| batch | " + " | ".join(SHAPES) + " | spread / equal |")
    for r in rows:
        print(f"| {r['batch']} | " + " | ".join(f"{r[s]:.1f}" for s in SHAPES)
              + f" | {r['spread'] / r['equal']:.3f} |")
    return 0 if all(math.isfinite(float(r["equal"])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
