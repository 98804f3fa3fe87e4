"""The profiler on the CPU: grids, the resumable journal, the schema pin, derived tables and a
few points timed for real under TRITON_INTERPRET=1 on a toy model."""

from __future__ import annotations

import itertools
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before servesim.kernels is imported

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from servesim import cli  # noqa: E402
from servesim.errors import InputError  # noqa: E402
from servesim.models.arch import load_model  # noqa: E402
from servesim.models.profile_schema import (  # noqa: E402
    CONTENTION_TARGETS,
    CORUNNERS,
    GEMM_ROW_CLASSES,
    OP_AXES,
    SCHEMA_VERSION,
    TABLES,
    gpu_key,
    table_for,
)
from servesim.profiler import run as profiler_run
from servesim.profiler.grid import (  # noqa: E402
    SPECS,
    _gemm_step_key,
    all_points,
    contention_points,
    gemm_rows,
    gemm_shapes,
    ops_points,
    share_points,
)
from servesim.profiler.measure import Measurer  # noqa: E402
from servesim.profiler.operators import OperatorFactory, decode_contexts  # noqa: E402
from servesim.profiler.partitions import Partitions  # noqa: E402
from servesim.profiler.run import moe_combine_rows  # noqa: E402
from servesim.profiler.runtime_passes import RUNTIME_PROMPTS  # noqa: E402
from servesim.profiler.store import Journal, write_tables  # noqa: E402
from servesim.profiler.timing import Timer  # noqa: E402
from servesim.profiler.validate import (  # noqa: E402
    calibration_passes,
    held_out_points,
    random_batches,
    sweep_order,
)

TINY = "tests/data/profiler/tiny-dense.json"
TINY_MOE = "tests/data/profiler/tiny-moe.json"
PRESETS = ("llama-3.1-8b", "qwen2.5-32b", "mixtral-8x7b", "qwen3-30b-a3b")


def test_schema_is_pinned() -> None:
    # Changing any of this breaks every shipped profile: bump SCHEMA_VERSION and re-profile.
    assert SCHEMA_VERSION == 1
    assert TABLES["ops"] == ("op", "a", "b", "c", "median_us", "p20_us", "p80_us", "reps", "method")
    assert TABLES["sm_shares"] == ("op", "a", "b", "c", "sms", "median_us", "p20_us", "p80_us", "reps", "method")
    assert TABLES["contention"] == ("op", "a", "b", "c", "sms", "corunner", "corunner_sms", "alone_us",
                                    "corun_us", "slowdown")
    assert TABLES["validation_iters"][:7] == ("batch_id", "prefill_tokens", "prefill_prefix", "num_decodes",
                                              "decode_context", "max_decode_context", "num_logits")
    assert OP_AXES["attn_decode"] == ("batch", "context", "skew")
    assert OP_AXES["attn_prefill"] == ("q", "prefix")
    assert CONTENTION_TARGETS == ("attn_decode", "gemm_small", "elementwise", "gemm_large", "attn_prefill")
    assert CORUNNERS == ("decode_attn", "decode_gemm", "prefill_gemm", "prefill_attn")
    assert table_for("input_norm") == table_for("final_norm") == "rmsnorm"
    assert gpu_key("NVIDIA H200") == "h200"


@pytest.mark.parametrize("model", PRESETS)
@pytest.mark.parametrize("mode", ["quick", "full"])
def test_ops_grid_is_cartesian_and_shares_are_a_subset(model: str, mode: str) -> None:
    arch = load_model(model)
    ops = ops_points(arch, mode)
    assert all(p.op in OP_AXES for p in ops)
    by_op: dict[str, set[tuple[float, ...]]] = {}
    for p in ops:
        by_op.setdefault(p.op, set()).add((p.a, p.b, p.c)[: len(OP_AXES[p.op])])
    for op, pts in by_op.items():
        axes = [sorted({x[i] for x in pts}) for i in range(len(OP_AXES[op]))]
        assert len(pts) == len(list(itertools.product(*axes))), op
    on_grid = {(p.op, p.a, p.b, p.c) for p in ops}
    shares = share_points(arch, mode)
    assert shares and all((p.op, p.a, p.b, p.c) in on_grid for p in shares)
    assert {p.sms for p in shares} == set(SPECS[mode].sm_counts)
    assert len({p.key for p in all_points(arch, mode)}) == len(all_points(arch, mode))


