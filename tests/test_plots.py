"""Figures of a small sweep: files written, the expected series, points traceable to runs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sweepkit import SMALL, write_sweep

from servesim import plots
from servesim.cli import main
from servesim.sweep import load_sweep, run_sweep

VARIANTS = {"vllm", "orca max_num_seqs=8", "sarathi token_budget=256", "sarathi token_budget=1024"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("plots")
    data = copy.deepcopy(SMALL)
    data["axes"].append({"grid": {"slo_scale": [0.5, 2.0]}})
    data["search"] = {"criteria": ["goodput"], "lo": 1, "hi": 32, "rel_tol": 0.3}
    run_sweep(load_sweep(write_sweep(tmp, data)), tmp / "out", progress=False)
    return tmp / "out"


def test_pareto_mask() -> None:
    x, y = np.array([1.0, 2.0, 3.0, 2.5, 1.0]), np.array([5.0, 2.0, 1.0, 3.0, 6.0])
    assert list(plots.pareto_mask(x, y)) == [True, True, True, False, False]
    assert list(plots.pareto_mask(x, y, maximize=True)) == [False, False, True, True, True]


def test_plot_command_draws_every_kind_with_the_expected_series(swept: Path) -> None:
    assert main(["plot", str(swept), "--out", str(swept / "figs")]) == 0
    results = pd.read_parquet(swept / "results.parquet")
    for kind in plots.KINDS:
        for suffix in (".png", ".svg", ".points.csv"):
            assert (swept / "figs" / f"{kind}{suffix}").stat().st_size > 0
        points = pd.read_csv(swept / "figs" / f"{kind}.points.csv")
        assert set(points.variant) == VARIANTS, kind
        assert set(points.run_hash) <= set(results.run_hash), kind  # every point is a run
    lat = pd.read_csv(swept / "figs" / "pareto_latency.points.csv")
    assert set(lat.panel) == {"rate_scale=4", "rate_scale=16"}
    assert lat.groupby("panel").on_frontier.sum().min() >= 3  # one frontier point per policy at least
    cdf = pd.read_csv(swept / "figs" / "latency_cdf.points.csv")
    assert set(cdf.panel) == {"ttft", "itl"}
    assert (swept / "figs" / "pareto_latency.svg").read_text().count("../runs/") >= len(lat)


def test_goodput_plot_marks_searched_rates(swept: Path) -> None:
    search = pd.read_parquet(swept / "search.parquet")
    results = pd.read_parquet(swept / "results.parquet")
    assert (search.criterion == "goodput").all() and len(search) == 4  # at the base SLOs
    files = plots.plot_goodput_vs_rate(results, search, swept / "g" / "goodput")
    assert [f.suffix for f in files] == [".png", ".svg", ".csv"]


def test_plots_are_skipped_when_the_data_cannot_show_them(tmp_path: Path) -> None:
    data = copy.deepcopy(SMALL)
    data["axes"] = [{"grid": {"policy.name": ["vllm", "sarathi"]}}]
    run_sweep(load_sweep(write_sweep(tmp_path, data)), tmp_path / "o", progress=False)
    written, notes = plots.draw(tmp_path / "o")
    assert notes == ["goodput_vs_rate: skipped (needs at least two rates)",
                     "slo_vs_scale: skipped (needs a slo_scale axis)"]
    assert len(written) == 9


def test_the_simulator_never_imports_matplotlib() -> None:
    code = ("import sys, servesim.runner, servesim.sweep; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validation_cdf_points_are_thinned_but_keep_the_ends() -> None:
    from servesim.plots import _cdf

    values = np.random.default_rng(0).exponential(size=100_000)
    x, y = _cdf(values, max_points=500)
    assert len(x) == 500 and x[0] == values.min() and x[-1] == values.max() and y[-1] == 1.0
    # Each kept point is the exact empirical CDF at its x.
    assert np.allclose(y, np.searchsorted(np.sort(values), x, side="right") / len(values))
    small = np.array([3.0, 1.0, 2.0])
    assert _cdf(small)[0].tolist() == [1.0, 2.0, 3.0] and _cdf(small)[1].tolist() == [1 / 3, 2 / 3, 1.0]


def test_validation_matrix_marks_each_cell_against_its_target(tmp_path: Path) -> None:
    errors = pd.DataFrame({"median_ttft_ms": [0.03, -0.08], "p99_ttft_ms": [0.12, float("nan")],
                           "median_tpot_ms": [0.5, 0.0]}, index=["vllm-load30", "nexus-load90"])
    paths = plots.plot_validation_matrix(errors, {"median_ttft_ms": 0.05, "p99_ttft_ms": 0.10},
                                         tmp_path / "matrix")
    assert [p.suffix for p in paths] == [".png", ".svg", ".csv"] and all(p.stat().st_size > 0 for p in paths)
    points = pd.read_csv(paths[2]).set_index(["run", "metric"])
    assert len(points) == 6
    assert points.loc[("vllm-load30", "median_ttft_ms"), "met"] == True  # noqa: E712 (a cell of a frame)
    assert points.loc[("nexus-load90", "median_ttft_ms"), "met"] == False  # noqa: E712
    assert points.loc[("vllm-load30", "p99_ttft_ms"), "met"] == False  # noqa: E712
    assert pd.isna(points.loc[("nexus-load90", "p99_ttft_ms"), "met"])  # no value
    assert pd.isna(points.loc[("vllm-load30", "median_tpot_ms"), "met"])  # no target
    # The same figure drawn again gives the same bytes (no date, no random element ids).
    again = plots.plot_validation_matrix(errors, {"median_ttft_ms": 0.05, "p99_ttft_ms": 0.10},
                                         tmp_path / "again")
    for first, second in zip(paths, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.suffix
