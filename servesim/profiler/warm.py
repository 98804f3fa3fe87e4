"""Compile every kernel variant of a profile in parallel before timing anything.

Triton compiles one binary per combination of constexprs (block sizes, split counts, the
persistent GEMM's program count, which follows the partition size) and integer
specializations, and caches it on disk. Compiling them one after another inside the timing
loop would cost most of a profile's time, so worker processes first run every point once
(untimed, on the whole GPU, with the SM budget of its partition passed to the launcher); the
timing process then finds every binary in the disk cache. Anything a worker misses is simply
compiled later by the timing process.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from servesim.models.arch import load_model
from servesim.profiler.grid import Point
from servesim.profiler.operators import OperatorFactory

Spec = tuple[str, float, float, float, int | None]
"""(op, a, b, c, SM budget or None)."""
_BIG_KV_TOKENS = 1 << 18


def kv_tokens(spec: Spec) -> int:
    """Paged-KV tokens one point needs (0 for operators without attention)."""
    op, a, b, c, _ = spec
    if op == "attn_decode":
        return int(a * (b + 1) * 1.1) + 64
    if op in ("attn_prefill", "attn_prefill_packed"):
        return int(max(c, 1) * (a + b)) + 64
    return 0


def specs_of(points: list[Point], targets: dict[str, Point], corunners: dict[str, Point]) -> list[Spec]:
    """Distinct launcher calls behind the points (contention points name their operators)."""
    out: dict[Spec, None] = {}
    for p in points:
        if p.op == "iteration_fixed":
            continue
        if p.table == "contention":
            t, cor = targets[p.op], corunners[p.corunner]
            out[(t.op, t.a, t.b, t.c, p.sms)] = None
            out[(cor.op, cor.a, cor.b, cor.c, p.corunner_sms)] = None
        else:
            out[(p.op, p.a, p.b, p.c, p.sms or None)] = None
    return list(out)


def _worker(model: str, specs: list[Spec]) -> tuple[int, int, float]:
    """Run each spec once on the GPU; returns (ran, failed, seconds)."""
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    need = max([kv_tokens(s) for s in specs] + [64])
    factory = OperatorFactory(load_model(model), device, need)
    ran = failed = 0
    last_op = ""
    for op, a, b, c, sms in sorted(specs, key=lambda s: s[0]):
        if op != last_op:
            factory.free_weights()  # keep one operator's weights at a time in each worker
            last_op = op
        try:
            build, _ = factory.builder(op, a, b, c, sms)
            build(1)[0]()
            ran += 1
        except Exception:  # noqa: BLE001 - the timing process compiles it again and reports
            failed += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return ran, failed, time.perf_counter() - started


def warm_compile(jobs: dict[str, list[Spec]], workers: int) -> dict[str, float]:
    """Compile the kernels of every model's specs in `workers` processes."""
    started = time.perf_counter()
    tasks: list[tuple[str, list[Spec]]] = []
    for model, specs in jobs.items():
        big = [s for s in specs if kv_tokens(s) > _BIG_KV_TOKENS]
        small = [s for s in specs if kv_tokens(s) <= _BIG_KV_TOKENS]
        tasks.append((model, big))
        tasks += [(model, small[i::workers]) for i in range(workers)]
    ran = failed = 0
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for r, f, _ in pool.map(_worker, *zip(*[t for t in tasks if t[1]], strict=True)):
            ran, failed = ran + r, failed + f
    return {"warm_compile_s": time.perf_counter() - started, "warm_ran": ran, "warm_failed": failed}
