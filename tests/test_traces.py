"""Trace readers, synthetic workloads, windows, classes and the request-table contract."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servesim.errors import InputError
from servesim.traces import (
    COLUMNS,
    SAMPLES,
    ClassesConfig,
    LengthConfig,
    SyntheticConfig,
    WorkloadConfig,
    arrival_times,
    detect_format,
    load_trace,
    load_workload,
    parse_when,
    sample_lengths,
    summarize,
)

BURSTGPT_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def load(rng_seed: int = 0, **spec: object) -> pd.DataFrame:
    return load_workload(WorkloadConfig.from_dict(spec, "test"), np.random.default_rng(rng_seed))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check_contract(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == COLUMNS
    assert df.index.equals(pd.RangeIndex(len(df)))
    assert df["request_id"].dtype == np.int64 and (df["request_id"] == np.arange(len(df))).all()
    assert df["arrival_s"].dtype == np.float64 and df["arrival_s"].is_monotonic_increasing
    for column in ("num_prompt_tokens", "num_output_tokens", "priority"):
        assert df[column].dtype == np.int64
    assert (df["num_prompt_tokens"] >= 1).all() and (df["num_output_tokens"] >= 1).all()
    assert all(isinstance(c, str) for c in df["slo_class"])
    assert all(isinstance(h, tuple) for h in df["hash_ids"])


# --- shipped samples -------------------------------------------------------------------------

@pytest.mark.parametrize("name, rows, duration_s, fmt", [
    ("azure_conv", 19_366, 3501.7, "azure"),
    ("azure_code", 8_819, 3435.9, "azure"),
    ("mooncake_conv", 5_719, 1797.0, "mooncake"),
])
def test_samples_load_with_published_counts(name: str, rows: int, duration_s: float,
                                            fmt: str) -> None:
    df = load(trace=name)
    check_contract(df)
    assert len(df) == rows
    assert df["arrival_s"].iloc[0] == 0.0
    assert df["arrival_s"].iloc[-1] == pytest.approx(duration_s, abs=0.05)
    assert set(df["slo_class"]) == {"default"} and (df["priority"] == 0).all()
    ref = importlib.resources.files("servesim.traces").joinpath("samples", SAMPLES[name])
    with importlib.resources.as_file(ref) as path:
        assert detect_format(path) == fmt


def test_azure_conv_statistics_and_speed() -> None:
    start = time.perf_counter()
    df = load(trace="azure_conv")
    assert time.perf_counter() - start < 1.0
    summary = summarize(df)
    assert summary["count"] == 19_366
    assert round(summary["input_mean"], 1) == 1154.7
    assert (summary["input_p50"], summary["input_max"]) == (1020, 14050)
    assert round(summary["mean_rate_rps"], 3) == 5.530
    assert summary["classes"] == {"default": 19_366}


def test_default_trace_is_azure_conv() -> None:
    assert load().equals(load(trace="azure_conv"))


def test_mooncake_keeps_hash_ids_in_blocks_of_512() -> None:
    df = load(trace="mooncake_conv")
    blocks = df["num_prompt_tokens"].map(lambda n: math.ceil(n / 512))
    assert (df["hash_ids"].map(len) == blocks).all()
    assert df["hash_ids"].iloc[0][0] == 0
    assert load(trace="azure_code")["hash_ids"].map(len).eq(0).all()


def test_samples_ship_unmodified_with_licences() -> None:
    digests = {
        "azure_code": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
        "azure_conv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
        "mooncake_conv": "0b278e6a285958f6f087394ad02026d734591c67f44cccecb0e0f9a59d509b98",
    }
    samples = importlib.resources.files("servesim.traces").joinpath("samples")
    readme = samples.joinpath("README.md").read_text()
    for name, digest in digests.items():
        data = samples.joinpath(SAMPLES[name]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert SAMPLES[name] in readme and f"`{name}`" in readme
    licences = samples.joinpath("licenses")
    for licence in ("AzurePublicDataset-LICENSE-CC-BY-4.0.txt", "Mooncake-LICENSE-APACHE.txt"):
        assert licences.joinpath(licence).read_text().strip()
        assert licence in readme


# --- other formats ---------------------------------------------------------------------------

def test_burstgpt_reader_keeps_extra_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "burst.csv", BURSTGPT_HEADER + "5,ChatGPT,100,20,120,Conversation log\n"
                 "7.5,GPT-4,300,40,340,API log\n9,ChatGPT,50,5,55,Conversation log\n")
    assert detect_format(path) == "burstgpt"
    raw = load_trace(path)
    assert list(raw["arrival_s"]) == [5.0, 7.5, 9.0] and list(raw["Model"])[1] == "GPT-4"
    df = load(trace=str(path), classes={"column": "Model"})
    check_contract(df)
    assert list(df["arrival_s"]) == [0.0, 2.5, 4.0]
    assert list(df["num_prompt_tokens"]) == [100, 300, 50]
    assert list(df["slo_class"]) == ["ChatGPT", "GPT-4", "ChatGPT"]
    gpt4 = {"rules": [{"name": "premium", "when": {"Model": {"eq": "GPT-4"}}}]}
    assert list(load(trace=str(path), classes=gpt4)["slo_class"]) == ["default", "premium",
                                                                     "default"]


def test_generic_csv_with_per_row_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.csv", "arrival_s,num_prompt_tokens,num_output_tokens,slo_class,"
                 "priority,hash_ids\n1.0,10,2,chat,0,4 5\n1.5,20,3,batch,2,\n")
    assert detect_format(path) == "csv"
    df = load_workload(WorkloadConfig(trace=path.name), np.random.default_rng(0),
                       base_dir=tmp_path)
    check_contract(df)
    assert list(df["slo_class"]) == ["chat", "batch"] and list(df["priority"]) == [0, 2]
    assert list(df["arrival_s"]) == [0.0, 0.5] and list(df["hash_ids"]) == [(4, 5), ()]


def test_generic_jsonl_with_hash_ids(tmp_path: Path) -> None:
    lines = [{"arrival_s": 0.25, "num_prompt_tokens": 600, "num_output_tokens": 4,
              "hash_ids": [7, 8]},
             {"arrival_s": 1.0, "num_prompt_tokens": 3, "num_output_tokens": 1}]
    path = write(tmp_path, "mine.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert detect_format(path) == "jsonl"
    df = load(trace=str(path))
    check_contract(df)
    assert list(df["hash_ids"]) == [(7, 8), ()]


def test_format_can_be_forced(tmp_path: Path) -> None:
    path = write(tmp_path, "azure.txt", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n")
    with pytest.raises(InputError, match="azure.txt.*unknown trace format"):
        load(trace=str(path))
    df = load(trace=str(path), format="azure")
    assert df["arrival_s"].iloc[1] == pytest.approx(4.314579)


# --- bad input -------------------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BAD_INPUTS = [
    ("nogen.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,3\n",
     ["nogen.csv", "missing column 'GeneratedTokens'"]),
    ("unsorted.csv", AZURE_HEADER + "2023-11-16 18:15:46.68,3,4\n2023-11-16 18:15:47.0,3,4\n"
     "2023-11-16 18:15:45.0,3,4\n", ["unsorted.csv", "row 3", "'TIMESTAMP'", "earlier"]),
    ("badtime.csv", AZURE_HEADER + "2023-11-16 18:15:46.68,3,4\nyesterday,3,4\n",
     ["badtime.csv", "row 2", "'TIMESTAMP'", "'yesterday'"]),
    ("negative.csv", "arrival_s,num_prompt_tokens,num_output_tokens\n-1,3,4\n",
     ["negative.csv", "row 1", "'arrival_s'", ">= 0"]),
    ("negtok.csv", "arrival_s,num_prompt_tokens,num_output_tokens\n0,3,4\n1,-3,4\n",
     ["negtok.csv", "row 2", "'num_prompt_tokens'", "-3"]),
    ("zero.csv", AZURE_HEADER + "2023-11-16 18:15:46.68,3,4\n2023-11-16 18:15:47.68,3,0\n",
     ["zero.csv", "row 2", "'GeneratedTokens'", "got 0"]),
    ("text.csv", BURSTGPT_HEADER + "1,ChatGPT,12,3,15,x\n2,ChatGPT,many,3,15,x\n",
     ["text.csv", "row 2", "'Request tokens'", "'many'"]),
    ("fraction.csv", "arrival_s,num_prompt_tokens,num_output_tokens\n0,3.5,4\n",
     ["fraction.csv", "row 1", "'num_prompt_tokens'", "3.5"]),
    ("blank.csv", AZURE_HEADER + "2023-11-16 18:15:46.68,,4\n",
     ["blank.csv", "row 1", "'ContextTokens'", "empty cell"]),
    ("empty.csv", "", ["empty.csv", "empty"]),
    ("header.csv", AZURE_HEADER, ["header.csv", "no data rows"]),
    ("empty.jsonl", "\n", ["empty.jsonl", "empty"]),
    ("trace.parquet", "x", ["trace.parquet", "unknown trace format"]),
    ("broken.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,\n',
     ["broken.jsonl", "line 2", "not valid JSON"]),
    ("nolen.jsonl", '{"timestamp": 0, "input_length": 5, "hash_ids": [0]}\n',
     ["nolen.jsonl", "missing column 'output_length'"]),
    ("gap.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n\n'
     '{"timestamp": 3000, "input_length": 5}\n', ["gap.jsonl", "line 3", "'output_length'"]),
    ("ms.jsonl", '{"timestamp": 3000, "input_length": 5, "output_length": 1}\n'
     '{"timestamp": 0, "input_length": 5, "output_length": 1}\n',
     ["ms.jsonl", "line 2", "'timestamp'", "earlier"]),
    ("hashes.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": "a"}\n',
     ["hashes.jsonl", "line 1", "'hash_ids'"]),
    ("booltok.jsonl", '{"arrival_s": 0, "num_prompt_tokens": true, "num_output_tokens": 1}\n',
     ["booltok.jsonl", "line 1", "'num_prompt_tokens'"]),
]


@pytest.mark.parametrize("name, text, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_traces_name_file_row_and_column(tmp_path: Path, name: str, text: str,
                                             expected: list[str]) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(InputError) as info:
        load(trace=str(path))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_file_and_bad_class_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.csv.*not found"):
        load(trace=str(tmp_path / "nowhere.csv"))
    path = write(tmp_path, "c.csv", "arrival_s,num_prompt_tokens,num_output_tokens,tier\n"
                 "0,1,1,gold\n1,1,1,\n")
    with pytest.raises(InputError, match=r"row 2, column 'tier'.*empty"):
        load(trace=str(path), classes={"column": "tier"})
    with pytest.raises(InputError, match="no column 'tenant'"):
        load(trace=str(path), classes={"rules": [{"name": "a", "when": "tenant == 3"}]})


@pytest.mark.parametrize("spec, expected", [
    ({"rate": 2}, ["where", "unknown key 'rate'"]),
    ({"rate_scale": -1}, ["where.rate_scale", "> 0"]),
    ({"rate_scale": "fast"}, ["where.rate_scale", "expected float"]),
    ({"max_requests": 0}, ["where.max_requests"]),
    ({"max_requests": True}, ["where.max_requests"]),
    ({"start_s": 10, "end_s": 5}, ["where.end_s"]),
    ({"end_s": 5, "duration_s": 5}, ["where.duration_s"]),
    ({"format": "parquet"}, ["where.format", "'azure'"]),
    ({"synthetic": {"arrival": "gamma", "cv": 0}}, ["where.synthetic.cv", "> 0"]),
    ({"synthetic": {"cv": 2}}, ["where.synthetic.cv", "gamma"]),
    ({"synthetic": {"rate_rps": 0}}, ["where.synthetic.rate_rps"]),
    ({"synthetic": {"prompt": {"dist": "pareto"}}}, ["where.synthetic.prompt.dist", "'lognormal'"]),
    ({"synthetic": {"prompt": {"dist": "lognormal"}}}, ["where.synthetic.prompt.mean"]),
    ({"synthetic": {"prompt": {"dist": "uniform", "min": 5}}}, ["synthetic.prompt.max"]),
    ({"synthetic": {"output": {"mu": 3}}}, ["where.synthetic.output", "unknown key 'mu'"]),
    ({"synthetic": {}, "trace": "azure_conv"}, ["where.synthetic", "not both"]),
    ({"classes": {"rules": [{"priority": 1}]}}, ["where.classes.rules[0]", "missing key 'name'"]),
    ({"classes": {"rules": [{"name": "a", "when": "len(x) > 3"}]}}, ["rules[0].when"]),
    ({"classes": {"rules": [{"name": "a", "when": "x < big"}]}}, ["rules[0].when", "'big'"]),
    ({"classes": {"rules": [{"name": "a", "when": {"x": {"about": 3}}}]}}, ["'about'"]),
    ({"classes": {"rules": [{"name": "a", "fraction": 0.7}, {"name": "b", "fraction": 0.6}]}},
     ["where.classes.rules", "more than 1"]),
    ({"classes": {"rules": [{"name": "a"}], "column": "tier"}}, ["not both"]),
    ({"classes": "interactive"}, ["where.classes", "mapping"]),
])
def test_bad_config_names_the_key(spec: dict[str, object], expected: list[str]) -> None:
    with pytest.raises(InputError) as info:
        WorkloadConfig.from_dict(spec, "where")
    for part in expected:
        assert part in str(info.value)


def test_synthetic_needs_an_end() -> None:
    with pytest.raises(InputError, match="duration_s, end_s or max_requests"):
        load(synthetic={})


# --- synthetic -------------------------------------------------------------------------------

@pytest.mark.parametrize("arrival, cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_mean_rate_within_three_standard_errors(arrival: str, cv: float,
                                                          seed: int) -> None:
    rate, horizon = 4.0, 5000.0
    df = load(seed, synthetic={"arrival": arrival, "cv": cv, "rate_rps": rate},
              duration_s=horizon)
    check_contract(df)
    # A renewal process's count over T has variance ~ rate * T * cv^2.
    assert abs(len(df) - rate * horizon) < 3 * cv * math.sqrt(rate * horizon) + 1
    assert df["arrival_s"].iloc[-1] < horizon


@pytest.mark.parametrize("cv", [0.25, 1.0, 2.0, 4.0])
def test_gamma_gaps_have_the_asked_cv(cv: float) -> None:
    cfg = SyntheticConfig(arrival="gamma", cv=cv, rate_rps=10.0)
    gaps = np.diff(arrival_times(cfg, np.random.default_rng(7), count=200_000))
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)


def test_synthetic_request_count_and_lengths() -> None:
    df = load(synthetic={"prompt": {"dist": "uniform", "min": 10, "max": 20},
                         "output": {"dist": "fixed", "value": 7}}, max_requests=500)
    check_contract(df)
    assert len(df) == 500 and df["arrival_s"].iloc[0] == 0.0
    assert df["num_prompt_tokens"].between(10, 20).all()
    assert set(df["num_prompt_tokens"]) == set(range(10, 21)) and set(df["num_output_tokens"]) == {7}


def test_lognormal_lengths_by_mean_or_median_are_clipped() -> None:
    rng = np.random.default_rng(3)
    by_median = sample_lengths(LengthConfig(dist="lognormal", median=800, sigma=0.8), 100_000, rng)
    assert np.median(by_median) == pytest.approx(800, rel=0.02)
    by_mean = sample_lengths(LengthConfig(dist="lognormal", mean=800, sigma=0.8), 100_000, rng)
    assert by_mean.mean() == pytest.approx(800, rel=0.02)
    clipped = sample_lengths(LengthConfig(dist="lognormal", median=800, sigma=2, min=100,
                                          max=2000), 10_000, rng)
    assert clipped.min() == 100 and clipped.max() == 2000 and clipped.dtype == np.int64


def test_trace_sampled_lengths_keep_pairs_of_real_rows() -> None:
    df = load(synthetic={"prompt": {"dist": "trace", "trace": "azure_code"},
                         "output": {"dist": "trace", "trace": "azure_code"}}, max_requests=300)
    code = load(trace="azure_code")
    real = set(code[["num_prompt_tokens", "num_output_tokens"]].itertuples(index=False))
    assert set(df[["num_prompt_tokens", "num_output_tokens"]].itertuples(index=False)) <= real
    capped = load(synthetic={"prompt": {"dist": "trace", "trace": "azure_code", "max": 1000}},
                  max_requests=300)
    assert capped["num_prompt_tokens"].max() == 1000


# --- window, rate_scale, truncation, jitter --------------------------------------------------

def test_rate_scale_divides_arrivals() -> None:
    base, fast = load(trace="azure_code"), load(trace="azure_code", rate_scale=2)
    assert np.array_equal(fast["arrival_s"].to_numpy(), base["arrival_s"].to_numpy() / 2)
    assert summarize(fast)["duration_s"] == pytest.approx(summarize(base)["duration_s"] / 2)


def test_time_window_and_truncation() -> None:
    full = load(trace="azure_conv")
    window = load(trace="azure_conv", start_s=600, end_s=900)
    inside = full[(full["arrival_s"] >= 600) & (full["arrival_s"] < 900)]
    assert len(window) == len(inside) > 0
    assert np.allclose(window["arrival_s"].to_numpy(), inside["arrival_s"].to_numpy() - 600)
    assert window["arrival_s"].iloc[0] > 0  # relative to the window start, not the first request
    assert load(trace="azure_conv", start_s=600, duration_s=300).equals(window)
    first = load(trace="azure_conv", max_requests=100)
    assert first.equals(full.head(100))
    both = load(trace="azure_conv", start_s=600, end_s=900, max_requests=10, rate_scale=4)
    assert np.allclose(both["arrival_s"].to_numpy(), window["arrival_s"].to_numpy()[:10] / 4)
    with pytest.raises(InputError, match="no request arrives"):
        load(trace="azure_conv", start_s=10_000)


def test_jitter_spreads_mooncake_buckets() -> None:
    plain = load(trace="mooncake_conv")
    jittered = load(5, trace="mooncake_conv", jitter_s=3.0)
    check_contract(jittered)
    assert plain["arrival_s"].nunique() == 600
    assert jittered["arrival_s"].nunique() == len(jittered)
    ids = [h[:3] for h in jittered["hash_ids"]]
    assert sorted(ids) == sorted(h[:3] for h in plain["hash_ids"])  # same requests, reordered


# --- classes ---------------------------------------------------------------------------------

def test_classes_by_rule_text_and_mapping_agree() -> None:
    text = {"rules": [{"name": "interactive", "when": "num_prompt_tokens <= 1024 and "
                       "num_output_tokens < 200"}, {"name": "batch", "priority": 2}]}
    mapping = {"rules": [{"name": "interactive",
                          "when": {"num_prompt_tokens": {"le": 1024}, "num_output_tokens": {"lt": 200}}},
                         {"name": "batch", "priority": 2}]}
    a, b = load(trace="azure_conv", classes=text), load(trace="azure_conv", classes=mapping)
    assert a.equals(b)
    short = (a["num_prompt_tokens"] <= 1024) & (a["num_output_tokens"] < 200)
    assert (a.loc[short, "slo_class"] == "interactive").all() and (a.loc[short, "priority"] == 0).all()
    assert (a.loc[~short, "slo_class"] == "batch").all() and (a.loc[~short, "priority"] == 2).all()


def test_unmatched_rows_get_the_default_class() -> None:
    df = load(trace="azure_code", classes={"rules": [{"name": "long", "when": "num_prompt_tokens > 7000",
                                                      "priority": 1}]})
    assert set(df["slo_class"]) == {"long", "default"}
    assert (df.loc[df["slo_class"] == "default", "priority"] == 0).all()


def test_classes_by_fraction() -> None:
    rules = {"rules": [{"name": "gold", "fraction": 0.2, "priority": 0},
                       {"name": "silver", "fraction": 0.3, "priority": 1},
                       {"name": "bronze", "priority": 2}]}
    df = load(11, trace="azure_conv", classes=rules)
    n = len(df)
    for name, share in (("gold", 0.2), ("silver", 0.3), ("bronze", 0.5)):
        count = int((df["slo_class"] == name).sum())
        assert abs(count - share * n) < 3 * math.sqrt(n * share * (1 - share))
    assert not df.equals(load(12, trace="azure_conv", classes=rules))


def test_parse_when_forms() -> None:
    conds = parse_when("num_prompt_tokens>=5 and Log Type != 'API log'")
    assert [(c.column, c.op, c.value) for c in conds] == [("num_prompt_tokens", ">=", 5.0),
                                                          ("Log Type", "!=", "API log")]
    assert parse_when({"x": {"gt": 1, "le": 4}})[1].op == "<="
    with pytest.raises(InputError, match="strings compare only"):
        parse_when("Model < 'a'")
    assert ClassesConfig.from_dict({"column": "tier"}, "w").column == "tier"


# --- determinism and invariants --------------------------------------------------------------

def test_same_seed_same_table() -> None:
    spec = {"synthetic": {"arrival": "gamma", "cv": 2.0, "rate_rps": 8.0,
                          "prompt": {"dist": "lognormal", "mean": 900, "sigma": 1.0, "max": 8192},
                          "output": {"dist": "trace", "trace": "azure_conv"}},
            "duration_s": 60.0, "jitter_s": 0.5,
            "classes": {"rules": [{"name": "a", "fraction": 0.5}, {"name": "b"}]}}
    first, second = load(42, **spec), load(42, **spec)
    check_contract(first)
    assert first.equals(second)
    assert not first.equals(load(43, **spec))
    assert load(1, trace="mooncake_conv", jitter_s=3.0).equals(
        load(1, trace="mooncake_conv", jitter_s=3.0))


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30),
       tokens=st.lists(st.integers(1, 10_000), min_size=30, max_size=30),
       rate_scale=st.floats(0.1, 10.0), start_s=st.floats(0.0, 100.0),
       max_requests=st.integers(1, 40))
def test_generic_trace_invariants(tmp_path_factory: pytest.TempPathFactory, gaps: list[float],
                                  tokens: list[int], rate_scale: float, start_s: float,
                                  max_requests: int) -> None:
    arrivals = np.cumsum(gaps) + 3.0
    rows = [f"{float(t)!r},{p},{o}"
            for t, p, o in zip(arrivals, tokens, reversed(tokens), strict=False)]
    path = tmp_path_factory.mktemp("gen") / "t.csv"
    path.write_text("arrival_s,num_prompt_tokens,num_output_tokens\n" + "\n".join(rows) + "\n")
    trace_s = arrivals - arrivals[0]
    kept = np.flatnonzero(trace_s >= start_s)[:max_requests]
    expected = trace_s[kept]
    spec = WorkloadConfig(trace=str(path), rate_scale=rate_scale, start_s=start_s,
                          max_requests=max_requests)
    if expected.size == 0:
        with pytest.raises(InputError):
            load_workload(spec, np.random.default_rng(0))
        return
    df = load_workload(spec, np.random.default_rng(0))
    check_contract(df)
    assert len(df) == expected.size
    assert np.allclose(df["arrival_s"].to_numpy(), (expected - start_s) / rate_scale)
    assert (df["arrival_s"] >= 0).all()
    assert list(df["num_prompt_tokens"]) == [tokens[i] for i in kept]