def test_gemm_rows_catch_both_sides_of_every_early_step() -> None:
    spec = SPECS["quick"]
    n, k = gemm_shapes(load_model("llama-3.1-8b"))["qkv"]
    rows = set(gemm_rows(n, k, spec, 4096))
    steps = [m for m in range(2, 4097)
             if _gemm_step_key(m, n, k, 132) != _gemm_step_key(m - 1, n, k, 132)
             and _gemm_step_key(m, n, k, 132)[-1] <= spec.max_waves]
    assert steps and all({m - 1, m} <= rows for m in steps)
    assert {1, 16, 64, 1024, 4096} <= rows
    # About 1.25x apart up to 4,096 rows (rounding adds a little), 1.5x beyond.
    ordered = sorted(gemm_rows(n, k, spec, 32768))
    gaps = [(hi / lo, hi) for lo, hi in zip(ordered, ordered[1:], strict=False) if lo >= 4]
    assert max(r for r, hi in gaps if hi <= 4096) < 1.3
    assert max(r for r, _ in gaps) <= 1.5 + 1e-3 and any(r > 1.3 for r, _ in gaps)
    assert len(gemm_rows(n, k, SPECS["full"], 32768)) > len(gemm_rows(n, k, spec, 32768))


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-30b-a3b"])
def test_gemm_row_classes_are_where_the_kernels_tiling_steps(model: str) -> None:
    """GEMM_ROW_CLASSES (what the simulator's lane table reads a co-runner's decodes by) is
    where kernels.configs changes the tiling of small GEMMs, for every GEMM of the model and on
    a partition as on the whole GPU; the partition shares time both sides of each step."""
    from servesim.kernels.configs import gemm_config

    arch = load_model(model)
    for n, k in gemm_shapes(arch).values():
        for sms in (40, 92, 132):
            tiling = [(c.kind, c.block_m) for c in (gemm_config(m, n, k, sms) for m in range(1, 66))]
            steps = [m for m in range(2, 66) if tiling[m - 1] != tiling[m - 2]]
            assert [m - 1 for m in steps] == list(GEMM_ROW_CLASSES), (n, k, sms)
    shares = {p.a for p in share_points(arch, "quick") if p.op == "qkv"}
    assert {r + d for r in GEMM_ROW_CLASSES for d in (0, 1)} <= shares


def test_contention_covers_both_sides_of_each_split() -> None:
    pts = contention_points(load_model("llama-3.1-8b"), "quick")
    for n in SPECS["quick"].split_sms:
        sides = {(p.sms, p.corunner_sms) for p in pts if n in (p.sms, p.corunner_sms)}
        assert {(n, 132 - n), (132 - n, n)} <= sides
    assert {p.corunner for p in pts} == set(CORUNNERS)
    assert {p.op for p in pts} == set(CONTENTION_TARGETS)


def test_journal_resumes_and_sets_other_grids_aside(tmp_path) -> None:
    j = Journal(tmp_path, "grid-A")
    j.add("k1", "ops", {"op": "qkv", "a": 1, "b": 0, "c": 0, "median_us": 5.0, "p20_us": 4.0,
                        "p80_us": 6.0, "reps": 5, "method": "graph"})
    j.close()
    with (tmp_path / "journal.jsonl").open("a") as fh:
        fh.write('{"key": "k2", "tab')  # cut short by an interruption
    again = Journal(tmp_path, "grid-A")
    assert "k1" in again and "k2" not in again
    assert again.table("ops").median_us.tolist() == [5.0]
    again.close()
    other = Journal(tmp_path, "grid-B")
    assert "k1" not in other and (tmp_path / "journal.other-grid.jsonl").exists()
    other.close()


