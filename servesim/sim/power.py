"""The GPU's clock after compute-dense work. The H200 holds its power to 700 W: a pass whose
matrix units run near their peak (a prompt's GEMMs at 500-600 TFLOP/s) makes the driver lower the
SM clock, and the clock comes back over the next tens of milliseconds of lighter work. The
profile times each operator on a rested GPU, so a pass that follows a prompt runs slower than
its price. Measured side by side on the H200 by benchmarks/pass_fidelity.py (--cases heat and
--cases after; results benchmarks/results/h200-pass-fidelity-heat.json and -after.json):

  - after 0.2 s of 2,048-token prompts and 0.5-2 ms of idle, a decode pass of 32 sequences ran
    11.7 % slower than after an idle GPU, one of 96 6.2 %, one of 128 3.9 %, a 256-token prompt
    7.8 %; queued right behind the prompts (no idle at all) only -1..+5 %. Serving always idles
    0.3-1 ms between passes (the host's scheduling and inputs), so the model prices that;
  - the excess held for 5-20 ms of idle, was a third of it after 50 ms and gone after 100 ms;
  - it grew with the time spent heating (0.05 s: half of what 1 s gave) and with the prompt's
    matrix rate: prompts of 512-2,048 tokens (540-600 TFLOP/s) heated 0.8-1.0 times as much as
    2,048-token ones, prompts of 256 tokens and 512-token chunks beside 64 decodes (350-390
    TFLOP/s) 0.3 times, decode batches (no prompt) not at all.

`PowerModel` is a heat level h in [0, 1] made of two parts (`parts`: weight, rise time), each
rising toward the intensity q of the pass that runs (`intensity`: 0 below `rate_low` of matmuls
over its rows, 1 above `rate_high`, linear between) with its rise time and falling toward it with
`fall_s`. A pass that starts at heat h takes (1 + s x h) of its price, s its sensitivity
(`sensitivity`). Issue 7's runs measured the same effect while serving: at 90 % load, decode
steps within 50 ms of a prompt's pass ran 2-3 % slower than those with none in 200 ms.

SM partitions (Nexus) have their own state (`LaneHeat`): the prompt lane's passes drive it, at
their matmul rate per SM; a prompt and decodes held side by side for seconds slow far more than
beside each other for a few passes (the profile's co-runner tables). Not modelled: a
pass's own heating (a 2,048-token prompt replayed back to back for 3 s slowed by 2 % only).
Prompts of 256, 512 and 1,024 tokens after the same heat ran 8.7, 11.2 and 11.8 % slower
(h200-pass-fidelity-after-prompts.json, a second measurement; 7.8 % at 256 in the first). Read
between 256 and 2,048 tokens they had been priced 7.8, 6.2 and 4.6 %, and taking the measured
values had moved serving's 512-2,048-token prompt steps further over their time, with a profile
whose passes were timed under the power cap in 61 % of their clock samples (ff0a5e7). With the
profile of e1d28c6 (43 %; its prompt passes 2.9 % faster than that one's) the measured values
bring the twelve colocated runs' median prompt-step errors from -3.7..-0.2 % (mean absolute
1.3 %) to -3.7..+0.6 % (1.0 %), so they are taken: the profile is the rested baseline this model
stretches, and one timed hotter had been standing in for part of the heat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servesim.models.arch import ModelArch
from servesim.models.shapes import BatchShape
from servesim.sim.profile_tables import lerp


@dataclass(frozen=True)
class PowerModel:
    """Constants of the clock's response to compute-dense passes on one GPU (see the module)."""

    parts: tuple[tuple[float, float], ...]
    """(weight, rise time in s) of each part of the heat level; the weights sum to 1."""
    fall_s: float
    """Time constant of the heat's fall under lighter work or idle."""
    rate_low: float
    rate_high: float
    """Matmul rates over a pass's rows (FLOP/s) at intensity 0 and 1."""
    decode_sensitivity: tuple[tuple[int, float], ...]
    """(decodes, slowdown at full heat) of decode-only passes, linear between, held outside."""
    prefill_sensitivity: tuple[tuple[int, float], ...]
    """(prompt tokens, slowdown at full heat) of passes with a prompt, linear in the log of the
    tokens between, held outside."""
    lane_rise_s: float = 0.0
    """SM partitions (`LaneHeat`): the rise time of the heat a prompt lane makes; 0: partitions
    are priced rested."""
    lane_rate_low: float = 0.0
    lane_rate_high: float = 0.0
    """The prompt lane's matmul rate (FLOP/s, the whole GPU's) at lane intensity 0 and 1."""
    lane_decode_sensitivity: float = 0.0
    """Slowdown at full heat of a decode-only pass on a partition beside a prompt lane, over its
    price beside it rested (the profile's)."""
    lane_prefill_sensitivity: float = 0.0
    """Slowdown at full heat of the prompt lane's passes."""


