"""`validate` end to end on the CPU interpreter with a tiny model: the runtime and the simulator
serve the same requests under the same policy, and the report compares every metric."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from servesim.config import from_mapping
from servesim.plots import plot_validation_cdf
from servesim.validate import (
    COMPARED,
    paired_errors,
    report_markdown,
    repredict,
    step_errors,
    validate,
)

TINY = Path(__file__).parent.parent / "data" / "tiny" / "llama.json"


def test_validate_reports_every_metric(tmp_path: Path) -> None:
    pd.DataFrame({"arrival_s": [0.0, 0.05, 0.1], "num_prompt_tokens": [9, 5, 17],
                  "num_output_tokens": [3, 2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    config = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                           "policy": {"name": "sarathi", "token_budget": 8}}, "test")
    out = validate(config, tmp_path, "cpu", max_kv_blocks=64, warmup=False)
    report = out.report
    assert report["completed_measured"] == report["completed_predicted"] == 3
    assert set(report["metrics"]) == set(COMPARED)
    ttft = report["metrics"]["median_ttft_ms"]
    assert ttft["measured"] > 0 and ttft["predicted"] > 0
    assert ttft["rel_error"] == (ttft["predicted"] - ttft["measured"]) / ttft["measured"]
    # Same decisions, different clocks: every request got its tokens in both.
    assert list(out.measured.num_generated_tokens) == list(out.predicted.num_generated_tokens)
    assert len(out.measured_itl_s) == len(out.predicted_itl_s) == 4
    assert "| median_ttft_ms |" in report_markdown(report)
    paths = plot_validation_cdf(out.measured, out.predicted, out.measured_itl_s, out.predicted_itl_s,
                                tmp_path / "cdf")
    assert all(p.stat().st_size > 0 for p in paths)
    points = pd.read_csv(tmp_path / "cdf.points.csv")
    assert set(points.series) == {"measured (runtime)", "predicted (simulator)"}
    assert len(points[points.panel == "itl"]) == 8
    # The step table: one row per pass the runtime ran, priced again from its shape alone.
    steps = out.steps
    assert len(steps) >= 4 and (steps.busy_s >= steps.gpu_s).all() and (steps.gpu_s > 0).all()
    # the plan's parts: KV allocation, then the inputs, both inside the plan
    assert (steps.kv_s >= 0).all() and (steps.inputs_s > 0).all()
    assert (steps.kv_s + steps.inputs_s <= steps.plan_s + 1e-9).all()
    assert steps.prefill_tokens.sum() == 9 + 5 + 17
    assert set(report["steps"]) == {"decode_only", "with_prefill"}
    steps.to_csv(tmp_path / "steps.csv", index=False)
    read = pd.read_csv(tmp_path / "steps.csv", dtype={"chunks": str, "prefixes": str, "layers": str})
    again = repredict(config, tmp_path, report, read, out.measured_itl_s, out.measured)
    priced = again.steps
    assert list(again.predicted.ttft_s) == list(out.predicted.ttft_s)
    assert again.predicted_itl_s.tolist() == out.predicted_itl_s.tolist()
    assert priced.predicted_s.tolist() == steps.predicted_s.tolist()
    assert again.report["metrics"] == report["metrics"]
    assert all(len(report["metrics"][k]["ci95"]) == 2 for k in ("median_ttft_ms", "p99_itl_ms", "mean_itl_ms"))
    assert "ci95" not in report["metrics"]["request_throughput"]
    assert json.dumps(again.report["steps"]) == json.dumps(report["steps"])  # NaN-tolerant
    # Per request: the same three requests on both sides, each with its own error.
    paired = report["paired"]
    assert paired["ttft_s"]["requests"] == 3 and "| ttft_s | 3 |" in report_markdown(report)
    own = out.predicted.set_index("request_id").ttft_s / out.measured.set_index("request_id").ttft_s - 1
    assert paired["ttft_s"]["median_error"] == float(own.median())
    assert repredict(config, tmp_path, report, read, out.measured_itl_s, out.measured).report["paired"] == paired


def test_paired_errors_match_requests_by_id_and_leave_out_those_not_completed_on_both_sides() -> None:
    measured = pd.DataFrame({"request_id": [0, 1, 2, 3], "status": ["completed"] * 3 + ["rejected"],
                             "ttft_s": [0.1, 0.2, 0.4, 0.1], "tpot_s": [0.01] * 4, "e2el_s": [1.0] * 4})
    predicted = pd.DataFrame({"request_id": [3, 2, 1, 0], "status": ["completed"] * 4,
                              "ttft_s": [0.5, 0.3, 0.2, 0.11], "tpot_s": [0.01] * 4, "e2el_s": [1.1] * 4})
    paired = paired_errors(measured, predicted)
    ttft = paired["ttft_s"]
    assert ttft["requests"] == 3  # request 3 was rejected by the runtime
    assert abs(ttft["median_error"] - 0.0) < 1e-12  # +10 %, 0 %, -25 %
    assert abs(ttft["mean_error"] - (0.1 + 0.0 - 0.25) / 3) < 1e-12
    assert abs(ttft["median_diff_ms"] - 0.0) < 1e-9
    assert abs(paired["e2el_s"]["median_error"] - 0.1) < 1e-12


def test_step_errors_give_the_hosts_time_measured_over_priced() -> None:
    """A host that ran slow: each step's host time (busy - GPU span) is 0.6 and 0.9 ms where
    0.5 and 0.5 ms were priced, so the ratio is 1.5 over the two steps; GPU spans exact."""
    steps = pd.DataFrame({"prefill_tokens": [0, 0, 64], "busy_s": [6.6e-3, 7.9e-3, 20e-3],
                          "gpu_s": [6e-3, 7e-3, 19e-3], "after_s": [1e-4] * 3,
                          "predicted_s": [6.5e-3, 7.5e-3, 20e-3], "predicted_gpu_s": [6e-3, 7e-3, 19e-3]})
    errors = step_errors(steps)
    assert abs(errors["decode_only"]["host_ratio"] - 1.5) < 1e-9
    assert abs(errors["with_prefill"]["host_ratio"] - 1.0) < 1e-9
    assert errors["decode_only"]["median_gpu_error"] == 0.0 and errors["decode_only"]["steps"] == 2


def test_validate_nexus_prices_each_step_on_its_partition(tmp_path: Path) -> None:
    """Nexus in `validate`: the step table says which partition ran each step, on how many SMs
    and next to which step of the other partition; pricing it again gives the same numbers."""
    pd.DataFrame({"arrival_s": [0.0, 0.01, 0.02, 0.03], "num_prompt_tokens": [9, 5, 17, 6],
                  "num_output_tokens": [4, 3, 3, 2]}).to_csv(tmp_path / "t.csv", index=False)
    config = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                           "policy": {"name": "nexus", "adaptive": False, "token_budget": 16}}, "test")
    out = validate(config, tmp_path, "cpu", max_kv_blocks=64, warmup=False)
    report, steps = out.report, out.steps
    assert report["completed_measured"] == report["completed_predicted"] == 4
    assert report["runtime_setup"]["partition_splits"] == [64]
    assert set(steps.partition) == {0, 1}
    assert (steps.sms == steps.partition.map({0: 64, 1: 68})).all()
    assert (steps[steps.partition == 0].num_decodes == 0).all()
    assert (steps[steps.partition == 1].prefill_tokens == 0).all()
    paired = steps[steps.corunner >= 0]
    assert len(paired) and (steps.partition[paired.corunner].to_numpy() != paired.partition.to_numpy()).all()
    steps.to_csv(tmp_path / "steps.csv", index=False)
    read = pd.read_csv(tmp_path / "steps.csv", dtype={"chunks": str, "prefixes": str, "layers": str})
    again = repredict(config, tmp_path, report, read, out.measured_itl_s)
    assert again.steps.predicted_s.tolist() == steps.predicted_s.tolist()


def test_validations_sharing_models_keep_one_model_at_a_time(tmp_path: Path) -> None:
    """A matrix call passes one `models` dict to every run: a run whose engine limits differ
    replaces the cached model instead of adding a second KV cache beside it."""
    pd.DataFrame({"arrival_s": [0.0, 0.05], "num_prompt_tokens": [9, 5],
                  "num_output_tokens": [2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    models: dict = {}
    for blocks in (64, 48, 48):
        config = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                               "policy": {"name": "sarathi", "token_budget": 8}}, "test")
        out = validate(config, tmp_path, "cpu", max_kv_blocks=blocks, warmup=False, models=models)
        assert out.report["completed_measured"] == 2 and len(models) == 1
        assert next(iter(models.values())).model.k_cache[0].shape[0] == blocks + 1  # + a pad block


def test_price_sensitivity_predicts_the_same_requests_at_scaled_prices(tmp_path: Path) -> None:
    """`repredict(..., sensitivity=d)`: each metric's error with the host's prices (the tiny
    model's roofline has no GPU table to scale) times 1 - d and 1 + d, the same as predicting
    with those constants by hand."""
    import dataclasses

    from servesim.runtime.calibrate import scaled

    pd.DataFrame({"arrival_s": [0.0, 0.05, 0.1], "num_prompt_tokens": [9, 5, 17],
                  "num_output_tokens": [3, 2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    config = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                           "cost_model": {"host_step_us": 4000.0, "host_per_seq_us": 50.0},
                           "policy": {"name": "sarathi", "token_budget": 8}}, "test")
    out = validate(config, tmp_path, "cpu", max_kv_blocks=64, warmup=False, sensitivity=0.5)
    again = repredict(config, tmp_path, out.report, out.steps, out.measured_itl_s, out.measured, sensitivity=0.5)
    assert again.report["price_sensitivity"] == out.report["price_sensitivity"] == {"delta": 0.5, "prices": "host"}
    assert again.report["metrics"] == out.report["metrics"]  # the runtime's side predicts the same
    rows = again.report["metrics"]
    for factor, side in ((0.5, 0), (1.5, 1)):
        by_hand = dataclasses.replace(config, cost_model=scaled(config.cost_model, factor))
        alone = repredict(by_hand, tmp_path, out.report, out.steps, out.measured_itl_s, out.measured).report
        assert all(rows[k]["sensitivity"][side] == alone["metrics"][k]["rel_error"] for k in rows)
    ttft = rows["median_ttft_ms"]
    assert ttft["sensitivity"][0] < ttft["rel_error"] < ttft["sensitivity"][1]  # 4 ms a step moves it
    assert "host prices x0.5 / x1.5 |" in report_markdown(again.report)
    plain = repredict(config, tmp_path, again.report, out.steps, out.measured_itl_s, out.measured)
    assert "price_sensitivity" not in plain.report and "sensitivity" not in plain.report["metrics"]["median_ttft_ms"]
