"""The GPU clock's response to compute-dense passes (servesim.sim.power): its constants against
the H200 measurements they were fitted to, its behaviour, and how configs turn it on."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from simkit import requests
from simkit import run as sim_run

from servesim.config import from_mapping
from servesim.errors import InputError
from servesim.models.arch import load_model
from servesim.models.shapes import BatchShape
from servesim.policies import REGISTRY
from servesim.runner import power_model
from servesim.sim.engine import simulate
from servesim.sim.hardware import get_gpu
from servesim.sim.power import H200_POWER, PowerState, prompt_flops_per_token
from servesim.sim.profiled import ProfiledCostModel

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
LLAMA = load_model("llama-3.1-8b")
H200 = get_gpu("h200")


def _rows(case: str) -> dict[str, dict]:
    result = json.loads((RESULTS / f"h200-pass-fidelity-{case}.json").read_text())
    return {f"{r['kind']}_{r['size']}": r for r in result["rows"]}


def _heated(q: float, seconds: float, idle_s: float) -> PowerState:
    """A state after `seconds` of passes of intensity q, then `idle_s` idle."""
    state = PowerState(H200_POWER, LLAMA)
    state.levels = state._toward(state.levels, q, seconds)
    state.levels = state._toward(state.levels, 0.0, idle_s)
    return state


def _prompt(tokens: int) -> BatchShape:
    return BatchShape((tokens,), (0,), num_logits=1)


def test_rise_follows_the_heating_time_measured() -> None:
    """Heat after 0.05 / 0.2 / 1 s of 2,048-token prompts, over the heat after 1 s: the model
    within 0.05 of the mean of the three targets measured 5 ms after."""
    heat = _rows("heat")
    targets = ("decode_32", "decode_96", "prefill_256")

    def measured(seconds: str, key: str) -> float:
        r = heat[key]["heat"]
        return statistics.median(r[f"prefill_2048 {seconds}s 5ms"]) / statistics.median(r["none"]) - 1

    for seconds, value in (("0.05", 0.05), ("0.2", 0.2)):
        share = statistics.mean(measured(seconds, k) / measured("1", k) for k in targets)
        model = _heated(1.0, value, 0.005).heat / _heated(1.0, 1.0, 0.005).heat
        assert model == pytest.approx(share, abs=0.05), seconds


def test_fall_follows_the_idle_measured() -> None:
    """After 0.2 s of 2,048-token prompts, the slowdown 50 ms into idle over the slowdown 5 ms
    into it: the model's within the range of the four targets measured."""
    after = _rows("after")
    ratios = []
    for key in ("decode_32", "decode_96", "decode_128", "prefill_256"):
        r = after[key]["after"]
        idle = statistics.median(r["0x0ms"])
        ratios.append((statistics.median(r["4x50ms"]) / idle - 1) / (statistics.median(r["4x5ms"]) / idle - 1))
    model = _heated(1.0, 0.2, 0.05).heat / _heated(1.0, 0.2, 0.005).heat
    assert min(ratios) - 0.02 <= model <= max(ratios) + 0.02
    assert _heated(1.0, 0.2, 0.1).heat < 0.1 * _heated(1.0, 0.2, 0.0).heat  # gone after 100 ms


def test_intensity_follows_the_prompt_rate_measured() -> None:
    """Each heater's heat (0.2 s of it, 5 ms idle) over a 2,048-token prompt's, mean of the
    three targets, against the model's intensity from the heater's measured time: within 0.15;
    decode batches do not heat."""
    heat = _rows("heat")
    state = PowerState(H200_POWER, LLAMA)
    base = None
    for heater in ("prefill_2048", "prefill_1024", "prefill_512", "prefill_256", "mixed_512", "decode_128"):
        rel = []
        for key in ("decode_32", "decode_96", "prefill_256"):
            r = heat[key]["heat"]
            idle = statistics.median(r["none"])
            rel.append(statistics.median(r[f"{heater} 0.2s 5ms"]) / idle - 1)
        measured = statistics.mean(rel)
        base = measured if base is None else base
        row = heat[heater]
        seconds = statistics.median(row["runtime_us"]) * 1e-6
        shape = BatchShape((row["size"],), (0,), row.get("decodes", 0), row.get("decodes", 0) * row["context"],
                           row["context"], 1) if row["kind"] != "decode" else BatchShape(num_decodes=row["size"])
        q = state.intensity(shape, seconds) / state.intensity(_prompt(2048), statistics.median(
            heat["prefill_2048"]["runtime_us"]) * 1e-6)
        assert q == pytest.approx(measured / base, abs=0.15), heater
    assert state.intensity(BatchShape(num_decodes=128), 0.011) == 0.0