H200_POWER = PowerModel(
    parts=((0.5, 0.03), (0.5, 0.3)),
    fall_s=0.033,
    rate_low=300e12,
    rate_high=600e12,
    decode_sensitivity=((32, 0.162), (96, 0.086), (128, 0.055)),
    prefill_sensitivity=((256, 0.114), (512, 0.155), (1024, 0.164), (2048, 0.04)),
    lane_rise_s=0.58,
    lane_rate_low=124.4e12,
    lane_rate_high=240.9e12,
    lane_decode_sensitivity=0.190,
    lane_prefill_sensitivity=0.020,
)
"""Fitted to benchmarks/results/h200-pass-fidelity-{heat,after}.json (Llama-3.1-8B; tests
check the fit): the rise's two parts give 0.49 / 0.76 / 1 of the heat after 0.05 / 0.2 / 1 s of
2,048-token prompts (measured 0.51 / 0.77 / 1, the three targets' mean); the fall, a time
constant of 33 ms (the four targets kept 0.1-0.5 of their slowdown from 5 to 50 ms of idle); the
sensitivities, the slowdown after 0.2 s of 2,048-token prompts and 0.5-2 ms of idle (mean of the
three gaps) over the heat that leaves at 1 ms (0.721; the 256-token prompt's, the mean of two
measurements: 7.8 and 8.7 %); the 2,048-token prompt's, its slowdown after 3 s back to back (+2 %
over its first 0.3 s). The lanes' constants: benchmarks/results/h200-pass-contention-sustained.json
and -sustained-release.json (`pass_contention.py --cases sustained`, two cards): a 1,536-token
prompt on 56 SMs beside 28 decodes of 1.5k on 76, and on 40 beside 8 on 92, each pass held beside
the other for 3 s. Beside each other for 8 replays (the profile's beside price: 1.066 and
1.077) the decodes ran 1.051-1.055 and 1.070-1.072 times their time alone; from 1 s on (mean of
the windows from 0.9 s) 1.284 / 1.223 and 1.161 / 1.087 (0.217 / 0.163 and 0.083 / 0.016 over
the beside price; the prompts 0.024 / 0.015 and 0.011 / 0.013), the held prompts running at
241 and 155 TFLOP/s of matmuls (two cards' mean). The heat is taken to grow with that rate,
the chip's power: intensity 1 at the 56-SM prompt's rate, where the decodes' mean excess (0.190)
is the decode sensitivity and the prompts' (0.020) the prompt sensitivity, and 0.259 at the
40-SM prompt's (its decodes' 0.049 over 0.190), linear, so 0 below 124 TFLOP/s: a prompt on
24 SMs (about 100) heats nothing, as Nexus's 90 % run measured (its 33-48 decodes on 108 SMs
beside one ran 1.5 % over their rested price). The decodes' excess over its full value, per
window of time since the start: the least-squares single rise over both cards' 20 windows is
0.58 s (measured 0.03-0.31 in the first 0.1 s, 0.20-0.54 by 0.5 s, 0.97-0.98 by 1 s), with the
SM clock slowed for power in 62-95 % of samples. After 1.5 s held, the 76-SM decodes going on
alone kept 0.070 / 0.049 / 0.020 / 0.009 of their time over alone 5 / 20 / 45 / 150 ms after
the prompt lane stopped: the whole GPU's fall (33 ms)."""

POWER_MODELS = {"h200": H200_POWER}
"""GPUs whose clock response was measured."""


def prompt_flops_per_token(arch: ModelArch) -> float:
    """Matmul FLOPs of one row (a prompt token or a decode) through every layer (the routed
    experts it uses)."""
    if arch.is_moe:
        h = arch.hidden_size
        mlp = (arch.num_experts_per_tok * arch.expert_params + h * arch.num_experts
               + 3 * h * arch.shared_expert_intermediate_size)
    else:
        mlp = arch.mlp_params_per_layer
    return 2.0 * arch.num_layers * (arch.attention_params_per_layer + mlp)


