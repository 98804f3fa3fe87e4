"""The host's speed timed in the serving process (`servesim.runtime.calibrate`): the factor
against a reference file's loops, the constants it scales, and `validate` end to end on the CPU
interpreter with a tiny model (the prediction, and a prediction made again, use the scaled
constants)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from servesim.config import CostModelConfig, from_mapping
from servesim.errors import InputError
from servesim.runtime import calibrate as cal
from servesim.sim.host_overhead import FULL_DECODE_LAUNCHES
from servesim.validate import report_markdown, repredict, validate

TINY = Path(__file__).parent.parent / "data" / "tiny" / "llama.json"


def _loop(host_step_us: float, launch_us: float) -> dict[str, float]:
    return {"batch": 1.0, "steps": 10, "host_step_us": host_step_us, "launch_us": launch_us}


def test_speed_factor_compares_the_loops_both_sides_hold() -> None:
    reference = {"decode_b1": _loop(400.0, 20.0), "decode_b8": _loop(500.0, 30.0), "decode_b64": _loop(900.0, 1.0)}
    now = {"decode_b1": _loop(200.0, 10.0), "decode_b8": _loop(250.0, 15.0)}
    assert cal.speed_factor(now, reference) == pytest.approx(0.5)
    slower = {"decode_b1": _loop(400.0, 20.0 + 100.0 / FULL_DECODE_LAUNCHES)}  # 100 us more issue
    assert cal.speed_factor(slower, reference) == pytest.approx((400 + 220 + 100) / (400 + 220))
    with pytest.raises(InputError, match="none of the loops"):
        cal.speed_factor({"decode_b2": _loop(1.0, 1.0)}, reference)


def test_scaled_multiplies_every_host_constant_and_nothing_else() -> None:
    base = CostModelConfig(kind="roofline", host_launch_us=40.0, host_step_us=473.5, host_per_seq_us=3.85,
                           host_check_us=15.3, host_check_per_seq_us=0.06, host_gap_us=2.9,
                           host_graph_issue_us=233.4)
    out = cal.scaled(base, 0.8)
    for field in cal.HOST_FIELDS:
        assert getattr(out, field) == round(getattr(base, field) * 0.8, 2)
    assert out.host_step_us == 378.8 and out.kind == "roofline" and out.power_cap == base.power_cap


def test_a_reference_without_full_decode_loops_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "overhead.json"
    bad.write_text(json.dumps({"graphed": {"host_step_us": 400.0}}))
    with pytest.raises(InputError, match="overhead.json: not a runtime_overhead.py result"):
        cal.reference_loops(bad)
    with pytest.raises(InputError, match="missing.json"):
        cal.reference_loops(tmp_path / "missing.json")


def test_validate_cli_refuses_a_missing_reference_before_building_anything(tmp_path: Path) -> None:
    pd.DataFrame({"arrival_s": [0.0], "num_prompt_tokens": [9], "num_output_tokens": [2]}).to_csv(
        tmp_path / "t.csv", index=False)
    (tmp_path / "c.yaml").write_text(f"model: {TINY}\nworkload: {{trace: t.csv}}\npolicy: {{name: sarathi}}\n")
    done = subprocess.run([sys.executable, "-m", "servesim.cli", "validate", str(tmp_path / "c.yaml"),
                           "--out", str(tmp_path / "out"), "--device", "cpu",
                           "--host-reference", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "nope.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "servesim.cli", "validate", str(tmp_path / "c.yaml"),
                           "--out", str(tmp_path / "out"), "--device", "cpu", "--sensitivity", "1.5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "sensitivity: 1.5" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_validate_scales_the_host_constants_by_the_speed_it_timed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cal, "REFERENCE_LOOPS", ((1, 8), (2, 8)))
    monkeypatch.setattr(cal, "OUTPUT", 3)
    monkeypatch.setattr(cal, "ROUNDS", 1)
    reference = tmp_path / "overhead.json"
    # (the interpreter's host takes about a second a step)
    reference.write_text(json.dumps({"full_decode": {"loops": {
        "decode_b1": _loop(5e5, 5e4), "decode_b2": _loop(6e5, 6e4)}}}))
    pd.DataFrame({"arrival_s": [0.0, 0.05, 0.1], "num_prompt_tokens": [9, 5, 17],
                  "num_output_tokens": [3, 2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    config = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                           "cost_model": {"kind": "roofline", "host_step_us": 100.0, "host_launch_us": 10.0},
                           "policy": {"name": "sarathi", "token_budget": 8}}, "test")
    out = validate(config, tmp_path, "cpu", max_kv_blocks=64, warmup=False, host_reference=reference)
    calibration = out.report["host_calibration"]
    loops = calibration["loops"]
    assert set(loops) == {"decode_b1", "decode_b2"} and all(loop["steps"] >= 1 for loop in loops.values())
    now = sum(cal.loop_host_us(loop) for loop in loops.values())
    factor = calibration["factor"]
    assert factor > 0 and factor == round(now / (5e5 + 6e5 + FULL_DECODE_LAUNCHES * 11e4), 4)
    # The loops again after serving; the run is priced at the faster of the two timings.
    after = calibration["after"]
    assert set(after["loops"]) == set(loops) and after["factor"] > 0
    assert calibration["drift"] == round(after["factor"] / factor, 4)
    assert f"x{factor:.3f} before serving" in report_markdown(out.report)
    assert calibration["priced_factor"] == min(factor, after["factor"])
    constants = calibration["constants"]  # what the runtime served with
    assert constants["host_step_us"] == round(100.0 * factor, 2)
    assert constants["host_launch_us"] == round(10.0 * factor, 2) and constants["host_gap_us"] == 0.0
    priced = calibration["priced_constants"]
    ratio = calibration["priced_factor"] / factor
    assert priced == {k: round(v * ratio, 2) for k, v in constants.items()}
    # Predicted again from the report, with the config as it was: the same numbers.
    steps = out.steps.drop(columns=["predicted_s", "predicted_gpu_s"])
    again = repredict(config, tmp_path, out.report, steps, out.measured_itl_s, out.measured)
    assert again.report["metrics"] == out.report["metrics"]
    assert again.steps.predicted_s.tolist() == out.steps.predicted_s.tolist()
    # The same as setting the priced constants by hand (sarathi asks no predictor), and not the
    # same as the unscaled ones.
    plain = {k: v for k, v in out.report.items() if k != "host_calibration"}
    by_hand = from_mapping({"model": str(TINY), "workload": {"trace": "t.csv"},
                            "cost_model": {"kind": "roofline", **priced},
                            "policy": {"name": "sarathi", "token_budget": 8}}, "test")
    assert repredict(by_hand, tmp_path, plain, steps, out.measured_itl_s).steps.predicted_s.tolist() \
        == out.steps.predicted_s.tolist()
    assert repredict(config, tmp_path, plain, steps, out.measured_itl_s).steps.predicted_s.tolist() \
        != out.steps.predicted_s.tolist()


def _validate_runtime() -> Any:
    """benchmarks/validate_runtime.py, imported from beside this repository's benchmarks."""
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import validate_runtime
    finally:
        sys.path.remove(str(root / "benchmarks"))
    return validate_runtime