def test_write_tables_checks_the_schema(tmp_path) -> None:
    with pytest.raises(ValueError, match="schema"):
        write_tables(tmp_path, {"ops": pd.DataFrame({"op": ["x"]})})


def test_moe_combine_is_fused_minus_parts() -> None:
    rows = [("moe_fused", 8, 0, 50.0), ("moe_align", 8, 0, 5.0), ("moe_gate_up", 8, 0, 20.0),
            ("moe_silu_mul", 8, 0, 3.0), ("moe_down", 8, 0, 12.0), ("moe_fused", 8, 1, 70.0)]
    ops = pd.DataFrame([{"op": o, "a": a, "b": b, "c": 0.0, "median_us": t, "p20_us": t, "p80_us": t,
                         "reps": 5, "method": "graph"} for o, a, b, t in rows])
    combine = moe_combine_rows(ops)
    assert combine.median_us.tolist() == [10.0] and combine.method.tolist() == ["derived"]
    assert tuple(combine.columns) == TABLES["ops"]


@pytest.mark.parametrize(("batch", "mean", "skew"), [(1, 100, 4), (4, 100, 1), (4, 100, 8), (64, 512, 4)])
def test_decode_contexts_keep_mean_and_straggler(batch: int, mean: int, skew: float) -> None:
    lens = decode_contexts(batch, mean, skew)
    assert len(lens) == batch and min(lens) >= 1
    assert max(lens) == (mean if batch == 1 or skew <= 1 else int(min(skew, batch) * mean))
    assert abs(sum(lens) / batch - mean) <= 1 + (1 if skew >= batch else 0)


def test_held_out_points_are_off_the_grid_and_batches_are_mixed() -> None:
    arch = load_model("qwen3-30b-a3b")
    grid = {(p.op, p.a) for p in ops_points(arch, "quick")}
    held = held_out_points(arch, "quick", 4)
    assert held and all(p.table == "validation_ops" for p in held)
    assert sum((p.op, p.a) in grid for p in held) <= len(held) // 10
    # Each operator's shapes are timed smallest first, as its grid is (power capping after
    # large GEMMs slowed a held-out shape timed right after two larger ones by 15-20 %).
    ops = list(dict.fromkeys(p.op for p in held))
    assert [p.op for p in held] == [op for op in ops for _ in range(4)]
    for op in ops:
        shapes = [(p.a, p.b, p.c) for p in held if p.op == op]
        assert shapes == sorted(shapes)
    llama = held_out_points(load_model("llama-3.1-8b"), "quick", 6)
    assert len({p.a for p in llama if p.op == "down"}) == 6  # the same draws as before, reordered
    # They are timed inside the grid's sweep, each between its grid neighbours.
    grid_llama = [p for p in ops_points(load_model("llama-3.1-8b"), "quick") if p.table == "ops"]
    sweep = sweep_order(grid_llama, llama)
    assert sorted(p.key for p in sweep) == sorted(p.key for p in grid_llama + llama)
    for i, p in enumerate(sweep):
        if p.table == "validation_ops" and p.op == "down":
            before = [q.a for q in sweep[:i] if q.op == "down" and q.table == "ops"]
            after = [q.a for q in sweep[i:] if q.op == "down" and q.table == "ops"]
            assert before and after and max(before) < p.a < min(after)
    assert [p.op for p in sweep if p.table == "ops"] == [p.op for p in grid_llama]
    batches = random_batches(10, "quick")
    assert any(b.chunks for b in batches) and any(not b.chunks for b in batches)
    assert all(b.num_logits == len(b.chunks) + len(b.decode_context) for b in batches)


def test_points_measure_on_the_cpu_interpreter() -> None:
    arch = load_model(TINY_MOE)
    factory = OperatorFactory(arch, torch.device("cpu"), kv_tokens=512)
    timer = Timer(torch.device("cpu"), target_us=1.0, min_reps=2, max_reps=2)
    measurer = Measurer(factory, timer, Partitions(torch.device("cpu")), SPECS["tiny"].split_sms)
    for p in ops_points(arch, "tiny"):
        if p.op in ("qkv", "attn_decode", "moe_fused", "rmsnorm", "sample") and p.a <= 8:
            row = measurer.measure(p)
            assert set(row) == set(TABLES["ops"]) and row["median_us"] > 0 and row["method"] == "cpu"


