"""ProfiledCostModel on the shipped H200 profiles and on doctored copies of them."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servesim.config import from_mapping
from servesim.errors import InputError
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape, Corunner
from servesim.profiler.validate import DECODE_BESIDE_SMS
from servesim.runner import run
from servesim.sim import kernel_work, profile_report
from servesim.sim.cost_model import RooflineCostModel
from servesim.sim.hardware import H100, H200
from servesim.sim.profile_tables import Grid, shipped_profiles, shipped_root
from servesim.sim.profiled import SMALL_DECODE_CORUNNER, ProfiledCostModel

MODELS = ("llama-3.1-8b", "qwen2.5-32b", "mixtral-8x7b", "qwen3-30b-a3b")
DECODE = BatchShape(num_decodes=32, decode_context=32 * 1500, max_decode_context=3000, num_logits=32)
MIXED = BatchShape(prefill_tokens=(512, 300), prefill_prefix=(0, 2048), num_decodes=16,
                   decode_context=16 * 1000, max_decode_context=2500, num_logits=18)


@pytest.fixture(scope="module")
def llama() -> ProfiledCostModel:
    return ProfiledCostModel(load_model("llama-3.1-8b"), H200)


def _copy(tmp_path: Path, model: str = "llama-3.1-8b") -> Path:
    dst = tmp_path / model
    shutil.copytree(Path(str(shipped_root().joinpath("h200").joinpath(model))), dst)
    return dst


def test_all_four_h200_profiles_ship_small() -> None:
    assert {(g, m) for g, m in shipped_profiles()} >= {("h200", m) for m in MODELS}
    root = Path(str(shipped_root()))
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 10 * 2**20
    for m in MODELS:
        assert sum(f.stat().st_size for f in (root / "h200" / m).iterdir()) < 2 * 2**20


def test_grid_is_exact_for_bilinear_functions() -> None:
    xs, ys = [1.0, 2.0, 5.0], [0.0, 10.0]
    grid = Grid([xs, ys], [x * y + x for x in xs for y in ys])
    for x, y in [(1.5, 3.0), (4.0, 9.0), (2.0, 0.0)]:
        assert grid.at((x, y)) == (pytest.approx(x * y + x), False)
    assert grid.at((6.0, 5.0))[1] and grid.at((0.5, 5.0))[1]


def test_log_axes_are_exact_for_functions_linear_in_the_log() -> None:
    xs, ys = [1.0, 4.0, 64.0], [0.0, 1.0]
    grid = Grid([xs, ys], [3.0 + 2.0 * math.log(x) + y for x in xs for y in ys], (True, False))
    for x, y in [(2.0, 0.5), (10.0, 0.25), (63.0, 1.0)]:
        assert grid.at((x, y)) == (pytest.approx(3.0 + 2.0 * math.log(x) + y), False)


def test_decode_split_rule_mirrors_the_launcher() -> None:
    launcher = pytest.importorskip("servesim.kernels.attention_decode")
    for shape in itertools.product((1, 3, 4, 11, 16, 33, 256), (4, 8), (64, 255, 256, 3000, 70000), (16, 132)):
        assert kernel_work.decode_num_splits(*shape) == launcher.decode_num_splits(*shape), shape


def test_gemm_tiling_mirrors_the_frozen_configs() -> None:
    configs = pytest.importorskip("servesim.kernels.configs")
    from servesim.models.ops import gemm_shapes
    shapes = {nk for model in MODELS for nk in gemm_shapes(load_model(model)).values()}
    rows = [*range(1, 260), *range(260, 4200, 7), 8191, 8192, 8193, 32768]
    for (n, k), m, sms in itertools.product(sorted(shapes), rows, (16, 48, 132)):
        cfg = configs.gemm_config(m, n, k, sms)
        splits = configs.split_k_for(m, n, k, cfg, sms) if cfg.kind == "splitk" else 1
        got = kernel_work.gemm_tiling(m, n, k, sms)
        assert got == (cfg.kind, cfg.block_m, cfg.block_n, splits), (n, k, m, sms)


def test_gemm_time_steps_with_its_waves_between_grid_points(llama: ProfiledCostModel) -> None:
    # gate_up (28672 x 4096) on 132 SMs: 1,025-1,152 rows run 8 waves of 128 x 256 tiles,
    # 1,153-1,280 nine, 1,281-1,408 ten. The quick grid holds 1,059 and 1,314 rows (steps beyond
    # 8 waves are not timed): 1,152 rows cost what 1,059 do, not a share of the way to 1,314.
    t = {m: llama.table_seconds("gate_up", (float(m),))[0] for m in (1059, 1152, 1153, 1280, 1314)}
    assert t[1152] == pytest.approx(t[1059], rel=0.01)
    assert t[1153] > 1.05 * t[1152]
    assert t[1153] == pytest.approx(t[1280], rel=0.01)
    assert t[1280] < t[1314] / 1.05


def test_prefill_makespan_is_greedy_list_scheduling() -> None:
    # Jobs 4, 1, 4, 1, 4, 1 on two slots: 4 | 1; 4 starts at 1 -> 5; 1 at 4 -> 5; 4 at 5 -> 9; 1 at 5.
    assert kernel_work._makespan([4.0, 1.0], 3, 2) == 9.0
    assert kernel_work._makespan([5.0, 2.0], 2, 4) == 5.0  # one wave: the longest program
    llama = load_model("llama-3.1-8b")  # 32 query heads on 8 KV heads: 32 tokens a program
    one_wave, two_rounds = (kernel_work.prefill_terms(llama, 132, (q, 14000.0))[1] for q in (512, 689))
    assert two_rounds > 1.9 * one_wave  # 128 programs fit 132 SMs; 176 take two rounds


def test_decode_attention_follows_the_split_count_between_grid_batches(llama: ProfiledCostModel) -> None:
    # 8 KV heads on 132 SMs: batch 4 splits the context 9 ways, batches 11 to 16 three ways, so
    # at batch 11 the longest program is already as long as at batch 16: no straight line.
    assert [kernel_work.decode_num_splits(b, 8, 8192, 132) for b in (4, 11, 16)] == [9, 3, 3]
    t = {b: llama.table_seconds("attn_decode", (b, 8192.0, 1.0))[0] for b in (4, 11, 16)}
    assert t[11] > t[4] + (11 - 4) / (16 - 4) * (t[16] - t[4])


@pytest.mark.parametrize("model", MODELS)
def test_fast_decode_pricing_is_the_tables(model: str) -> None:
    cost = ProfiledCostModel(load_model(model), H200)
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, mean = int(rng.integers(1, 257)), float(np.exp(rng.uniform(math.log(64), math.log(16384))))
        ctx = int(n * mean)
        longest = ctx if n == 1 else int(min(ctx, mean * rng.uniform(1.0, 4.0)))
        fast = cost._decode_s(n, ctx, longest, H200.num_sms)
        if fast is not None:
            table, _ = cost.table_seconds("attn_decode", (n, ctx / n, longest / (ctx / n)))
            assert fast == pytest.approx(table, rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_attention_is_within_a_few_percent_of_its_held_out_shapes(model: str) -> None:
    # Held-out attention shapes of `servesim profile --validate`: the median error was 5-15 %
    # when time was interpolated linearly (per attended position for prefill); with the
    # structural estimate it is 1.0-6.0 % in the profiles shipped now.
    ops, _ = profile_report.prediction_errors(ProfiledCostModel(load_model(model), H200))
    for op in ("attn_decode", "attn_prefill"):
        assert ops[ops.op == op].error.abs().median() < 0.07, op


@pytest.mark.parametrize("model", MODELS)
def test_decode_only_passes_take_their_measured_in_pass_time(model: str) -> None:
    """The `passes` table: a decode-only pass on its grid costs what it measured whole, on the
    whole GPU and on each partition measured; the executor's fast path agrees; a pass with
    prefill tokens is priced operator by operator."""
    cost = ProfiledCostModel(load_model(model), H200)
    passes = cost.profile.tables["passes"]
    passes = passes[passes.prefill_tokens.astype(str).str.strip() == ""]
    if "corunner_prompt" in passes:  # decode passes beside a prompt: another test's
        passes = passes[passes.corunner_prompt.fillna(0) == 0]
    sms_of = passes.sms.fillna(H200.num_sms).astype(int) if "sms" in passes else pd.Series(H200.num_sms, passes.index)
    assert cost._in_pass is not None and H200.num_sms in cost._in_pass.factors
    if model == "llama-3.1-8b":  # the shipped profile times the decode passes on Nexus's lanes
        assert {68, 76, 84, 92, 100, 108} <= set(cost._in_pass.factors)
    # decode passes timed alone for the decode-beside-prompt grid (other batches and contexts,
    # some on the same SMs) are that grid's, not this one's
    contexts = {round(math.exp(c)) for c in cost._in_pass.log_ctx}
    on_grid = sms_of.isin(list(cost._in_pass.factors)) & passes.num_decodes.isin(cost._in_pass.batches) \
        & (passes.decode_context / passes.num_decodes).round().astype(int).isin(contexts)
    passes, sms_of = passes[on_grid], sms_of[on_grid]
    assert len(passes) == 2 * len(cost._in_pass.batches) * len(cost._in_pass.factors)
    factors: dict[int, list[float]] = {}
    for r, sms in zip(passes.itertuples(), sms_of, strict=True):
        shape = BatchShape((), (), int(r.num_decodes), int(r.decode_context), int(r.max_decode_context),
                           int(r.num_logits))
        assert cost.step_time(shape, sms) == pytest.approx(r.median_us * 1e-6, rel=1e-9)
        stepper = cost.decode_stepper(shape.num_decodes, shape.num_logits, sms)
        assert stepper(shape.decode_context, shape.max_decode_context) == pytest.approx(cost.step_time(shape, sms), rel=1e-12)
        priced = cost.batch_cost(shape, sms)
        assert priced.total_s == pytest.approx(sum(o.seconds for o in priced.ops), rel=1e-9)
        factors.setdefault(sms, []).append(cost._in_pass.factor(shape.num_decodes, shape.decode_context / shape.num_decodes, sms))
    # With each operator timed as the difference of two graph lengths, a whole pass costs close
    # to its operators' sum: 0.84-1.15 over the H200 profiles' grids (40fa46b), medians
    # 0.95-1.06 (0.78-1.17 and 0.92-1.02 in the profiles before). (Timed one replay / G, the
    # sum carried each replay's fixed cost and the factors were 0.69-0.98.)
    for sms, level in factors.items():
        assert 0.7 < min(level) and max(level) < 1.25, (sms, level)
        assert 0.85 < sorted(level)[len(level) // 2] < 1.1, (sms, level)
    mixed = BatchShape((512,), (0,), 8, 8 * 2048, 2048, 9)
    raw = ProfiledCostModel(load_model(model), H200)
    raw._in_pass = None
    assert cost.step_time(mixed) == raw.step_time(mixed)


def test_interpolation_is_exact_on_grid_points(llama: ProfiledCostModel) -> None:
    ops = llama.profile.tables["ops"]
    for row in ops[ops.op.isin(["qkv", "gate_up", "attn_prefill", "attn_decode", "rmsnorm"])].itertuples():
        x = (row.a, row.b, row.c)[: {"attn_prefill": 2, "attn_decode": 3}.get(row.op, 1)]
        t, outside = llama.table_seconds(row.op, x)
        assert not outside and t == pytest.approx(row.median_us * 1e-6, rel=1e-9)


def test_interpolation_stays_between_neighbours(llama: ProfiledCostModel) -> None:
    # Between two grid points the time follows the tiling's steps (not a straight line), but
    # never leaves their range by more than the curvature of the bytes a launch moves.
    rows = llama.profile.tables["ops"].query("op == 'gate_up'").sort_values("a")
    for (a0, t0), (a1, t1) in zip(rows[["a", "median_us"]].values[:-1], rows[["a", "median_us"]].values[1:],
                                  strict=True):
        for m in sorted({round(m) for m in np.linspace(a0, a1, 5)[1:-1]} - {a0, a1}):  # rows are whole
            t = llama.table_seconds("gate_up", (float(m),))[0] * 1e6
            assert 0.995 * min(t0, t1) <= t <= 1.005 * max(t0, t1)


def test_off_grid_queries_fall_back_and_are_counted(llama: ProfiledCostModel) -> None:
    top = llama.profile.ops["gate_up"].top[0]
    inside = llama.table_seconds("gate_up", (top,))[0]
    beyond, outside = llama.table_seconds("gate_up", (2 * top,))
    assert outside and beyond > 1.5 * inside  # the fit keeps growing past the grid
    before = llama.extrapolated
    long_ctx = BatchShape(num_decodes=4, decode_context=4 * 100_000, max_decode_context=100_000, num_logits=4)
    llama.step_time(long_ctx)
    assert llama.extrapolated > before
    assert llama.batch_cost(long_ctx).extrapolated > 0
    before = llama.extrapolated
    llama.step_time(DECODE)
    assert llama.extrapolated == before


def test_batch_cost_sums_to_step_time(llama: ProfiledCostModel) -> None:
    for batch, sms, cor in [(DECODE, None, None), (MIXED, None, None), (MIXED, 64, None),
                            (DECODE, 48, Corunner(MIXED, 84))]:
        cost = llama.batch_cost(batch, sms, cor)
        assert sum(op.seconds for op in cost.ops) == pytest.approx(cost.total_s, rel=1e-9)
        assert cost.total_s == llama.step_time(batch, sms, cor)
    assert llama.step_time(BatchShape()) == 0.0


def test_gemm_on_a_partition_follows_its_own_waves(llama: ProfiledCostModel) -> None:
    # `down` (4096 x 14336) in 128 x 256 tiles: 1,024 rows are 128 tiles, 1,025 are 144. On the
    # whole GPU that is 1 wave against 2 (its time doubles); on 48 SMs both are 3 waves. Its
    # partition grid holds 1,024 and 4,096 rows: a ratio of times read across the whole GPU's
    # step priced 1,025 rows on 48 SMs at twice 1,024's.
    whole = {m: llama.table_seconds("down", (float(m),))[0] for m in (1024, 1025)}
    assert whole[1025] > 1.8 * whole[1024]
    part = {m: llama.table_seconds("down", (float(m),), 48)[0] for m in (1024, 1025, 1100, 4096)}
    measured = llama.profile.tables["sm_shares"].query("op == 'down' and sms == 48").set_index("a").median_us
    assert part[1024] == pytest.approx(measured[1024.0] * 1e-6, rel=1e-9)
    assert part[4096] == pytest.approx(measured[4096.0] * 1e-6, rel=1e-9)
    assert part[1024] <= part[1025] < 1.02 * part[1024] and part[1100] < 1.02 * part[1024]


def test_sm_share_and_corunner_slow_a_step_down(llama: ProfiledCostModel) -> None:
    full = llama.step_time(MIXED)
    assert llama.step_time(MIXED, 64) > full
    assert llama.step_time(MIXED, 16) > llama.step_time(MIXED, 64)
    alone = llama.step_time(DECODE, 48)
    assert llama.step_time(DECODE, 48, Corunner(MIXED, 84)) >= alone
    with pytest.raises(ValueError, match="sms"):
        llama.step_time(DECODE, 500)


@pytest.mark.parametrize("model", MODELS)
def test_shipped_profiles_are_within_a_plausible_factor_of_the_roofline(model: str) -> None:
    arch = load_model(model)
    profiled, roofline = ProfiledCostModel(arch, H200), RooflineCostModel(arch, H200)
    for batch in (DECODE, MIXED, BatchShape(prefill_tokens=(4096,), prefill_prefix=(0,), num_logits=1)):
        ratio = profiled.step_time(batch) / roofline.step_time(batch)
        assert 0.5 < ratio < 2.0, (model, batch, ratio)


def _edit_meta(path: Path, **changes: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_profile_of_another_gpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no shipped profile for llama-3.1-8b on h100"):
        ProfiledCostModel(load_model("llama-3.1-8b"), H100)
    path = _copy(tmp_path)
    with pytest.raises(InputError, match=r"meta\.json: profile of GPU 'h200'.*'h100'"):
        ProfiledCostModel(load_model("llama-3.1-8b"), H100, path)
    _edit_meta(path, gpu="a100", sm_count=108)
    with pytest.raises(InputError, match=r"meta\.json.*a100"):
        ProfiledCostModel(load_model("llama-3.1-8b"), H200, path)


def test_profile_of_another_schema_or_model_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    _edit_meta(path, schema_version=99)
    with pytest.raises(InputError, match=r"meta\.json.*schema version 99"):
        ProfiledCostModel(load_model("llama-3.1-8b"), H200, path)
    with pytest.raises(InputError, match="qwen2.5-32b"):
        ProfiledCostModel(load_model("qwen2.5-32b"), H200, _copy(tmp_path / "x"))
    with pytest.raises(InputError, match="no profile"):
        ProfiledCostModel(load_model("llama-3.1-8b"), H200, tmp_path / "nowhere")


def test_missing_grid_cells_are_filled_not_fatal(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    ops = pd.read_parquet(path / "ops.parquet")
    ops = ops.drop(ops[ops.op == "attn_prefill"].index[3])
    ops.to_parquet(path / "ops.parquet", index=False)
    model = ProfiledCostModel(load_model("llama-3.1-8b"), H200, path)
    assert model.profile.gaps == 1 and model.step_time(MIXED) > 0


def test_runner_reports_extrapolations_with_the_profile_model() -> None:
    raw = {"workload": {"trace": "azure_conv", "max_requests": 30},
           "policy": {"name": "sarathi", "token_budget": 512}, "engine": {"max_model_len": 16384},
           "cost_model": {"kind": "profile"}}
    summary = run(from_mapping(raw, "profiled")).summary
    assert summary["completed"] == 30 and summary["cost_model_extrapolations"] >= 0


def test_auto_uses_the_shipped_profile_where_there_is_one_and_says_so() -> None:
    work = {"synthetic": {"arrival": "poisson", "rate_rps": 2.0, "prompt": {"dist": "fixed", "value": 300},
                          "output": {"dist": "fixed", "value": 20}}, "max_requests": 20}
    tiny = str(Path(__file__).parent / "data" / "tiny" / "llama.json")
    shipped = run(from_mapping({"model": "llama-3.1-8b", "workload": work}, "auto"))
    unshipped = run(from_mapping({"model": tiny, "workload": work}, "auto"))
    other_gpu = run(from_mapping({"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "workload": work}, "auto"))
    assert shipped.summary["cost_model"] == "profile"
    assert unshipped.summary["cost_model"] == other_gpu.summary["cost_model"] == "roofline"
    explicit = run(from_mapping({"model": "llama-3.1-8b", "workload": work,
                                 "cost_model": {"kind": "profile"}}, "auto"))
    assert explicit.summary == shipped.summary
    with pytest.raises(InputError, match="no shipped profile"):
        run(from_mapping({"model": tiny, "workload": work, "cost_model": {"kind": "profile"}}, "auto"))


@pytest.mark.parametrize("policy", ["sarathi", "vllm_v1"])
def test_fast_forward_on_the_profile_gives_the_one_by_one_times(policy: str) -> None:
    # The fast-forward prices decode runs through decode_stepper; stepping one iteration at a
    # time goes through step_time: the token times and the off-grid count must be identical.
    from simkit import requests
    from simkit import run as sim_run

    specs = [(0.0, 900, 300), (0.05, 4000, 150), (0.3, 200, 400), (0.31, 12000, 50), (1.5, 64, 600)]
    out = []
    for fast in (True, False):
        model = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
        result = sim_run(policy, requests(specs), model, fast_forward=fast)
        out.append(([r.token_times_s for r in result.requests], model.extrapolated))
    assert out[0] == out[1]
    step = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    price = step.decode_stepper(8, 8, None)
    for ctx in (8 * 100, 8 * 1500, 8 * 30000):  # inside and outside the decode grid
        assert price(ctx, ctx // 8 + 7) == step.step_time(BatchShape((), (), 8, ctx, ctx // 8 + 7, 8))


def test_in_pass_factor_is_linear_in_sms_between_the_partitions_measured() -> None:
    """Between two SM counts measured the factor is linear in SMs; below the smallest it holds;
    with the whole GPU alone measured, a partition's pass costs its operators' sum."""
    from servesim.sim.profiled import _InPass

    grid = {64: [[1.0, 1.1], [1.0, 1.1]], 132: [[0.8, 0.9], [0.8, 0.9]]}
    in_pass = _InPass([1, 4], [512, 4096], grid, 132)
    assert in_pass.factor(1, 512, 132) == pytest.approx(0.8)
    assert in_pass.factor(4, 4096, 98) == pytest.approx(1.0)
    assert in_pass.factor(2, 512, 32) == pytest.approx(1.0) and in_pass.factor(2, 4096, 64) == pytest.approx(1.1)
    whole_only = _InPass([1, 4], [512, 4096], {132: grid[132]}, 132)
    assert whole_only.factor(1, 512, 68) == 1.0 and whole_only.factor(1, 512, 132) == pytest.approx(0.8)


def test_a_co_runner_never_makes_a_pass_faster_than_alone():
    """The shipped Llama profile times small GEMMs next to decode GEMMs at 0.83x on 68 SMs (two
    separate timings' noise); a decode pass beside a prefill on the other partition was priced
    10 % below the same pass alone. Every slowdown counts as at least 1."""
    from servesim.sim.profile_tables import contention_curves

    frame = pd.DataFrame({"op": ["gemm_small"] * 3, "corunner": ["decode_gemm"] * 3,
                          "sms": [64, 68, 96], "slowdown": [1.39, 0.83, 1.17]})
    assert contention_curves(frame)[("gemm_small", "decode_gemm")] == ([64.0, 68.0, 96.0], [1.39, 1.0, 1.17])
    cm = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    # 32 decodes of 2k beside a prompt: the factor measured beside it is on the grid at 68 SMs,
    # the alone factor interpolated from 64 and 96 SMs prices the pass alone higher (+12 %).
    for n, ctx, q in ((8, 1024, 256), (32, 2048, 1024), (32, 2048, 256)):
        decode = BatchShape(num_decodes=n, decode_context=n * ctx, max_decode_context=ctx, num_logits=n)
        prefill = BatchShape(prefill_tokens=(q,), prefill_prefix=(0,), num_logits=1)
        for sms in range(40, 97, 4):
            for target, other in ((decode, prefill), (prefill, decode)):
                alone = cm.step_time(target, sms)
                assert cm.step_time(target, sms, Corunner(other, 132 - sms)) >= alone, (n, q, sms)
                # batch_cost's operators add up to the floored total too
                cost = cm.batch_cost(target, sms, Corunner(other, 132 - sms))
                assert sum(o.seconds for o in cost.ops) == pytest.approx(cost.total_s, rel=1e-9), (n, q, sms)


def _with_lane_passes(tmp_path: Path, scale: dict[tuple[int, int, int], float],
                      beside: dict[tuple[int, int, int], float] | None = None) -> Path:
    """The shipped Llama profile plus prompt passes on partitions measured at `scale` x their
    operators' sum, keyed (SMs, tokens, co-runner decodes), and decode passes of 2k contexts
    beside a prompt at `beside` x theirs, keyed (SMs, decodes, co-runner's tokens; 0: the pass
    alone on its partition)."""
    src = shipped_root() / "h200" / "llama-3.1-8b"
    dst = tmp_path / "llama-lanes"
    shutil.copytree(str(src), dst)
    passes = pd.read_parquet(dst / "passes.parquet")
    lane = (passes.prefill_tokens != "") & (passes.num_decodes == 0) & (passes.sms < 132)
    decode_lane = (passes.num_decodes > 0) & passes.sms.isin(DECODE_BESIDE_SMS["quick"])  # beside and alone
    passes = passes[~lane & ~decode_lane & (passes.corunner_prompt.fillna(0) == 0)]  # the shipped ones out
    passes.to_parquet(dst / "passes.parquet", index=False)
    base = ProfiledCostModel(load_model("llama-3.1-8b"), H200, dst, prompt_passes="ops")  # the lanes' own price
    assert base._lane is None and base._beside is None
    rows = []
    for (sms, q, n), k in scale.items():
        corunner = Corunner(BatchShape(num_decodes=n, decode_context=n * 1024, max_decode_context=1024,
                                       num_logits=n), 132 - sms) if n else None
        us = 1e6 * k * base.step_time(BatchShape((q,), (0,), num_logits=1), sms, corunner)
        rows.append({"batch_id": 1000 + len(rows), "prefill_tokens": str(q), "prefill_prefix": "0",
                     "num_decodes": 0, "decode_context": 0, "max_decode_context": 0, "num_logits": 1,
                     "median_us": us, "p20_us": us, "p80_us": us, "reps": 5, "method": "graph", "sms": sms,
                     "corunner_decodes": n, "corunner_context": n * 1024, "corunner_sms": 132 - sms if n else 0,
                     "corunner_prompt": 0})
    for (sms, n, q), k in (beside or {}).items():
        decode = BatchShape(num_decodes=n, decode_context=n * 2048, max_decode_context=2048, num_logits=n)
        prompt = Corunner(BatchShape((q,), (0,), num_logits=1), 132 - sms) if q else None
        us = 1e6 * k * base.step_time(decode, sms, prompt)
        rows.append({"batch_id": 1000 + len(rows), "prefill_tokens": "", "prefill_prefix": "",
                     "num_decodes": n, "decode_context": n * 2048, "max_decode_context": 2048, "num_logits": n,
                     "median_us": us, "p20_us": us, "p80_us": us, "reps": 5, "method": "graph", "sms": sms,
                     "corunner_decodes": 0, "corunner_context": 0, "corunner_sms": 132 - sms if q else 0,
                     "corunner_prompt": q})
    pd.concat([passes, pd.DataFrame(rows)], ignore_index=True).to_parquet(dst / "passes.parquet", index=False)
    return dst


def _without_lane_passes(tmp_path: Path) -> Path:
    """The shipped Llama profile without its passes on partitions beside a co-runner."""
    dst = _with_lane_passes(tmp_path / "base", {})
    return dst


def test_prompt_passes_on_partitions_take_their_measured_time_alone_and_beside_decode(tmp_path) -> None:
    """A Nexus prefill lane's pass: measured whole on 48 and 96 SMs, alone and beside 8 and 32
    decodes. On the grid a pass costs what it measured; between SM counts the factor is linear;
    above the largest partition it goes to 1 at the whole GPU; a pass with decodes and a pass
    on the whole GPU are not touched."""
    llama = load_model("llama-3.1-8b")
    scale = {(sms, q, n): f for sms, f0 in ((48, 1.10), (96, 0.90)) for q in (256, 1024)
             for n, f in ((0, f0), (8, f0 + 0.15), (32, f0 - 0.05))}
    lanes = ProfiledCostModel(llama, H200, _with_lane_passes(tmp_path, scale), prompt_passes="ops")
    base = ProfiledCostModel(llama, H200, _without_lane_passes(tmp_path), prompt_passes="ops")
    assert base._lane is None and lanes._lane is not None

    def decode(n: int) -> BatchShape:
        return BatchShape(num_decodes=n, decode_context=n * 1024, max_decode_context=1024, num_logits=n)

    def ratio(q: int, sms: int, n: int) -> float:
        batch = BatchShape((q,), (0,), num_logits=1)
        corunner = Corunner(decode(n), 132 - sms) if n else None
        return lanes.step_time(batch, sms, corunner) / base.step_time(batch, sms, corunner)

    for (sms, q, n), f in scale.items():
        assert ratio(q, sms, n) == pytest.approx(f, rel=1e-9)
    assert ratio(256, 72, 0) == pytest.approx(1.0, rel=1e-9)  # halfway between 1.10 and 0.90
    assert ratio(256, 114, 0) == pytest.approx(0.95, rel=1e-9)  # halfway from 96 to the whole GPU
    assert ratio(512, 48, 0) == pytest.approx(1.10, rel=1e-9) and ratio(256, 40, 8) == pytest.approx(1.25, rel=1e-9)
    # A co-runner reads the measured co-runners of its GEMM tiling class (GEMM_ROW_CLASSES):
    # 2-16 decodes 8's factor, 17-32 32's; where its class has none, the nearest measured.
    # Below the smallest measured (8), SMALL_DECODE_CORUNNER's raise: in full at 2 and below
    # (1.0202 at 256 tokens), half of it at 4.
    small = SMALL_DECODE_CORUNNER[0][1] - 1
    for n, f in ((1, 1.25 * (1 + small)), (2, 1.25 * (1 + small)), (4, 1.25 * (1 + small / 2)), (8, 1.25),
                 (16, 1.25), (17, 1.05), (24, 1.05), (100, 1.05)):
        assert ratio(256, 48, n) == pytest.approx(f, rel=1e-9), n
    mixed = BatchShape((256,), (0,), num_decodes=4, decode_context=4096, max_decode_context=1024, num_logits=5)
    assert lanes.step_time(mixed, 48) == base.step_time(mixed, 48)
    whole = BatchShape((256,), (0,), num_logits=1)
    assert lanes.step_time(whole) == base.step_time(whole)
    batch_cost = lanes.batch_cost(BatchShape((256,), (0,), num_logits=1), 48, Corunner(decode(8), 84))
    assert sum(c.seconds for c in batch_cost.ops) == pytest.approx(batch_cost.total_s, rel=1e-6)


def test_prompts_on_a_partition_are_priced_within_a_few_percent_of_the_batch_sweep() -> None:
    """The shipped Llama profile against benchmarks/pass_contention.py --cases batch on the
    H200 (a 2,048- and a 256-token prompt on 40 SMs beside 2-48 decodes of 1k): the slowdown
    steps between 16 and 20 decodes, where the decode GEMMs change tiling, and the price
    follows it (linear in the co-runner's decodes across the step it was 10 % high at 20).
    The sweep and the profile were taken in different sessions: 2-3 % apart at the median."""
    result = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-pass-contention-batch.json"
    rows = json.loads(result.read_text())["rows"]
    model = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    errors = []
    for r in rows:
        prompt = BatchShape((r["prompt"],), (0,), num_logits=1)
        decode = BatchShape(num_decodes=r["decodes"], decode_context=r["decodes"] * r["context"],
                            max_decode_context=r["context"], num_logits=r["decodes"])
        beside = model.step_time(prompt, r["prefill_sms"], Corunner(decode, r["decode_sms"]))
        errors.append(beside * 1e6 / r["prefill_beside_us"] - 1)
    assert len(errors) == 16 and max(abs(e) for e in errors) < 0.07
    assert sorted(abs(e) for e in errors)[len(errors) // 2] < 0.04


def test_prompts_beside_few_decodes_follow_the_batch_sweeps_ratio() -> None:
    """SMALL_DECODE_CORUNNER is the batch sweep's own ratio (beside 2 decodes over beside 8, at
    256 and 2,048 tokens). A lane table whose smallest co-runner is 8 decodes (the shipped
    Mixtral profile's) raises a prompt's factor beside 2 decodes by it in full, beside 4 by half
    of it, and beside 20 not at all. The shipped Llama profile measures co-runners of 1, 2 and 4
    decodes: there a prompt beside them costs what it measured (captured whole) plus what the
    runtime's piecewise issue adds, with no raise."""
    result = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-pass-contention-batch.json"
    rows = {(r["prompt"], r["decodes"]): r["prefill_beside_us"] for r in json.loads(result.read_text())["rows"]}
    for q, ratio in SMALL_DECODE_CORUNNER:
        assert ratio == pytest.approx(rows[(q, 2)] / rows[(q, 8)], abs=1e-4)
    mixtral = ProfiledCostModel(load_model("mixtral-8x7b"), H200)
    assert mixtral._lane is not None and mixtral._lane.co_sizes[48] == [0, 8, 32]
    for q, ratio in SMALL_DECODE_CORUNNER:
        assert mixtral._lane._small(48, q, 2) == pytest.approx(ratio) and mixtral._lane._small(48, q, 1) == pytest.approx(ratio)
        assert mixtral._lane._small(48, q, 4) == pytest.approx(1 + (ratio - 1) / 2)
        assert mixtral._lane._small(48, q, 8) == mixtral._lane._small(48, q, 20) == 1.0
    model = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    assert model._lane is not None and model._lane.co_sizes[40][:4] == [0, 1, 2, 4]
    passes = model.profile.tables["passes"]
    lanes = passes[(passes.sms == 40) & (passes.corunner_decodes.isin([1, 2, 4, 8]))
                   & (passes.prefill_tokens.astype(str).isin(["256", "2048"]))]
    assert len(lanes) == 8
    for r in lanes.itertuples():
        n, q = int(r.corunner_decodes), int(r.prefill_tokens)
        decode = BatchShape(num_decodes=n, decode_context=n * 1024, max_decode_context=1024, num_logits=n)
        assert model._lane._small(40, q, n) == 1.0
        priced = model.step_time(BatchShape((q,), (0,), num_logits=1), 40, Corunner(decode, int(r.corunner_sms)))
        issue = model._issue.at(q) if model._issue is not None else 0.0
        assert priced == pytest.approx(r.median_us * 1e-6 + issue, rel=1e-6)


def test_decode_passes_beside_a_prompt_take_their_measured_time(tmp_path) -> None:
    """A Nexus decode lane's pass beside a prompt on the other SMs, measured whole on 68 and 84
    SMs for 8 and 32 decodes beside 256 and 1,024 tokens: on the grid it costs what it
    measured, alone (or beside decodes) the in-pass factor alone prices it, and between prompt
    sizes the factor is interpolated."""
    llama = load_model("llama-3.1-8b")
    beside = {(sms, n, q): 1.0 + 0.1 * i for i, (sms, n, q) in  # (>= 1: the floor at alone stays out)
              enumerate((s, n, q) for s in (68, 84) for n in (8, 32) for q in (256, 1024))}
    lanes = ProfiledCostModel(llama, H200, _with_lane_passes(tmp_path, {}, beside), prompt_passes="ops")
    base = ProfiledCostModel(llama, H200, _without_lane_passes(tmp_path), prompt_passes="ops")
    assert lanes._beside is not None and lanes._lane is None and lanes._in_pass is not None

    def decode(n: int) -> BatchShape:
        return BatchShape(num_decodes=n, decode_context=n * 2048, max_decode_context=2048, num_logits=n)

    def ratio(n: int, sms: int, q: int) -> float:
        corunner = Corunner(BatchShape((q,), (0,), num_logits=1), 132 - sms)
        return lanes.step_time(decode(n), sms, corunner) / base.step_time(decode(n), sms, corunner)

    for (sms, n, q), f in beside.items():
        assert ratio(n, sms, q) == pytest.approx(f, rel=1e-9)
    assert ratio(8, 76, 256) == pytest.approx((1.0 + 1.4) / 2, rel=1e-9)
    assert min(beside[(68, 8, 256)], beside[(68, 8, 1024)]) < ratio(8, 68, 512) < max(beside[(68, 8, 256)], beside[(68, 8, 1024)])
    assert lanes.step_time(decode(8), 68) == base.step_time(decode(8), 68)
    other = Corunner(decode(4), 64)
    assert lanes.step_time(decode(8), 68, other) == base.step_time(decode(8), 68, other)


def test_decode_passes_beside_a_prompt_carry_their_measured_slowdown_onto_the_price_alone(tmp_path) -> None:
    """With each decode lane's pass also timed alone on its partition, the pass beside a
    prompt costs its price alone times measured beside / measured alone, whatever the price
    alone is off by (here the passes alone measured 0.85x and 1.2x their price); alone, and
    on partitions of the whole GPU's in-pass grid, nothing moves."""
    llama = load_model("llama-3.1-8b")
    alone = {(68, 8): 0.85, (68, 32): 1.2, (84, 8): 1.0, (84, 32): 0.9}
    slowdown = {(sms, n, q): 1.05 + 0.04 * i for i, (sms, n, q) in
                enumerate((s, n, q) for s in (68, 84) for n in (8, 32) for q in (256, 1024))}
    base = ProfiledCostModel(llama, H200, _without_lane_passes(tmp_path), prompt_passes="ops")

    def decode(n: int) -> BatchShape:
        return BatchShape(num_decodes=n, decode_context=n * 2048, max_decode_context=2048, num_logits=n)

    def prompt(q: int, sms: int) -> Corunner:
        return Corunner(BatchShape((q,), (0,), num_logits=1), 132 - sms)

    # measured beside = measured alone x slowdown, as factors of the base model's prices
    measured = {(sms, n, 0): f for (sms, n), f in alone.items()}
    for (sms, n, q), k in slowdown.items():
        measured[(sms, n, q)] = alone[(sms, n)] * k * base.step_time(decode(n), sms) \
            / base.step_time(decode(n), sms, prompt(q, sms))
    lanes = ProfiledCostModel(llama, H200, _with_lane_passes(tmp_path / "lanes", {}, measured), prompt_passes="ops")
    assert lanes._beside is not None and lanes._in_pass is not None
    assert sorted(lanes._in_pass.factors) == sorted(base._in_pass.factors)  # alone rows are not its grid
    for (sms, n, q), k in slowdown.items():
        assert lanes.step_time(decode(n), sms, prompt(q, sms)) == pytest.approx(
            k * lanes.step_time(decode(n), sms), rel=1e-9), (sms, n, q)
        assert lanes.step_time(decode(n), sms) == base.step_time(decode(n), sms)
    between = lanes.step_time(decode(8), 68, prompt(512, 68)) / lanes.step_time(decode(8), 68)
    assert slowdown[(68, 8, 256)] < between < slowdown[(68, 8, 1024)]


def test_gemms_off_the_grid_are_priced_within_their_measured_time() -> None:
    """The shipped profiles against benchmarks/gemm_steps.py on the H200: GEMMs of 1,088-2,945
    rows on both sides of the wave steps the quick grid does not time and inside each wave
    (Llama 53, measured on the card of its profile right after it; Qwen2.5-32B 60, Mixtral 30).
    Priced over the tiling's waves, Llama's gate-up is within 5.5 % everywhere (a straight line
    between grid points: up to 6.2 %; on another card against an older profile, 3 % and 6.9 %),
    and over all 143 GEMMs the median, mean and p95 errors are below the straight line's (2.0,
    2.9, 9.5 % against 2.9, 3.8, 10.7). Llama's lm_head beyond 2,600 rows (no serving step has
    that many logit rows) and its `down` at 1,536 rows (320 us on two cards, 288 us at 1,654)
    are where neither reads the grid well."""
    results = Path(__file__).resolve().parents[1] / "benchmarks/results"
    rows = [r for f in ("h200-gemm-steps.json", "h200-gemm-steps-more.json")
            for r in json.loads((results / f).read_text())["rows"]]
    models: dict[str, ProfiledCostModel] = {}
    errors: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        model = models.setdefault(r["model"], ProfiledCostModel(load_model(r["model"]), H200))
        grid = model.profile.tables["ops"].query("op == @r['op']").sort_values("a")
        priced = model.table_seconds(r["op"], (float(r["m"]),))[0] * 1e6
        line = float(np.interp(r["m"], grid.a, grid.median_us))
        waves, straight = errors.setdefault(r["model"], ([], []))
        waves.append(abs(priced / r["median_us"] - 1))
        straight.append(abs(line / r["median_us"] - 1))
        if r["model"] == "llama-3.1-8b" and r["op"] == "gate_up":
            assert abs(priced / r["median_us"] - 1) < 0.055, r["m"]
    assert set(errors) == {"llama-3.1-8b", "qwen2.5-32b", "mixtral-8x7b"}
    waves = [e for w, _ in errors.values() for e in w]
    straight = [e for _, line in errors.values() for e in line]
    for stat in (np.median, np.mean, lambda e: np.percentile(e, 95)):
        assert stat(waves) < stat(straight)
    assert np.median(errors["llama-3.1-8b"][0]) < 0.02


def _with_runtime_prompts(tmp_path: Path, scale: dict[int, float]) -> Path:
    """The shipped Llama profile with the runtime's whole prompt passes (`runtime_graph`) at
    `scale[tokens]` x their operators' sum, and a row of each other runtime method (ignored)."""
    dst = _copy(tmp_path / "runtime")
    passes = pd.read_parquet(dst / "passes.parquet")
    passes = passes[~passes.method.astype(str).str.startswith("runtime_")]
    passes.to_parquet(dst / "passes.parquet", index=False)
    base = ProfiledCostModel(load_model("llama-3.1-8b"), H200, dst)
    assert base._prompt is None
    rows = []
    for method, k in (("runtime_graph", None), ("runtime_graph_rested", 2.0), ("runtime_served", 3.0)):
        for q, f in scale.items():
            us = 1e6 * (k or f) * base.step_time(BatchShape((q,), (0,), num_logits=1))
            rows.append({"batch_id": 10_000 + len(rows), "prefill_tokens": str(q), "prefill_prefix": "0",
                         "num_decodes": 0, "decode_context": 0, "max_decode_context": 0, "num_logits": 1,
                         "median_us": us, "p20_us": us, "p80_us": us, "reps": 7, "method": method,
                         "sms": 132, "corunner_decodes": 0, "corunner_context": 0, "corunner_sms": 0,
                         "corunner_prompt": 0})
    pd.concat([passes, pd.DataFrame(rows)], ignore_index=True).to_parquet(dst / "passes.parquet", index=False)
    return dst


def test_whole_gpu_prompt_passes_take_the_runtime_passes_measured(tmp_path) -> None:
    """A prompt pass on the whole GPU costs what the runtime's pass of that length measured
    (`runtime_graph`; the other runtime methods are for comparison only), linear in log tokens
    between lengths and held outside; only the prompt's layers are scaled (a layered pass's
    other layers, the ends, decode-only passes and passes on partitions keep their price), and
    batch_cost spreads the same total over the ops."""
    llama = load_model("llama-3.1-8b")
    factors = {128: 1.10, 512: 1.00, 4096: 1.06}
    profile = _with_runtime_prompts(tmp_path, factors)
    runtime = ProfiledCostModel(llama, H200, profile, prompt_passes="runtime_graph")
    base = ProfiledCostModel(llama, H200, profile, prompt_passes="ops")
    assert base._prompt is None and runtime._prompt is not None and runtime._prompt.tokens == [128, 512, 4096]
    assert not runtime.issues_prompts and ProfiledCostModel(llama, H200, profile).prompt_passes == "runtime"
    none = _copy(tmp_path / "none")
    passes = pd.read_parquet(none / "passes.parquet")
    passes[~passes.method.str.startswith("runtime_")].to_parquet(none / "passes.parquet", index=False)
    with pytest.raises(InputError, match="no runtime prompt passes"):
        ProfiledCostModel(llama, H200, none, prompt_passes="runtime_graph")
    assert ProfiledCostModel(llama, H200, none).prompt_passes == "ops"  # auto, without them

    def prompt(q: int, decodes: int = 0, layers: tuple[int, int] | None = None) -> BatchShape:
        return BatchShape((q,), (0,), decodes, decodes * 1000, 1000 if decodes else 0, 1 + decodes, layers)

    for q, f in factors.items():
        assert runtime.step_time(prompt(q)) == pytest.approx(f * base.step_time(prompt(q)), rel=1e-9)
    layer = runtime._prompt.factors  # the prompt's layers' (the ends priced as they are): a bit more
    assert layer[0] > 1.10 and layer[1] == pytest.approx(1.0, abs=1e-12) and layer[2] > 1.06
    assert runtime._prompt.at(256) == pytest.approx((layer[0] + layer[1]) / 2, rel=1e-12)  # halfway in log
    assert runtime._prompt.at(32) == layer[0] and runtime._prompt.at(16384) == layer[2]
    # a layered pass: its prompt's 4 layers at the factor of its rows, the rest as priced
    layered = prompt(4000, decodes=8, layers=(4, 8))
    f = runtime._prompt.at(4008)
    assert runtime.step_time(layered) - base.step_time(layered) == \
        pytest.approx((f - 1) * base._prompt_layers_s(layered), rel=1e-9)
    assert 0.0 < base._prompt_layers_s(layered) < 0.8 * base.step_time(layered)
    ends_and_rest = base.step_time(BatchShape((), (), 8, 8000, 1000, 8))
    assert runtime.step_time(BatchShape((), (), 8, 8000, 1000, 8)) == ends_and_rest  # decode-only
    assert runtime.step_time(prompt(1024), 96) == base.step_time(prompt(1024), 96)  # a partition's pass
    cost = runtime.batch_cost(prompt(128))
    assert cost.total_s == pytest.approx(runtime.step_time(prompt(128)), rel=1e-12)
    assert sum(op.seconds for op in cost.ops) == pytest.approx(cost.total_s, rel=1e-9)



def test_prompt_passes_as_the_runtime_issues_them(tmp_path) -> None:
    """`runtime` (the default where the profile has the passes): a whole-GPU prompt pass costs
    what the runtime's pass as it issues it measured (the pass in one graph, scaled from the
    operators, plus what issuing it piecewise added: `runtime_served` less `runtime_graph`), a
    layered pass that overhead's share of its prompt's layers; the host model then counts the
    launch gaps of the decode attention only. A prompt on a partition is issued the same way:
    its lane's price plus the same overhead."""
    from servesim.sim.host_overhead import HostOverheadCostModel

    llama = load_model("llama-3.1-8b")
    profile = _with_runtime_prompts(tmp_path, {128: 1.10, 512: 1.00, 4096: 1.06})  # served: 3x the sum
    runtime = ProfiledCostModel(llama, H200, profile, prompt_passes="runtime")
    graph = ProfiledCostModel(llama, H200, profile, prompt_passes="runtime_graph")
    base = ProfiledCostModel(llama, H200, profile, prompt_passes="ops")
    assert runtime.issues_prompts and runtime._issue is not None
    for q, f in ((128, 1.10), (512, 1.00), (4096, 1.06)):
        batch = BatchShape((q,), (0,), num_logits=1)
        assert runtime.step_time(batch) == pytest.approx(3.0 * base.step_time(batch), rel=1e-9)
        assert runtime._issue.at(q) == pytest.approx((3.0 - f) * base.step_time(batch), rel=1e-9)
    layered = BatchShape((4000,), (0,), 8, 8000, 1000, 9, (4, 12))
    assert runtime.step_time(layered) - graph.step_time(layered) == \
        pytest.approx(runtime._issue.at(4008) * 8 / 32, rel=1e-9)
    host = HostOverheadCostModel(runtime, llama, 30e-6, 300e-6, graph_max_tokens=2048, host_gap_s=3e-6)
    plain = HostOverheadCostModel(base, llama, 30e-6, 300e-6, graph_max_tokens=2048, host_gap_s=3e-6)
    prompt, mixed = BatchShape((256,), (0,), num_logits=1), BatchShape((256,), (0,), 16, 16000, 1000, 17)
    assert host.gaps_s(prompt) == 0.0 and plain.gaps_s(prompt) == pytest.approx(plain.graphed_launches(prompt) * 3e-6)
    assert host.gaps_s(mixed) == pytest.approx((1 + (host.decode_splits(mixed) > 1)) * 32 * 3e-6)
    # On a partition alike: its step holds no gaps for the prompt (the plain model's would).
    assert host.step_time(prompt, 64) == pytest.approx(
        host.step_host_s(prompt) + max(host.gpu_s(prompt, 64), host.launches(prompt) * host.host_launch_s), rel=1e-12)
    assert plain.step_time(prompt, 64) == pytest.approx(host.step_host_s(prompt) + max(
        plain.gpu_s(prompt, 64) + plain.gaps_s(prompt), plain.launches(prompt) * plain.host_launch_s), rel=1e-12)
    assert plain.gaps_s(prompt) > 0.0
    # A prompt on a partition: its lane's price (a pass captured whole) plus the same overhead.
    for q in (128, 512, 4096):
        batch = BatchShape((q,), (0,), num_logits=1)
        assert runtime.step_time(batch, 64) - base.step_time(batch, 64) == pytest.approx(runtime._issue.at(q), rel=1e-9)


def test_gpu_scale_multiplies_every_price_of_the_profile(llama: ProfiledCostModel) -> None:
    """`cost_model.gpu_scale`: a card 2 % slower than the profiled one, on the whole GPU, on a
    partition and beside a co-runner alike; a cost model without a profile refuses it."""
    from servesim.runner import build_cost_model

    slower = ProfiledCostModel(load_model("llama-3.1-8b"), H200, gpu_scale=1.02)
    shapes = [BatchShape((), (), 80, 80 * 1100, 3000, 80), BatchShape((512,), (0,), 40, 36000, 2000, 41),
              BatchShape((2048,), (0,), 0, 0, 0, 1), BatchShape((300,), (1024,), 3, 3000, 1200, 4)]
    for shape in shapes:
        for sms in (None, 64):
            assert slower.step_time(shape, sms) == pytest.approx(1.02 * llama.step_time(shape, sms), rel=1e-9)
    beside = Corunner(shapes[1], 84)
    assert slower.step_time(shapes[0], 48, beside) == pytest.approx(1.02 * llama.step_time(shapes[0], 48, beside),
                                                                    rel=1e-9)
    config = from_mapping({"model": "llama-3.1-8b", "cost_model": {"kind": "profile", "gpu_scale": 0.97}}, "t")
    built = build_cost_model(config, load_model("llama-3.1-8b"), H200)
    assert built.step_time(shapes[0]) == pytest.approx(0.97 * llama.step_time(shapes[0]), rel=1e-9)
    with pytest.raises(InputError, match="gpu_scale: scales a profile's times; the roofline"):
        build_cost_model(from_mapping({"model": "llama-3.1-8b", "cost_model": {"kind": "roofline", "gpu_scale": 1.1}},
                                      "t"), load_model("llama-3.1-8b"), H200)
    with pytest.raises(InputError, match="gpu_scale: must be > 0"):
        from_mapping({"model": "llama-3.1-8b", "cost_model": {"gpu_scale": 0}}, "t")


def test_a_graphed_decode_pass_reads_the_in_pass_factor_at_its_graph_rows() -> None:
    """With graph_rows set (the engine replays decode-only passes from graphs captured at those
    row counts), a pass of 9 decodes on 92 SMs is priced with the 16-decode factor, not one
    interpolated between 8 and 16; without it, as before."""
    plain = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    graphed = ProfiledCostModel(load_model("llama-3.1-8b"), H200)
    graphed.graph_rows = (1, 2, 4, 8, 16, 24, 32)
    assert graphed._factor_rows(9) == 16 and graphed._factor_rows(8) == 8 and graphed._factor_rows(40) == 40
    shape = BatchShape((), (), 9, 9 * 512, 512, 9)
    assert plain._in_pass is not None
    # the same operators (decode attention launched on the graph's 16 rows) at another factor
    ops = graphed.step_time(shape, 92) / plain._in_pass.factor(16, 512, 92)
    attn_padded, attn = graphed._decode_s(9, 9 * 512, 512, 92, 16), plain._decode_s(9, 9 * 512, 512, 92)
    assert attn_padded is not None and attn is not None and attn_padded > attn
    ops_plain = plain.step_time(shape, 92) / plain._in_pass.factor(9, 512, 92)
    assert ops == pytest.approx(ops_plain + 32 * (attn_padded - attn), rel=1e-9)
    assert graphed.step_time(shape, 92) / plain.step_time(shape, 92) > 1.01  # the 8-decode factor lies well below
    stepper = graphed.decode_stepper(9, 9, 92)
    assert stepper(9 * 512, 512) == pytest.approx(graphed.step_time(shape, 92), rel=1e-12)


def test_a_padded_decode_launch_prices_its_padding_rows_programs() -> None:
    """Decode attention launched on a graph's 16 rows for 9 decodes: the padding rows' programs
    (the batch's split count, one token each) cost their fixed share of a slot; a launch on the
    batch's own rows is as before, and more padding costs more."""
    arch = load_model("llama-3.1-8b")
    scale = (2e-6, 1e-6, 2e-7, 3e-6)
    own = kernel_work.decode_estimate(arch, 92, 9, scale)
    assert kernel_work.decode_estimate(arch, 92, 9, scale, 9)(9 * 1024, 1024) == own(9 * 1024, 1024)
    padded = [kernel_work.decode_estimate(arch, 92, 9, scale, rows)(9 * 1024, 1024) for rows in (12, 16, 24)]
    assert own(9 * 1024, 1024) < padded[0] < padded[1] < padded[2]
    # slot-bound here (a 1,024-token context in 3 splits of 384): 7 rows x 3 splits more programs
    per_slot = arch.num_kv_heads / (2 * 92)
    extra = per_slot * (7 / kernel_work.KEY_TILE + 7 * 3 * kernel_work.PROGRAM_TILES)
    assert padded[1] - own(9 * 1024, 1024) == pytest.approx(scale[1] * extra, rel=1e-9)