class PowerState:
    """One GPU's heat level over simulated time: `stretch` prices each pass in turn."""

    def __init__(self, model: PowerModel, arch: ModelArch) -> None:
        self.model = model
        self.arch = arch
        self.flops_per_token = prompt_flops_per_token(arch)
        self.levels = [0.0] * len(model.parts)
        self.at_s = 0.0
        """When `levels` were last brought up to date (the end of the last pass)."""
        self._decode = ([float(n) for n, _ in model.decode_sensitivity],
                        [s for _, s in model.decode_sensitivity])
        self._sensitivity: dict[tuple[int, int], float] = {}
        self._weights = [w for w, _ in model.parts]
        self._rises = [rise for _, rise in model.parts]
        self._prefill = ([math.log(n) for n, _ in model.prefill_sensitivity],
                         [s for _, s in model.prefill_sensitivity])

    @property
    def heat(self) -> float:
        return self._heat(self.levels)

    def _heat(self, levels: list[float]) -> float:
        return sum([w * level for w, level in zip(self._weights, levels, strict=True)])

    def intensity(self, batch: BatchShape, seconds: float) -> float:
        """0-1: how hard a pass of `seconds` drives the matrix units: the matmul rate of its rows
        (prompt tokens and decodes)."""
        rows = batch.num_prefill_tokens + batch.num_decodes
        if not rows or seconds <= 0.0:
            return 0.0
        m = self.model
        q = (rows * self.flops_per_token / seconds - m.rate_low) / (m.rate_high - m.rate_low)
        return 1.0 if q > 1.0 else q if q > 0.0 else 0.0

    def sensitivity(self, batch: BatchShape) -> float:
        """The pass's slowdown at full heat (kept per prompt tokens and decodes: the simulator
        asks for the same few shapes hundreds of thousands of times)."""
        key = (batch.num_prefill_tokens, batch.num_decodes)
        got = self._sensitivity.get(key)
        if got is None:
            if key[0]:
                xs, ys = self._prefill
                got = lerp(xs, ys, math.log(key[0]))
            else:
                xs, ys = self._decode
                got = lerp(xs, ys, float(key[1]))
            got = self._sensitivity[key] = got
        return got

    def stretch(self, batch: BatchShape, seconds: float, start_s: float, pass_s: float | None = None,
                factor: float | None = None) -> float:
        """The time of a pass priced `seconds` on a rested GPU that starts at `start_s` (at or
        after the previous pass's end): slower by the heat it starts at; the heat then follows
        the pass to its end. A block of a pass (operator-level execution) gives the whole
        pass's price as `pass_s`, which sets its intensity, and each block after the pass's
        first gives the first's `factor` (taken / seconds): a pass is slowed by the heat it
        started at, not by its own (not modelled: see the module), as a pass run whole is.
        (Called for every simulated pass: written for speed.)"""
        levels = self.levels
        warm = any(levels)
        if warm and start_s > self.at_s:
            levels = self._toward(levels, 0.0, start_s - self.at_s)
        taken = seconds
        if factor is not None:
            taken = seconds * factor
        elif warm:
            heat = self._heat(levels)
            if heat > 0.0:
                taken = seconds * (1.0 + self.sensitivity(batch) * heat)
        q = self.intensity(batch, seconds if pass_s is None else pass_s)
        self.levels = self._toward(levels, q, taken) if q > 0.0 or warm else levels
        self.at_s = start_s + taken
        return taken

    def _toward(self, levels: list[float], q: float, dt: float) -> list[float]:
        """Each part after `dt` seconds of work of intensity q (rising with its own time
        constant, falling with fall_s); parts below 1e-9 of full heat count as none."""
        fall = self.model.fall_s
        out = []
        for rise, level in zip(self._rises, levels, strict=True):
            level = q + (level - q) * math.exp(-dt / (rise if q > level else fall))
            out.append(level if level > 1e-9 else 0.0)
        return out



class LaneHeat:
    """The heat of a GPU split into SM partitions (Nexus): the prompt lane's passes drive it, at
    the intensity of their matmul rate (`lane_rate_low` .. `lane_rate_high`), rising with the
    model's `lane_rise_s` and falling with its `fall_s`; a pass of either lane is slower by its
    lane sensitivity times the heat it starts at. Each lane's passes come in time order, and
    the prompt lane's do not overlap (one stream)."""

    def __init__(self, model: PowerModel, arch: ModelArch) -> None:
        self.model = model
        self.flops_per_token = prompt_flops_per_token(arch)
        self.level = 0.0
        """The heat when the last prompt pass started (`start_s`), which drives it at `q` until
        `end_s`, where it is `end_level`."""
        self.start_s = self.end_s = self.q = self.end_level = 0.0

    def heat(self, t: float) -> float:
        """The heat at `t` (at or after the last prompt pass's start)."""
        m = self.model
        if t <= self.end_s:
            tau = m.lane_rise_s if self.q > self.level else m.fall_s
            return self.q + (self.level - self.q) * math.exp(-(t - self.start_s) / tau)
        return self.end_level * math.exp(-(t - self.end_s) / m.fall_s) if self.end_level else 0.0

    def intensity(self, batch: BatchShape, seconds: float) -> float:
        """0-1: the prompt pass's matmul rate between the model's lane rates."""
        m = self.model
        if seconds <= 0.0:
            return 0.0
        q = (batch.num_prefill_tokens * self.flops_per_token / seconds - m.lane_rate_low) \
            / (m.lane_rate_high - m.lane_rate_low)
        return 1.0 if q > 1.0 else q if q > 0.0 else 0.0

    def stretch(self, batch: BatchShape, seconds: float, start_s: float) -> float:
        """A pass priced `seconds` (rested, beside the other lane) that starts at `start_s`:
        slower by its sensitivity times the heat; a prompt pass then drives the heat to its end."""
        heat = self.heat(start_s)
        m = self.model
        if batch.prefill_tokens:
            taken = seconds * (1.0 + m.lane_prefill_sensitivity * heat)
            self.level, self.start_s, self.end_s = heat, start_s, start_s + taken
            self.q = self.intensity(batch, taken)
            self.end_level = self.heat(self.end_s)  # (the fall after the pass starts from it)
            return taken
        return seconds * (1.0 + m.lane_decode_sensitivity * heat) if batch.num_decodes else seconds
