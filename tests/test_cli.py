"""The command line: outputs, determinism, and a corpus of bad inputs (one line, exit code 2,
nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from servesim.cli import main

BASE = {
    "model": "llama-3.1-8b",
    "workload": {"trace": "azure_conv", "max_requests": 60},
    "policy": {"name": "sarathi", "token_budget": 512},
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
    "seed": 3,
}


def _write(tmp: Path, data: object, name: str = "run.yaml") -> Path:
    path = tmp / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_simulate_writes_the_three_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["simulate", str(_write(tmp_path, BASE)), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms",
                "p99_e2el_ms", "request_throughput", "output_throughput", "total_token_throughput",
                "request_goodput", "completed", "slo_attainment_by_class", "max_itl_ms"):
        assert key in summary
    assert summary["completed"] + summary["failed"] == 60
    table = pd.read_parquet(out / "requests.parquet")
    assert len(table) == 60 and set(table.status) == {"completed"}
    assert (table.ttft_s <= table.e2el_s).all()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["policy"] == {"name": "sarathi", "token_budget": 512, "max_num_seqs": 128,
                                  "decodes_count_against_budget": False}
    assert "TTFT" in capsys.readouterr().out


def test_resolved_config_reproduces_the_run(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["simulate", str(_write(tmp_path, BASE)), "--out", str(a)]) == 0
    assert main(["simulate", str(a / "config.resolved.yaml"), "--out", str(b)]) == 0
    for name in ("summary.json", "requests.parquet", "config.resolved.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_same_seed_byte_identical_and_set_override(tmp_path: Path) -> None:
    cfg = _write(tmp_path, BASE)
    runs = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        assert main(["simulate", str(cfg), "--set", "policy.token_budget=256", "--out", str(out)]) == 0
        runs.append(out)
    assert (runs[0] / "requests.parquet").read_bytes() == (runs[1] / "requests.parquet").read_bytes()
    assert (runs[0] / "summary.json").read_bytes() == (runs[1] / "summary.json").read_bytes()
    assert yaml.safe_load((runs[0] / "config.resolved.yaml").read_text())["policy"]["token_budget"] == 256


BAD_CONFIGS = {
    "malformed": ("model: [unclosed\n", "invalid YAML at line"),
    "top_not_mapping": ("- a\n- b\n", "expected a mapping at the top level"),
    "unknown_top": ({**BASE, "polcy": {}}, "unknown key 'polcy'"),
    "unknown_policy": ({**BASE, "policy": {"name": "fifo"}}, "unknown policy 'fifo'"),
    "unknown_knob": ({**BASE, "policy": {"name": "sarathi", "chunk": 5}}, "policy: unknown key 'chunk'"),
    "wrong_type": ({**BASE, "policy": {"name": "sarathi", "token_budget": "big"}}, "policy.token_budget"),
    "bad_value": ({**BASE, "policy": {"name": "sarathi", "token_budget": 0}}, "token_budget must be >= 1"),
    "bad_util": ({**BASE, "hardware": {"memory_utilization": 1.5}}, "hardware.memory_utilization"),
    "unknown_gpu": ({**BASE, "hardware": {"gpu": "a1"}}, "a1"),
    "unknown_model": ({**BASE, "model": "gpt-9"}, "gpt-9"),
    "bad_slo": ({**BASE, "slo": {"ttft_s": -1}}, "slo.ttft_s"),
    "unknown_slo_key": ({**BASE, "slo": {"ttfts": 1}}, "unknown key 'ttfts'"),
    "bad_seed": ({**BASE, "seed": -4}, "seed"),
    "bad_rate": ({**BASE, "workload": {"rate_scale": 0}}, "rate_scale"),
    "missing_trace": ({**BASE, "workload": {"trace": "nope.csv"}}, "nope.csv"),
    "bad_decode_graphs": ({**BASE, "engine": {"cuda_graph_max_decodes": -1}}, "cuda_graph_max_decodes"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, message = BAD_CONFIGS[case]
    out = tmp_path / "out"
    assert main(["simulate", str(_write(tmp_path, data)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("servesim: error: ") and "\n" not in err
    assert message in err
    assert not out.exists()


BAD_TRACES = {
    "missing_column": ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,10\n", "GeneratedTokens"),
    "unsorted": ("arrival_s,num_prompt_tokens,num_output_tokens\n1.0,5,5\n0.5,5,5\n", "row 2"),
    "negative": ("arrival_s,num_prompt_tokens,num_output_tokens\n0.0,-5,5\n", "row 1"),
    "empty": ("", "trace.csv"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_bad_trace_names_file_and_row(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, message = BAD_TRACES[case]
    (tmp_path / "trace.csv").write_text(text)
    cfg = _write(tmp_path, {**BASE, "workload": {"trace": "trace.csv"}})
    out = tmp_path / "out"
    assert main(["simulate", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trace.csv" in err and message in err and "\n" not in err
    assert not out.exists()


def test_request_longer_than_the_kv_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "trace.csv").write_text(
        "arrival_s,num_prompt_tokens,num_output_tokens\n0.0,100,10\n0.5,2000000,10\n1.0,50,5\n")
    cfg = _write(tmp_path, {**BASE, "workload": {"trace": "trace.csv"}})
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "request 1 (prompt 2000000 + output 10 tokens)" in err and "trace.csv" in err
    # Counted instead of stopping, when asked:
    out = tmp_path / "o2"
    assert main(["simulate", str(cfg), "--set", "engine.oversized=reject", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["rejected_by_reason"] == {"exceeds_max_model_len": 1}


def test_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(_write(tmp_path, BASE)), "--set", "policy.token_budget"]) == 2
    assert "KEY.PATH=VALUE" in capsys.readouterr().err


def test_models_and_policies_listings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0 and main(["policies"]) == 0
    text = capsys.readouterr().out
    for name in ("llama-3.1-8b", "qwen3-30b-a3b", "sarathi", "vllm_v1", "token_budget"):
        assert name in text
