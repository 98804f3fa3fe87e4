"""benchmarks/step_residuals.py: host residuals at the reference host's speed and prompt-lane
errors by the decodes that overlapped each prompt, on small step tables whose answers are known,
and on the committed H200 runs."""

import json
from pathlib import Path

import pandas as pd
import pytest
from simkit import benchmark

ROOT = Path(__file__).resolve().parent.parent


def _run(folder: Path, policy: str, factor: float | None, rows: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True)
    calibration = {"host_calibration": {"priced_factor": factor}} if factor else {}
    (folder / "report.json").write_text(json.dumps({"policy": policy, **calibration}))
    pd.DataFrame(rows).to_csv(folder / "steps.csv.gz", index=False)


def _step(start: float, busy: float, gpu: float, pred: float, pred_gpu: float, prefills: int = 0,
          decodes: int = 0, tokens: int = 0, partition: int = -1, sms: int = 0) -> dict[str, float]:
    return {"start_s": start, "busy_s": busy, "gpu_s": gpu, "predicted_s": pred, "predicted_gpu_s": pred_gpu,
            "num_prefills": prefills, "num_decodes": decodes, "prefill_tokens": tokens,
            "partition": partition, "sms": sms}


def test_host_residuals_pool_runs_at_the_reference_speed(tmp_path: Path) -> None:
    sr = benchmark("step_residuals")
    # Host measured 600 us vs 400 priced on a host at 2x: +100 us at the reference speed.
    _run(tmp_path / "a", "vllm", 2.0, [_step(0, 0.0106, 0.010, 0.0104, 0.010, prefills=1, tokens=300),
                                        _step(0.02, 0.0063, 0.006, 0.0064, 0.006, decodes=4)])
    # The same prompt residual on a host at 0.5x: 50 us measured over priced, +100 at reference.
    _run(tmp_path / "b", "vllm", 0.5, [_step(0, 0.01015, 0.010, 0.0101, 0.010, prefills=1, tokens=400)])
    _run(tmp_path / "c", "vllm", None, [_step(0, 1.0, 0.1, 0.2, 0.1, prefills=1, tokens=300)])  # not calibrated
    table = sr.host_residuals(sr.run_folders([tmp_path]))
    prompt = table[table.kind == "prompt"].iloc[0]
    assert (prompt.steps, prompt.residual_us, prompt.host_us) == (2, pytest.approx(100.0), pytest.approx(300.0))
    decode = table[table.kind == "decode"].iloc[0]
    assert (decode.steps, decode.residual_us, decode.host_us) == (1, pytest.approx(-50.0), pytest.approx(150.0))


def test_lane_errors_follow_the_decodes_that_overlapped_each_prompt(tmp_path: Path) -> None:
    sr = benchmark("step_residuals")
    rows = [_step(0.000, 0.10, 0.10, 0.095, 0.095, prefills=1, tokens=1024, partition=0, sms=40),
            _step(0.001, 0.05, 0.05, 0.05, 0.05, decodes=1, partition=1, sms=92),  # beside it: 1 and 3
            _step(0.051, 0.05, 0.05, 0.05, 0.05, decodes=3, partition=1, sms=92),
            _step(0.200, 0.10, 0.10, 0.101, 0.101, prefills=1, tokens=1024, partition=0, sms=40),
            _step(0.150, 0.30, 0.30, 0.3, 0.3, decodes=12, partition=1, sms=92)]
    _run(tmp_path / "nexus", "nexus", None, rows)
    table = sr.lane_errors(sr.run_folders([tmp_path]))
    table = table.set_index(table.decodes_beside.astype(str))
    assert table.loc["(0.5, 2.0]", "median_error"] == pytest.approx(-0.05)
    assert table.loc["(8.0, 16.0]", "median_error"] == pytest.approx(0.01)
    assert table.passes.sum() == 2


def test_the_committed_runs_and_a_folder_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sr = benchmark("step_residuals")
    out = tmp_path / "residuals.json"
    assert sr.main([str(ROOT / "benchmarks" / "results" / "h200-validate-8"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert len(got["runs"]) == 8 and not got["lanes"]
    assert {r["kind"] for r in got["host"]} == {"decode", "prompt", "mixed"}
    assert sr.main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_decode_errors_keep_passes_that_started_alone_by_sms_and_batch(tmp_path: Path) -> None:
    sr = benchmark("step_residuals")
    rows = [_step(0.01 * i, 0.006, 0.006, 0.0063, 0.0063, decodes=9, partition=1, sms=92) for i in range(3)]
    rows += [_step(0.1, 0.006, 0.006, 0.0060, 0.0054, decodes=9, partition=1, sms=92)]  # -10 %
    rows += [_step(0.2, 0.006, 0.006, 0.9, 0.9, decodes=9, partition=1, sms=92)]  # beside a prompt: left out
    rows += [_step(0.3, 0.02, 0.02, 0.02, 0.02, prefills=1, tokens=64, partition=0, sms=40)]  # a prompt
    frame = pd.DataFrame(rows).assign(corunner=[-1, -1, -1, -1, 5, -1])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"policy": "nexus"}))
    frame.to_csv(folder / "steps.csv.gz", index=False)
    table = sr.decode_errors(sr.run_folders([tmp_path]), min_passes=2)
    assert table.to_dict("records") == [{"sms": 92, "decodes": 9, "passes": 4, "median_error": 0.05,
                                         "median_gpu_ms": 6.0}]
    assert sr.decode_errors(sr.run_folders([tmp_path]), min_passes=5).empty
