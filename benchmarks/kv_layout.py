"""Decode attention over a paged KV cache laid out three ways, timed side by side (GPU only).

The profiler times attention with each sequence's KV blocks adjacent in the pool; a serving
engine's allocator hands blocks out as sequences grow, so a sequence's blocks lie far apart
(servesim's runtime pops a free list: decoding sequences take turns, and freed blocks come
back in any order). This times one decode step's attention over all layers, each layer with its
own K/V pool of the runtime's size, for block tables that are:

  contiguous   each sequence's blocks adjacent (the profiler's tables);
  interleaved  block i of sequence s at i x sequences + s (sequences that decode together);
  random       a seeded permutation of the whole pool (a fragmented pool).

The step is captured in one CUDA graph and replayed, so the host's launches (~70-130 us per
call) are not timed. Prints one row per (sequences, context): the median time of each layout
and the ratios to contiguous; --out writes the JSON.

    PYTHONPATH=. python benchmarks/kv_layout.py --out FILE
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from servesim.kernels.attention_decode import decode_attention
from servesim.models.arch import load_model

CASES = ((16, 1024), (64, 1024), (96, 1024), (128, 1024), (32, 4096), (96, 4096))
"""(sequences, tokens of context each): issue 7's vllm runs at 90 % load decoded 65-112
sequences of about 1.1k tokens, where their passes ran 2-5 % over the profile's price."""
LAYOUTS = ("contiguous", "interleaved", "random")
PAGE = 16
REPS = 20


def tables(layout: str, seqs: int, blocks: int, pool: int, gen: torch.Generator) -> torch.Tensor:
    """[seqs, blocks] block ids into a pool of `pool` blocks."""
    i = torch.arange(blocks).unsqueeze(0)
    s = torch.arange(seqs).unsqueeze(1)
    if layout == "contiguous":
        ids = s * blocks + i
    elif layout == "interleaved":
        ids = i * seqs + s
    else:
        ids = torch.randperm(pool, generator=gen)[: seqs * blocks].view(seqs, blocks)
    return ids.to(torch.int32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--pool-blocks", type=int, default=54713,
                        help="KV blocks per layer (the runtime's pool in issue 7's runs: 54,713)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("kv_layout.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    arch, dev = load_model(args.model), torch.device("cuda")
    shape = (args.pool_blocks, PAGE, arch.num_kv_heads, arch.head_dim)
    k = [torch.empty(shape, device=dev, dtype=torch.bfloat16).normal_() for _ in range(arch.num_layers)]
    v = [torch.empty(shape, device=dev, dtype=torch.bfloat16).normal_() for _ in range(arch.num_layers)]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for seqs, context in CASES:
        blocks = -(-context // PAGE)
        q = torch.randn(seqs, arch.num_heads, arch.head_dim, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        lens = torch.full((seqs,), context, dtype=torch.int32, device=dev)
        row: dict[str, float | int] = {"sequences": seqs, "context": context}
        for layout in LAYOUTS:
            bt = tables(layout, seqs, blocks, args.pool_blocks, gen).to(dev)

            def step(bt: torch.Tensor = bt, q: torch.Tensor = q, lens: torch.Tensor = lens,
                     context: int = context, out: torch.Tensor = out) -> None:
                for layer in range(arch.num_layers):
                    decode_attention(q, k[layer], v[layer], bt, lens, context, out=out)

            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):  # warm up (compiles) off the capture
                step()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()  # the host's launches out of the timing
            with torch.cuda.graph(graph, stream=stream):
                step()
            torch.cuda.synchronize()
            times = []
            for _ in range(REPS):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3)
            row[f"{layout}_us"] = statistics.median(times)
        for layout in LAYOUTS[1:]:
            row[f"{layout}_ratio"] = row[f"{layout}_us"] / row["contiguous_us"]
        rows.append(row)
        print(f"| {seqs} x {context} | " + " | ".join(f"{row[f'{lay}_us']:.0f}" for lay in LAYOUTS)
              + f" | {row['interleaved_ratio']:.3f} | {row['random_ratio']:.3f} |", flush=True)
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(dev), "pool_blocks": args.pool_blocks,
              "layers": arch.num_layers, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
