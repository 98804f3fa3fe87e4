"""Small builders shared by the simulator tests: requests, limits, one-call runs; benchmark
scripts loaded as modules."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from servesim.policies import REGISTRY, EngineLimits
from servesim.request import Request
from servesim.sim.cost_model import ConstantCostModel
from servesim.sim.engine import SimResult, simulate


def requests(specs: Sequence[tuple[float, int, int]]) -> list[Request]:
    """(arrival_s, prompt tokens, output tokens) -> requests with ids in order."""
    return [Request(i, a, p, o) for i, (a, p, o) in enumerate(specs)]


def limits(
    total_blocks: int = 10**6, block_size: int = 16, watermark_blocks: int = 0,
    max_model_len: int = 10**7, num_layers: int = 32,
) -> EngineLimits:
    return EngineLimits(block_size, total_blocks, watermark_blocks, max_model_len, num_layers)


def run(
    policy: str, reqs: Sequence[Request], cost: Any = None, lim: EngineLimits | None = None,
    fast_forward: bool = True, **params: Any,
) -> SimResult:
    lim = lim or limits()
    cls = REGISTRY[policy]
    cost = cost or ConstantCostModel(fixed_s=0.01, per_prefill_token_s=0.001)
    return simulate(list(reqs), cls(cls.Params(**params), lim), cost, lim, fast_forward)


def token_times(result: SimResult) -> dict[int, list[float]]:
    return {r.request_id: [round(t, 9) for t in r.token_times_s] for r in result.requests}


def benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module (its GPU-only imports inside functions stay unrun)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