@pytest.mark.parametrize("policy", ["vllm", "layered", "sarathi", "flowprefill", "nexus"])
def test_each_validate_config_holds_the_host_constants_of_the_file_it_names(policy: str) -> None:
    """The configs name the runtime_overhead.py result their host constants come from; they
    hold what `validate_runtime.py --host FILE` derives from it (Nexus: with its partitioned
    loop's)."""
    import re

    from servesim.config import load_config

    root = Path(__file__).resolve().parents[2]
    host_overrides = _validate_runtime().host_overrides

    path = root / "examples" / f"validate_{policy}.yaml"
    named = re.search(r"benchmarks/results/h200-validate/(runtime-overhead-[a-z-]+\.json)", path.read_text())
    assert named is not None, f"{path.name} names no runtime_overhead.py result"
    common, partitioned = host_overrides(json.loads((root / "benchmarks/results/h200-validate" / named[1]).read_text()))
    expected = load_config(str(path), [*common, *(partitioned if policy == "nexus" else [])]).cost_model
    assert load_config(str(path), []).cost_model == expected


def test_the_partitioned_host_step_is_the_plain_line_plus_the_loops_difference_at_one_batch() -> None:
    """A residual of the plain loop at the partitioned loop's batch cancels; without a plain
    loop of that batch, the point less its slopes."""
    vr = _validate_runtime()
    loops = {f"decode_b{b}": {"batch": float(b), "host_step_us": 500.0 + 6.0 * b} for b in (1, 8, 64)}
    loops["decode_b32"] = {"batch": 32.0, "host_step_us": 500.0 + 6.0 * 32 + 110.0}  # above the line
    around = {"batch": 32, "before_ms": 0.8, "after_ms": 0.1}  # 900 us: 100 us over the plain b32 point
    step = vr.partitioned_host_step_us(around, {"loops": loops}, 6.0)
    intercept = vr.per_seq_fit(loops)["host_step_us"]
    assert step == round(intercept + 900.0 - (500.0 + 6.0 * 32 + 110.0), 1)
    assert 580 < step < 620  # the 110 us residual is not carried in
    del loops["decode_b32"]
    assert vr.partitioned_host_step_us(around, {"loops": loops}, 6.0) == 900.0 - 6.0 * 32