def test_sensitivities_match_the_passes_after_heat_and_a_host_gap() -> None:
    """The slowdown after 0.2 s of 2,048-token prompts and 0.5-2 ms of idle (serving's host gap
    between passes), per target: the model within 1 point of the measurements' mean; queued
    right behind the prompts the passes ran less slow (the model does not price that case).
    Prompts of 256 tokens were measured twice (`after` and `after-prompts`), 512 and 1,024 once."""
    after, prompts = _rows("after"), _rows("after-prompts")
    for rows, key, shape in ((after, "decode_32", BatchShape(num_decodes=32)),
                             (after, "decode_96", BatchShape(num_decodes=96)),
                             (after, "decode_128", BatchShape(num_decodes=128)),
                             (after, "prefill_256", _prompt(256)), (prompts, "prefill_256", _prompt(256)),
                             (prompts, "prefill_512", _prompt(512)), (prompts, "prefill_1024", _prompt(1024))):
        r = rows[key]["after"]
        idle = statistics.median(r["0x0ms"])
        measured = statistics.mean(statistics.median(r[f"4x{gap}ms"]) / idle - 1 for gap in ("0.5", "1", "2"))
        state = _heated(1.0, 0.2, 0.001)
        assert state.sensitivity(shape) * state.heat == pytest.approx(measured, abs=0.01), key
        assert statistics.median(r["4x0ms"]) / idle - 1 < measured


def test_a_rested_gpu_and_decode_passes_leave_the_price_alone() -> None:
    state = PowerState(H200_POWER, LLAMA)
    decode = BatchShape(num_decodes=64, decode_context=64 * 1000, max_decode_context=1000, num_logits=64)
    t = 0.0
    for _ in range(100):  # decode passes back to back never heat the GPU
        assert state.stretch(decode, 0.009, t) == 0.009
        t += 0.009
    assert state.heat == 0.0


def test_a_prompt_slows_what_follows_until_the_clock_recovers() -> None:
    state = PowerState(H200_POWER, LLAMA)
    decode = BatchShape(num_decodes=32)
    t = 0.0
    for _ in range(4):  # 2,048-token prompts at 42k tokens/s: full intensity
        t += state.stretch(_prompt(2048), 0.0485, t)
    right_after = state.stretch(decode, 0.0077, t + 0.001) / 0.0077
    later = state.stretch(decode, 0.0077, t + 0.2) / 0.0077
    assert 1.09 < right_after < 1.14  # measured 1.118 after 1 ms (benchmarks/results/h200-pass-fidelity-after.json)
    assert later == pytest.approx(1.0, abs=1e-3)
    assert PowerState(H200_POWER, LLAMA).intensity(_prompt(2048), 0.0485) > 0.9
    assert PowerState(H200_POWER, LLAMA).intensity(_prompt(256), 0.0092) < 0.35


def test_moe_prompts_count_the_experts_they_use() -> None:
    moe = load_model("qwen3-30b-a3b")
    dense_like = 2.0 * moe.num_layers * (moe.attention_params_per_layer + moe.mlp_params_per_layer)
    assert prompt_flops_per_token(moe) < 0.2 * dense_like  # 8 of 128 experts
    assert prompt_flops_per_token(LLAMA) == pytest.approx(13.96e9, rel=0.01)


def test_fast_forward_keeps_the_one_by_one_times_with_the_clock_model() -> None:
    """Decode runs priced in one event go through the same clock state as one-by-one steps."""
    specs = [(0.0, 3000, 200), (0.02, 2048, 150), (0.3, 200, 400), (0.31, 6000, 50), (1.5, 64, 600)]
    out = []
    for fast in (True, False):
        model = ProfiledCostModel(LLAMA, H200)
        lim = __import__("simkit").limits()
        cls = REGISTRY["vllm_v1"]
        result = simulate(requests(specs), cls(cls.Params(), lim), model, lim, fast, arch=LLAMA, power=H200_POWER)
        out.append([r.token_times_s for r in result.requests])
    assert out[0] == out[1]
    plain = sim_run("vllm_v1", requests(specs), ProfiledCostModel(LLAMA, H200))
    assert [r.token_times_s for r in plain.requests] != out[0]  # the prompts did slow the decodes
    assert plain.requests[0].token_times_s[5] < out[0][0][5]


def test_config_turns_it_on_for_the_measured_gpu_and_profile() -> None:
    work = {"synthetic": {"rate_rps": 1.0}, "duration_s": 4}

    def model(**cm: str) -> object:
        config = from_mapping({"model": "llama-3.1-8b", "workload": work, "cost_model": cm}, "test")
        return power_model(config, LLAMA, H200)

    assert model() is H200_POWER  # auto: the shipped profile on the H200
    assert model(kind="roofline") is None
    assert model(kind="roofline", power_cap="on") is H200_POWER
    assert model(power_cap="off") is None
    config = from_mapping({"model": "llama-3.1-8b", "workload": work, "hardware": {"gpu": "h100"},
                           "cost_model": {"kind": "roofline", "power_cap": "on"}}, "test")
    with pytest.raises(InputError, match="power_cap"):
        power_model(config, LLAMA, get_gpu("h100"))