def test_profile_dry_run_writes_every_table(tmp_path) -> None:
    prof = profiler_run.ModelProfiler(load_model(TINY), tmp_path, "tiny", torch.device("cpu"))
    prof.points = [p for p in prof.points if p.a <= 1 or p.op == "iteration_fixed"][:12]
    prof.timer = Timer(torch.device("cpu"), target_us=1.0, min_reps=2, max_reps=2)
    meta = prof.run("test")
    out = tmp_path / "cpu" / "tiny-dense"
    assert json.loads((out / "meta.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert meta["tables"]["ops"] >= 1 and (out / "ops.parquet").exists()
    assert set(meta["sm_clock"]) == {"operators", "passes", "runtime_passes", "partitions"}  # {} off the GPU
    passes = pd.read_parquet(out / "passes.parquet")
    runtime = passes[passes.method.str.startswith("runtime_")]  # the runtime's prompt passes
    assert sorted(runtime.method.unique()) == ["runtime_graph_cpu", "runtime_graph_rested_cpu", "runtime_served_cpu"]
    assert sorted(runtime.prefill_tokens.astype(int).unique()) == list(RUNTIME_PROMPTS["tiny"])
    assert (runtime.median_us > 0).all() and (runtime.sms == 4).all() and (runtime.num_decodes == 0).all()
    passes = passes[~passes.method.str.startswith("runtime_")]
    assert sorted(set(passes.sms)) == [2, 4]  # a partition of the CPU's 4 "SMs", and all 4
    assert len(passes) == len(calibration_passes("tiny")) and (passes.median_us > 0).all()
    mixed = passes[(passes.prefill_tokens != "") & (passes.sms == 4)]
    assert len(mixed) == 4 and len(calibration_passes("tiny", partitions=False)) == 8
    lanes = passes[(passes.prefill_tokens != "") & (passes.sms == 2)]  # a prompt on a partition
    assert sorted(lanes.corunner_decodes) == [0, 2] and sorted(lanes.corunner_sms) == [0, 2]
    assert (lanes.num_decodes == 0).all() and (lanes.corunner_context == lanes.corunner_decodes * 16).all()
    beside = passes[passes.corunner_prompt > 0]  # a decode lane beside a looping prompt
    assert len(beside) == 1 and beside.iloc[0].num_decodes == 2 and beside.iloc[0].corunner_prompt == 16
    assert beside.iloc[0].sms == 2 and beside.iloc[0].corunner_sms == 2
    again = profiler_run.ModelProfiler(load_model(TINY), tmp_path, "tiny", torch.device("cpu"))
    again.points = prof.points
    assert again.run("test")["profile_seconds"] < meta["profile_seconds"] + 5


def test_runtime_passes_are_added_to_an_existing_profile(tmp_path) -> None:
    """`--runtime-passes-only`: the runtime's prompt passes replace the profile's earlier ones;
    every other row and table is kept, and meta.json says when and where they were timed."""
    out = tmp_path / "cpu" / "tiny-dense"
    with pytest.raises(InputError, match="no profile"):
        profiler_run.add_runtime_passes(TINY, tmp_path, "tiny", "cpu", "abc")
    out.mkdir(parents=True)
    (out / "meta.json").write_text(json.dumps({"model": "tiny-dense", "gpu": "cpu", "tables": {"passes": 2}}))
    old = pd.DataFrame([{**{c: 0 for c in TABLES["passes"]}, "prefill_tokens": "", "prefill_prefix": "",
                         "num_decodes": 1, "median_us": 5.0, "method": m, "batch_id": i}
                        for i, m in enumerate(["graph", "runtime_graph"])])[list(TABLES["passes"])]
    old.to_parquet(out / "passes.parquet", index=False)
    meta = profiler_run.add_runtime_passes(TINY, tmp_path, "tiny", "cpu", "abc")
    passes = pd.read_parquet(out / "passes.parquet")
    assert list(passes.method[:1]) == ["graph"] and "runtime_graph" not in set(passes.method)
    assert len(passes) == 1 + 3 * len(RUNTIME_PROMPTS["tiny"]) == meta["tables"]["passes"]
    assert meta["runtime_passes"]["commit"] == "abc" and meta["runtime_passes"]["rows"] == len(passes) - 1
    assert json.loads((out / "meta.json").read_text())["runtime_passes"]["date"]


def test_ops_only_retimes_one_operator_of_an_existing_profile(tmp_path, capsys) -> None:
    """`--ops-only attn_decode`: the grid's decode-attention points are timed again and replace
    that operator's rows; the other operators' rows and the other tables are kept, and meta.json
    says what was timed, when, on which card, and which grid axes changed."""
    with pytest.raises(InputError, match="no profile"):
        profiler_run.retime_ops(TINY, tmp_path, "tiny", "cpu", ["attn_decode"], "abc")
    out = tmp_path / "cpu" / "tiny-dense"
    out.mkdir(parents=True)
    grid = {"mode": "tiny", "decode_batch": [1], "decode_context": list(SPECS["tiny"].decode_context)}
    (out / "meta.json").write_text(json.dumps({"model": "tiny-dense", "gpu": "cpu", "tables": {"ops": 2},
                                               "grid": grid}))
    old = pd.DataFrame([{"op": op, "a": 1.0, "b": 16.0, "c": 1.0, "median_us": 7.0, "p20_us": 7.0, "p80_us": 7.0,
                         "reps": 3, "method": "graph"} for op in ("attn_decode", "qkv")])[list(TABLES["ops"])]
    old.to_parquet(out / "ops.parquet", index=False)
    old.to_parquet(out / "validation_ops.parquet", index=False)  # held-out shapes, retimed alike
    (out / "passes.parquet").write_bytes(b"kept")
    with pytest.raises(InputError, match="attn_nowhere: not an operator"):
        profiler_run.retime_ops(TINY, tmp_path, "tiny", "cpu", ["attn_decode", "attn_nowhere"], "abc")
    # From the command line: one line naming the operator, exit 2, nothing rewritten.
    assert cli.main(["profile", "--model", TINY, "--device", "cpu", "--out", str(tmp_path),
                     "--ops-only", "attn_nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attn_nowhere: not an operator" in err[0]
    assert pd.read_parquet(out / "ops.parquet").median_us.tolist() == [7.0, 7.0]
    meta = profiler_run.retime_ops(TINY, tmp_path, "tiny", "cpu", ["attn_decode"], "abc")
    ops = pd.read_parquet(out / "ops.parquet")
    kept = ops[ops.op == "qkv"]
    assert len(kept) == 1 and kept.median_us.iloc[0] == 7.0  # another operator's row untouched
    decode = ops[ops.op == "attn_decode"]
    grid_points = [p for p in ops_points(load_model(TINY), "tiny") if p.op == "attn_decode"]
    assert len(decode) == len(grid_points) == meta["tables"]["ops"] - 1
    assert sorted(set(decode.a)) == sorted(SPECS["tiny"].decode_batch) and (decode.method == "cpu").all()
    assert (decode.median_us != 7.0).all() and (out / "passes.parquet").read_bytes() == b"kept"
    held = pd.read_parquet(out / "validation_ops.parquet")
    drawn = [p for p in held_out_points(load_model(TINY), "tiny", profiler_run.HELD_OUT_PER_OP) if p.op == "attn_decode"]
    assert len(held[held.op == "attn_decode"]) == len(drawn) == meta["retimed"][-1]["held_out_rows"] > 0
    assert held[held.op == "qkv"].median_us.tolist() == [7.0] and (held[held.op == "attn_decode"].median_us != 7.0).all()
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["grid"]["decode_batch"] == list(SPECS["tiny"].decode_batch)
    assert on_disk["grid"]["points"]["attn_decode"] == len(decode)
    done = on_disk["retimed"][-1]
    assert done["ops"] == ["attn_decode"] and done["commit"] == "abc" and done["rows"] == len(decode)
    assert "decode_batch" in done["grid_changed"] and "decode_context" not in done["grid_changed"]
    assert done["missing_only"] is False
    # --missing: a grid made finer (here: the batch-4 points lost) gets only what it lacks timed.
    ops.loc[ops.op == "attn_decode", "median_us"] = 7.0
    ops[(ops.op != "attn_decode") | (ops.a != 4)].to_parquet(out / "ops.parquet", index=False)
    held_before = pd.read_parquet(out / "validation_ops.parquet")
    assert cli.main(["profile", "--model", TINY, "--device", "cpu", "--out", str(tmp_path), "--missing"]) == 2
    assert "--missing goes with --ops-only" in capsys.readouterr().err
    assert cli.main(["profile", "--model", TINY, "--device", "cpu", "--out", str(tmp_path),
                     "--ops-only", "attn_decode", "--missing"]) == 0
    again = pd.read_parquet(out / "ops.parquet")
    decode = again[again.op == "attn_decode"]
    assert len(decode) == len(grid_points)
    assert (decode[decode.a != 4].median_us == 7.0).all() and (decode[decode.a == 4].median_us != 7.0).all()
    assert pd.read_parquet(out / "validation_ops.parquet").equals(held_before)  # held-out shapes not timed again
    done = json.loads((out / "meta.json").read_text())["retimed"][-1]
    assert done["missing_only"] is True and done["rows"] == len(decode[decode.a == 4]) and done["held_out_rows"] == 0
    # Nothing missing any more: nothing timed, nothing written.
    before = (out / "meta.json").read_text(), (out / "ops.parquet").read_bytes()
    assert profiler_run.retime_ops(TINY, tmp_path, "tiny", "cpu", ["attn_decode"], "abc",
                                   missing=True)["retimed"][-1]["rows"] == 0
    assert ((out / "meta.json").read_text(), (out / "ops.parquet").read_bytes()) == before


def test_moe_points_time_several_fixed_routing_draws() -> None:
    """A MoE point's routing does not depend on what was measured before it, and a few tokens
    are timed over MOE_ROUTINGS different draws (each touches different experts)."""
    from servesim.profiler.operators import MOE_ROUTED_TOKENS, MOE_ROUTINGS

    arch = load_model(TINY_MOE)
    first = OperatorFactory(arch, torch.device("cpu"), kv_tokens=512)
    second = OperatorFactory(arch, torch.device("cpu"), kv_tokens=512)
    second.routing(64, 1.0)  # something measured before
    second.rand(100)
    for draw in range(MOE_ROUTINGS):
        assert torch.equal(first.routing(6, 1.0, draw)[1], second.routing(6, 1.0, draw)[1])
    draws = {tuple(first.routing(6, 1.0, d)[1].flatten().tolist()) for d in range(MOE_ROUTINGS)}
    assert len(draws) == MOE_ROUTINGS
    assert len(first.builder("moe_down", 6, 1, 0, None)[0](1)) == MOE_ROUTINGS
    assert len(first.builder("moe_down", MOE_ROUTED_TOKENS * 2, 0, 0, None)[0](1)) == 1


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_every_nexus_lane_has_partition_grids_of_its_own_size(mode: str) -> None:
    """Nexus splits the H200's 132 SMs in steps of 8; each split of 24-64 prefill SMs leaves its
    decode lane 68-108 SMs, which the SM shares and the decode passes time on those counts
    (read between 64 and 96 SMs, lane passes were priced 2-7 % fast on 68-84 SMs and 2 % slow
    on 92), and both sides of each split are SM shares."""
    from servesim.policies import REGISTRY, EngineLimits
    from servesim.profiler.validate import PASS_SMS

    cls = REGISTRY["nexus"]
    policy = cls(cls.Params(), EngineLimits(16, 1000, 0, 4096, 32, 132))
    prefill = [p for p in policy.shares() if 24 <= p <= 64]
    assert prefill == [24, 32, 40, 48, 56, 64]
    assert {132 - p for p in prefill} <= set(SPECS[mode].sm_counts) & set(PASS_SMS[mode])
    assert set(prefill) <= set(SPECS[mode].sm_counts)


def test_passes_only_times_the_passes_an_existing_profile_lacks(tmp_path, capsys, monkeypatch) -> None:
    """`--passes-only --missing`: a passes grid made finer gets only the passes the profile lacks
    timed and added, every row it has (and the runtime's prompt passes) kept; nothing missing
    times and writes nothing; without --missing every grid pass is timed again and replaces its
    row, the runtime's prompt passes kept."""
    with pytest.raises(InputError, match="no profile"):
        profiler_run.add_passes(TINY, tmp_path, "tiny", "cpu", "abc")
    out = tmp_path / "cpu" / "tiny-dense"
    out.mkdir(parents=True)
    grid = calibration_passes("tiny")
    num_sms = profiler_run.Partitions(torch.device("cpu")).num_sms
    held = [{**{c: 0 for c in TABLES["passes"]}, **b.row(), "sms": b.sms or num_sms, "median_us": 7.0,
             "method": "cpu"} for b in grid[:-2]]  # the decode lane's two passes lost
    runtime = {**{c: 0 for c in TABLES["passes"]}, "prefill_tokens": "16", "prefill_prefix": "0",
               "median_us": 9.0, "method": "runtime_graph_cpu", "batch_id": 99}
    pd.DataFrame([*held, runtime])[list(TABLES["passes"])].to_parquet(out / "passes.parquet", index=False)
    (out / "meta.json").write_text(json.dumps({"model": "tiny-dense", "gpu": "cpu", "tables": {"passes": len(held) + 1}}))
    assert cli.main(["profile", "--model", TINY, "--device", "cpu", "--out", str(tmp_path),
                     "--passes-only", "--missing"]) == 0
    assert "2 passes in" in capsys.readouterr().out
    passes = pd.read_parquet(out / "passes.parquet")
    assert len(passes) == len(grid) + 1 and passes.batch_id.is_unique
    assert (passes.median_us.iloc[:len(held)] == 7.0).all() and passes.median_us.iloc[len(held)] == 9.0
    new = passes.iloc[len(held) + 1:]
    assert (new.num_decodes == 2).all() and sorted(new.corunner_prompt) == [0, 16] and (new.median_us > 0).all()
    assert (new.median_us != 7.0).all() and (new.sms == 2).all()
    done = json.loads((out / "meta.json").read_text())["passes_retimed"][-1]
    assert done["missing_only"] is True and done["rows"] == 2 and done["commit"] and done["failures"] == []
    # Nothing missing any more: nothing timed, nothing written.
    before = (out / "meta.json").read_text(), (out / "passes.parquet").read_bytes()
    assert profiler_run.add_passes(TINY, tmp_path, "tiny", "cpu", "abc", missing=True)["passes_retimed"][-1]["rows"] == 0
    assert ((out / "meta.json").read_text(), (out / "passes.parquet").read_bytes()) == before
    # Without --missing: the whole grid (here cut to its first two passes, to spare the
    # interpreter's time) again, every earlier grid row replaced, the runtime's passes kept.
    monkeypatch.setattr(profiler_run, "calibration_passes", lambda mode, partitions=True: grid[:2])
    meta = profiler_run.add_passes(TINY, tmp_path, "tiny", "cpu", "abc")
    passes = pd.read_parquet(out / "passes.parquet")
    assert len(passes) == 3 == meta["tables"]["passes"] and (passes.median_us != 7.0).all()
    assert passes[passes.method == "runtime_graph_cpu"].median_us.tolist() == [9.0]
    assert sorted(passes.batch_id) == [0, 1, 99]
    assert meta["passes_retimed"][-1]["rows"] == 2 and meta["passes_retimed"][-1]["missing_only"] is False