def test_a_matrix_load_may_replay_longer() -> None:
    vr = _validate_runtime()
    spec = {"wall_s": 40, "wall_s_by_load": {0.3: 80}}
    assert vr.wall_s(spec, 0.3) == 80.0 and vr.wall_s(spec, 0.6) == 40.0
    assert vr.wall_s({"wall_s": 40}, 0.3) == 40.0


def test_a_run_is_priced_at_the_faster_of_the_timings_around_it() -> None:
    served = {"host_step_us": 400.0, "host_launch_us": 20.0}
    slow_before = {"factor": 1.95, "constants": served, "after": {"factor": 1.3}}
    assert cal.priced_factor(slow_before) == 1.3
    assert cal.priced_constants(slow_before) == {"host_step_us": round(400 * 1.3 / 1.95, 2),
                                                 "host_launch_us": round(20 * 1.3 / 1.95, 2)}
    assert cal.priced_factor({"factor": 1.1, "constants": served, "after": {"factor": 1.4}}) == 1.1
    # No loops after serving (an older report, or they failed): what it served with.
    for calibration in ({"factor": 1.2, "constants": served}, {"factor": 1.2, "constants": served,
                                                              "after": {"error": "CUDA error"}}):
        assert cal.priced_factor(calibration) == 1.2 and cal.priced_constants(calibration) == served


def test_the_simulated_policy_predicts_with_the_constants_the_runtime_served_with() -> None:
    """A measured controller's beliefs stay its own while the simulator prices the steps with
    other host constants: `simulate(..., predictor=...)`."""
    from servesim.models.arch import load_model
    from servesim.policies import REGISTRY, EngineLimits
    from servesim.request import Request, State
    from servesim.sim.cost_model import make_cost_model
    from servesim.sim.engine import simulate
    from servesim.sim.hardware import get_gpu

    arch = load_model(str(TINY))
    limits = EngineLimits(total_blocks=64, block_size=16, max_model_len=256, num_layers=arch.num_layers,
                          watermark_blocks=0)
    asked: list[int] = []

    def belief(shape: object, sms: int | None) -> float:
        asked.append(1)
        return 0.001

    cls = REGISTRY["flowprefill"]
    policy = cls(cls.Params(), limits)
    truth = make_cost_model("roofline", arch, get_gpu("h200"))
    done = simulate([Request(i, 0.01 * i, 40, 3) for i in range(4)], policy, truth, limits, predictor=belief)
    assert policy.predict is belief and asked
    assert all(r.state is State.FINISHED and len(r.token_times_s) == 3 for r in done.requests)


def _timed_loop(batch: int, host_us: float, launch_us: float = 15.0) -> dict[str, float]:
    return {"batch": float(batch), "steps": 60.0, "before_ms": host_us / 1e3, "after_ms": 0.0,
            "host_step_us": host_us, "launch_us": launch_us}


def _overhead(host: dict[int, float], launch_us: float = 15.0) -> dict[str, Any]:
    return {"model": "llama-3.1-8b", "gpu": "NVIDIA H200",
            "graphed": {"host_launch_us": 2 * launch_us, "host_check_us": 10.0, "host_gap_us": 2.0,
                        "host_check_per_seq_us": 0.05},
            "full_decode": {"loops": {f"decode_b{b}": _timed_loop(b, us, launch_us) for b, us in host.items()}}}