def test_step_tables_price_the_measured_sequence_with_its_heat() -> None:
    """validate's step table prices each measured pass after the ones before it: a decode pass
    right after prompts costs more than the same pass priced alone; on SM partitions, by the
    lanes' heat: a decode pass that starts while the prompt lane has been busy for 0.26 s costs
    its sensitivity times the rise by then more, and the first prompt pass nothing more."""
    from servesim.validate import _priced

    model = ProfiledCostModel(LLAMA, H200)
    prompt = _prompt(2048)
    decode = BatchShape(num_decodes=32, decode_context=32 * 1000, max_decode_context=1000, num_logits=32)
    steps = [(prompt, None, None)] * 4 + [(decode, None, None)]
    starts = [0.0, 0.05, 0.1, 0.15, 0.2]
    rested, _ = _priced(model, steps)
    heated, spans = _priced(model, steps, starts, PowerState(H200_POWER, LLAMA))
    assert heated[0] == rested[0]
    assert 1.05 < heated[-1] / rested[-1] < 1.14
    assert spans[-1] / _priced(model, steps)[1][-1] == pytest.approx(heated[-1] / rested[-1])
    on_partitions = [(prompt, 64, None)] * 4 + [(decode, 68, None)]
    lane, _ = _priced(model, on_partitions)
    busy = 3.5 * lane[0]  # prompts back to back; the decode starts halfway through the fourth
    heated, _ = _priced(model, on_partitions, [0.0, lane[0], 2 * lane[0], 3 * lane[0], busy],
                        PowerState(H200_POWER, LLAMA))
    assert heated[0] == lane[0] and heated[1] > lane[1]
    assert heated[-1] / lane[-1] - 1 == pytest.approx(
        H200_POWER.lane_decode_sensitivity * (1 - math.exp(-busy / H200_POWER.lane_rise_s)), rel=0.02)


def _sustained_rows() -> list[dict]:
    return [r for f in ("sustained", "sustained-release")
            for r in json.loads((RESULTS / f"h200-pass-contention-{f}.json").read_text())["rows"]]


def _steady(row: dict, side: str) -> float:
    """A held pass's time from 0.9 s on over its time beside the other for 8 replays."""
    held = [v for k, v in row[f"{side}_held_us"].items()
            if float(k[1:].split("-")[0]) >= 0.9 and v > row[f"{side}_alone_us"]]
    return statistics.mean(held) / row[f"{side}_beside_us"]


def test_lane_constants_are_the_two_cards_means_of_the_held_passes() -> None:
    """The lanes' constants from benchmarks/results/h200-pass-contention-sustained*.json (two
    cards' means of (held from 0.9 s on) / (beside for 8 replays) - 1 and of the held prompts'
    matmul rates): the 56-SM prompt's rate is intensity 1, where its decodes' excess is the
    decode sensitivity and its own the prompt sensitivity; the 40-SM prompt's rate is the
    intensity its decodes' excess gives over that sensitivity."""
    rows = _sustained_rows()
    assert len(rows) == 4
    flops = prompt_flops_per_token(LLAMA)

    def mean(sms: int, what: str) -> float:
        pair = [r for r in rows if r["prefill_sms"] == sms]
        if what == "rate":
            return statistics.mean(r["prompt"] * flops / (_steady(r, "prefill") * r["prefill_beside_us"] * 1e-6)
                                   for r in pair)
        return statistics.mean(_steady(r, what) - 1 for r in pair)

    m = H200_POWER
    assert m.lane_decode_sensitivity == pytest.approx(mean(56, "decode"), abs=0.001)
    assert m.lane_prefill_sensitivity == pytest.approx(mean(56, "prefill"), abs=0.001)
    assert m.lane_rate_high == pytest.approx(mean(56, "rate"), rel=0.002)
    q40 = (mean(40, "rate") - m.lane_rate_low) / (m.lane_rate_high - m.lane_rate_low)
    assert q40 == pytest.approx(mean(40, "decode") / m.lane_decode_sensitivity, abs=0.005)


