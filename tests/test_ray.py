"""The Ray executor against a local Ray started here: the same table as the local executor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sweepkit import SMALL, stable, write_sweep

from servesim.sweep import load_sweep, run_sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_gives_the_local_results(tmp_path: Path, local_ray: None) -> None:
    spec = load_sweep(write_sweep(tmp_path, SMALL))
    on_ray = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert ray.is_initialized()  # a Ray it did not start is left running
    assert (on_ray.planned, on_ray.ran) == (8, 8)
    local = run_sweep(spec, tmp_path / "local", workers=1, progress=False)
    assert stable(on_ray.results).equals(stable(local.results))
    again = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert again.ran == 0