def test_merged_references_take_each_loops_median_and_fit_the_line_again() -> None:
    """One file's small loops on a slow stretch flatten its line; the merged file's loops are the
    median over the files, so that stretch drops out."""
    vr = _validate_runtime()
    sys.path.insert(0, str(Path(vr.__file__).parent))
    try:
        import runtime_overhead
    finally:
        sys.path.remove(str(Path(vr.__file__).parent))
    line = {b: 300.0 + 4.0 * b for b in (1, 8, 32, 64, 128)}
    slow_small = {b: us * (1.5 if b <= 8 else 1.0) for b, us in line.items()}
    merged = runtime_overhead.merged({"a": _overhead(line), "b": _overhead(line, 17.0),
                                      "c": _overhead(slow_small, 21.0)})
    assert merged["merged_from"] == ["a", "b", "c"]
    assert merged["graphed"]["host_step_us"] == 300.0 and merged["graphed"]["host_per_seq_us"] == 4.0
    assert merged["full_decode"]["loops"]["decode_b1"]["launch_us"] == 17.0
    assert merged["graphed"]["host_launch_us"] == 34.0
    assert runtime_overhead.per_seq_fit(_overhead(slow_small)["full_decode"]["loops"])["host_per_seq_us"] < 3.9
    with pytest.raises(SystemExit, match="different models"):
        runtime_overhead.merged({"a": _overhead(line), "b": {**_overhead(line), "model": "qwen3-30b-a3b"}})


def test_a_run_priced_against_another_reference_keeps_what_it_served_with(tmp_path: Path) -> None:
    """`rereferenced`: the factors against the new file's loops, its constants times the faster
    factor; the served constants (the policy's predictor) are kept through a second re-reference."""
    old_ref, new_ref = tmp_path / "old.json", tmp_path / "new.json"
    old_ref.write_text(json.dumps(_overhead({1: 420.0, 8: 450.0, 32: 540.0})))
    new_ref.write_text(json.dumps(_overhead({1: 290.0, 8: 330.0, 32: 440.0})))
    now = {f"decode_b{b}": _timed_loop(b, us, 13.0) for b, us in ((1, 250.0), (8, 290.0), (32, 355.0))}
    after = {f"decode_b{b}": _timed_loop(b, us * 1.2, 13.0) for b, us in ((1, 250.0), (8, 290.0), (32, 355.0))}
    served = {"host_step_us": 263.5, "host_per_seq_us": 2.28}
    calibration = {"reference": "old.json", "factor": round(cal.speed_factor(now, cal.reference_loops(old_ref)), 4),
                   "loops": now, "constants": served, "after": {"factor": 0.7, "loops": after}}
    config = CostModelConfig(host_step_us=296.5, host_per_seq_us=4.18, host_launch_us=30.0)
    again = cal.rereferenced(calibration, config, new_ref)
    factor = cal.speed_factor(now, cal.reference_loops(new_ref))
    assert again["reference"] == "new.json" and again["factor"] == round(factor, 4)
    assert again["factor"] > calibration["factor"]  # the old file's loops were slower
    assert again["after"]["factor"] == round(cal.speed_factor(after, cal.reference_loops(new_ref)), 4)
    assert again["priced_factor"] == again["factor"]  # the loops after ran slower
    assert again["priced_constants"]["host_per_seq_us"] == round(round(4.18 * again["factor"], 2), 2)
    assert cal.served_constants(again) == served
    twice = cal.rereferenced(again, config, old_ref)
    assert cal.served_constants(twice) == served and twice["served"]["reference"] == "old.json"
    assert twice["factor"] == calibration["factor"]


def test_the_validate_config_design_names_is_the_matrix_sarathi_60_run() -> None:
    """`servesim validate examples/validate.yaml` (DESIGN.md's command) runs the matrix's
    sarathi-load60 configuration, with the merged host reference's constants."""
    from servesim.config import load_config

    root = Path(__file__).resolve().parents[2]
    matrix = _validate_runtime()._matrix(root / "examples" / "validate_matrix.yaml", [])
    import dataclasses

    mine = load_config(str(root / "examples" / "validate.yaml"), [])
    assert dataclasses.replace(mine, source=matrix["sarathi-load60"].source) == matrix["sarathi-load60"]