def test_lane_heat_rises_with_a_busy_prompt_lane_and_falls_when_it_stops() -> None:
    """A 1,536-token prompt at 241 TFLOP/s (intensity 1: the 56-SM lane held beside decodes)
    back to back: the heat a decode pass on the other lane meets is the rise's
    1 - exp(-t / 0.58 s); 100 ms after the lane stops it has fallen by the whole GPU's fall; a
    decode pass is stretched by the decode sensitivity times that heat. A prompt lane at 100
    TFLOP/s (24 SMs) heats nothing."""
    from servesim.sim.power import LaneHeat

    lanes = LaneHeat(H200_POWER, LLAMA)
    prompt, decodes = _prompt(1536), BatchShape(num_decodes=28, decode_context=28 * 1536,
                                                max_decode_context=1536, num_logits=28)
    assert lanes.heat(0.5) == 0.0 and lanes.stretch(decodes, 0.0085, 0.5) == 0.0085  # rested
    t = 1.0
    while t < 3.0:
        t += lanes.stretch(prompt, 0.087, t)
    heat = lanes.heat(t)
    assert lanes.q == 1.0 and heat == pytest.approx(1.0 - math.exp(-2.0 / 0.58), abs=0.02)
    assert lanes.stretch(decodes, 0.0085, t) == pytest.approx(0.0085 * (1 + 0.190 * heat))
    assert lanes.heat(t + 0.1) == pytest.approx(heat * math.exp(-0.1 / H200_POWER.fall_s), rel=1e-9)
    assert 0.03 < lanes.heat(t + 0.1) < 0.06
    assert lanes.stretch(prompt, 0.087, t + 1.0) == pytest.approx(0.087, rel=1e-6)  # cooled
    small = LaneHeat(H200_POWER, LLAMA)
    t = 0.0
    while t < 3.0:
        t += small.stretch(prompt, 0.215, t)
    assert small.heat(t) == 0.0 and small.stretch(decodes, 0.0085, t) == 0.0085


def test_nexus_decodes_beside_a_busy_prompt_lane_slow_with_the_clock_model() -> None:
    """The simulator's Nexus lanes with the H200's clock model: the token gaps of requests
    decoding while long prompts keep the prefill lane busy come out longer than without it;
    once a lone request's own prompt is 0.5 s past, its gaps are the same either way."""
    cls = REGISTRY["nexus"]
    lim = __import__("simkit").limits()
    busy = [(0.0, 1024, 300)] + [(0.05 + 0.1 * i, 3000, 2) for i in range(25)]
    gaps = []
    for power in (None, H200_POWER):
        result = simulate(requests(busy), cls(cls.Params(adaptive=False), lim), ProfiledCostModel(LLAMA, H200),
                          lim, arch=LLAMA, power=power)
        times = result.requests[0].token_times_s
        gaps.append([b - a for a, b in zip(times, times[1:], strict=False)])
    late = slice(len(gaps[0]) // 2, None)  # after a second of prompts
    assert statistics.mean(gaps[1][late]) > 1.03 * statistics.mean(gaps[0][late])
    alone = [(0.0, 512, 200)]
    plain = [simulate(requests(alone), cls(cls.Params(adaptive=False), lim), ProfiledCostModel(LLAMA, H200),
                      lim, arch=LLAMA, power=p).requests[0].token_times_s for p in (None, H200_POWER)]
    assert plain[0][1] < plain[1][1]  # right after its prompt: heat
    later = [[b - a for a, b in zip(t, t[1:], strict=False) if a > 0.5] for t in plain]
    assert len(later[0]) > 50 and later[0] == pytest.approx(later[1], rel=1e-6)


def test_operator_level_passes_are_slowed_by_the_heat_they_start_at_not_their_own() -> None:
    """FlowPrefill runs a prompt block by block; each block is slowed by the heat its pass
    started at, as a pass run whole is (a pass's own heating is not modelled: a prompt block
    after the first used to carry the heat of the blocks before it, 2 % on a rested 1,088-token
    prompt, which the H200 runs did not show)."""
    cls = REGISTRY["flowprefill"]
    lim = __import__("simkit").limits()

    def prefill_s(power: Any) -> list[float]:
        reqs = requests([(0.0, 2048, 1), (0.06, 1024, 1)])  # the second after the first's pass
        result = simulate(reqs, cls(cls.Params(), lim), ProfiledCostModel(LLAMA, H200), lim, arch=LLAMA, power=power)
        return [r.first_token_s - r.first_scheduled_s for r in result.requests]

    rested, heated = prefill_s(None), prefill_s(H200_POWER)
    assert rested[0] < 0.06
    assert heated[0] == pytest.approx(rested[0], rel=1e-12)  # from rest: its own heat does not count
    state = PowerState(H200_POWER, LLAMA)
    state.stretch(_prompt(2048), rested[0], 0.0)  # the first prompt's whole pass heats the GPU
    expected = state.stretch(_prompt(1024), rested[1], 0.06) / rested[1]
    assert expected > 1.03  # the first prompt did heat it
    assert heated[1] / rested[1] == pytest.approx(expected, rel=1e-9)
