"""ProfiledCostModel: every operator of a pass priced from a measured profile.

time(op) = table(op, shape) x sm_ratio(op, shape, sms) x slowdown(class(op), co-runner mix), plus
the profile's per-iteration fixed cost once per step; a decode-only pass is then scaled by what
the profile's whole decode-only passes (`passes`) measured against their operators' sum, at its
(batch, mean context, SMs); a prompt-only pass on a partition (a Nexus prefill lane) likewise by
the profile's prompt passes on partitions, alone or beside a decode-only co-runner, at its
(tokens, SMs, co-runner's decodes), and a decode-only pass on a partition beside a prompt by
the decode passes measured so, at its (decodes, SMs, co-runner's tokens); with a co-runner, no
pass costs less than alone. Prefill chunks packed into one launch take the measured packing
factor of `attn_prefill_packed`. Co-runners are priced on their own partition and split into
the profile's co-runner classes by time; the target's slowdown is the time-weighted measured
slowdown. Lookups off a grid, below the smallest partition, or for
co-runner pairs the profile lacks (then the roofline model's HBM contention, hardware.py) are
counted in `extrapolated`; the run's summary reports them. Groups of operators are priced once
per shape and cached, so a decode step costs a few dict lookups, two interpolations and decode
attention's structural estimate (kernel_work.decode_estimate).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from servesim.errors import InputError
from servesim.models import ops as model_ops
from servesim.models.arch import ModelArch
from servesim.models.ops import OpSpec
from servesim.models.profile_schema import (
    CONTENTION_TARGETS,
    CORUNNERS,
    GEMM_ROW_CLASSES,
    SMALL_GEMM_ROWS,
    table_for,
)
from servesim.models.shapes import BatchCost, BatchShape, Corunner, OpCost
from servesim.sim import kernel_work
from servesim.sim.hardware import CORUN_BASE, CORUN_PER_DEMAND, GpuSpec
from servesim.sim.profile_tables import Profile, lerp, shipped_root

_SM_PROXY = {"moe_combine": "moe_silu_mul", "attn_prefill_packed": "attn_prefill"}
_NO_SLOWDOWN = (1.0,) * len(CONTENTION_TARGETS)
_MAX_CACHE = 200_000
SMALL_DECODE_CORUNNER = ((256, 1.0202), (2048, 1.0299))
"""(prompt tokens, a prompt's time on a partition beside 2 decodes over its time beside 8) on the
H200 (Llama-3.1-8B, 40 prefill SMs beside 92: 1.597x and 1.566x its time alone at 256 tokens,
1.537x and 1.492x at 2,048; benchmarks/results/h200-pass-contention-batch.json,
`pass_contention.py --cases batch`, c208c36). A prompt lane's table (`_lane_pass_table`) timed
co-runners of 8 decodes and more, and a smaller co-runner read the 8-decode factor: in
servesim's Nexus runs, prompts beside 1-2 decodes on 40 SMs took 4.0 % longer than so priced
(414 passes) and beside 2-4 1.5 % (benchmarks/step_residuals.py). Below the smallest co-runner
the table measured, the factor is raised toward this ratio, linearly in log decodes from 1 at
that co-runner to the full ratio at a quarter of it (8 -> 2) and below, and in log tokens
between 256 and 2,048 (held outside). The factor is raised, not the price (the
operator-composed contention under it falls 0.5-0.7 % from 8 decodes to 2). A profile that times
smaller co-runners reads them instead: the shipped Llama profile has co-runners of 1, 2 and 4
decodes since 7d94c17 (beside 1 decode on 48 SMs a prompt measured 1.56x its time alone, against
1.42x beside 8), so the raise applies to the other three shipped profiles, whose lanes start at 8; co-runners of the larger size classes
(17-32, 33-64 decodes) are not raised (beside 20 and 24 decodes the same benchmark read 1.269x
and 1.241x against 1.266x beside 32)."""
_Curves = tuple[list[float], list[float], bool, list[float], list[list[float]], Callable[[float, float], float] | None]
"""Decode attention at a fixed batch: mean contexts, their interpolation coordinates (logs when
the table's context axis is logarithmic, flagged), skews, per skew per context the time over
the table's structural estimate (OpTable.work), and that estimate as a function of (total
context, longest context) (None: the table has none)."""


class _Priced(NamedTuple):
    """Ops priced together: seconds per contention target class and per co-runner class,
    HBM bytes, and how many lookups fell off the grid."""

    total: float
    by_target: tuple[float, ...]
    by_corunner: tuple[float, ...]
    hbm_bytes: float
    extrapolated: int

    def seconds(self, slowdown: tuple[float, ...] | None = None) -> float:
        if slowdown is None:
            return self.total
        return sum(t * s for t, s in zip(self.by_target, slowdown, strict=True))


def profile_dir(gpu: GpuSpec, arch: ModelArch, path: str | Path | None) -> Path | Traversable:
    """The profile to read: `path`, else the one shipped for (gpu, model)."""
    if path is not None:
        return Path(path)
    shipped = shipped_root().joinpath(gpu.name).joinpath(arch.name)
    if not shipped.joinpath("meta.json").is_file():
        raise InputError(f"no shipped profile for {arch.name} on {gpu.name}: run `servesim profile "
                         f"--model {arch.name}` on that GPU and set cost_model.profile, or use "
                         f"cost_model.kind: roofline")
    return shipped


class ProfiledCostModel:
    """The CostModel protocol over a profile of `arch` on `gpu` (refused for any other)."""

    def __init__(self, arch: ModelArch, gpu: GpuSpec, path: str | Path | None = None,
                 moe_skew: float = 0.0, prompt_passes: str = "auto", gpu_scale: float = 1.0) -> None:
        """`prompt_passes`: "ops" prices a whole-GPU prompt pass as its operators' sum;
        "runtime_graph" scales its prompt layers to the profile's runtime prompt passes timed in
        one graph (`_prompt_pass_table`); "runtime" adds what the runtime's way of issuing them
        adds (`_prompt_issue_table`); "auto": "runtime" where the profile has them, else "ops".
        A profile without them is refused for "runtime" and "runtime_graph". `gpu_scale`:
        every time the profile holds times this (`cost_model.gpu_scale`)."""
        self.arch, self.gpu, self.moe_skew = arch, gpu, moe_skew
        self.profile = Profile(profile_dir(gpu, arch, path), arch, gpu, gpu_scale)
        self.extrapolated = 0
        self.fixed_s = self.profile.ops["iteration_fixed"].scalar
        self._groups: dict[tuple[int, ...], _Priced] = {}
        self._decode: dict[tuple[int, int, int], _Curves | None] = {}
        self._slowdowns: dict[tuple[Corunner, int], tuple[tuple[float, ...], int]] = {}
        self._in_pass: _InPass | None = None
        self._lane: _LanePass | None = None
        self._beside: _LanePass | None = None
        self._prompt: _PromptPass | None = None
        self._issue: _PromptPass | None = None
        self.graph_rows: tuple[int, ...] = ()
        """Row counts of the graphs that replay whole decode-only passes (set by the engine's
        wrapper, `servesim.runner`): such a pass runs at the smallest that holds it, reads the
        in-pass factor there (`_factor_rows`) and launches decode attention on its padding rows
        too. () = at its batch (the profile's passes: the in-pass factors are read with none)."""
        self._in_pass = self._in_pass_table()
        self._lane = self._lane_pass_table()
        self._beside = self._beside_table()
        issue = self._prompt_issue_table()
        if prompt_passes == "auto":
            prompt_passes = "runtime" if issue is not None else "ops"
        self.prompt_passes = prompt_passes
        if prompt_passes in ("runtime_graph", "runtime"):
            self._prompt = self._prompt_pass_table()  # over the operators' sum: before the overhead is set
            self._issue = issue if prompt_passes == "runtime" else None
            if self._prompt is None or (prompt_passes == "runtime" and self._issue is None):
                raise InputError(f"cost_model.prompt_passes: {prompt_passes}, but the profile of {arch.name} on "
                                 f"{gpu.name} has no runtime prompt passes: run `servesim profile --model "
                                 f"{arch.name} --runtime-passes-only` into it")
        elif prompt_passes != "ops":
            raise ValueError(f"prompt_passes={prompt_passes!r}: auto, ops, runtime or runtime_graph")

    def _in_pass_table(self) -> _InPass | None:
        """The profile's whole decode-only passes (`passes`) over the same passes priced
        operator by operator: what the operators of a pass cost inside it, relative to their
        sum timed one by one, on the whole GPU and on each partition measured. None for a
        profile without a complete whole-GPU `passes` grid; a partition's grid that is not
        complete, or on other batches and contexts than the whole GPU's, is left out."""
        rows = self.profile.tables.get("passes")
        if rows is None:
            return None
        rows = rows.dropna(subset=["median_us"])
        rows = rows[(rows.num_decodes > 0) & (rows.prefill_tokens.astype(str).str.strip() == "")]
        if "corunner_prompt" in rows:  # beside a prompt: _beside_table's
            rows = rows[rows.corunner_prompt.fillna(0) == 0]
        whole = self.gpu.num_sms
        sms_of = rows.sms.fillna(whole).astype(int) if "sms" in rows else pd.Series(whole, index=rows.index)
        counted = self.extrapolated
        grid = self._in_pass_grid(rows[sms_of == whole], whole)
        if grid is None:
            self.extrapolated = counted
            return None
        batches, contexts, _ = grid
        levels = {whole: grid[2]}
        # a partition's rows on the whole GPU's grid (decode passes timed alone for the
        # decode-beside-prompt grid are other shapes: _beside_table's)
        on_grid = rows.num_decodes.isin(batches) & \
            (rows.decode_context / rows.num_decodes).round().astype(int).isin(contexts)
        for sms in sorted(set(sms_of) - {whole}):
            part = self._in_pass_grid(rows[(sms_of == sms) & on_grid], sms)
            if part is not None and part[0] == batches and part[1] == contexts:
                levels[sms] = part[2]
        self.extrapolated = counted
        return _InPass(batches, contexts, levels, whole)

    def _lane_pass_table(self) -> _LanePass | None:
        """The profile's prompt-only passes on partitions (`passes` rows with one prompt, no
        decodes and fewer SMs than the GPU's), alone and beside a decode-only co-runner, over
        the same passes priced operator by operator (with the operator table's contention).
        None for a profile without them."""
        rows = self.profile.tables.get("passes")
        if rows is None or "corunner_decodes" not in rows:
            return None
        prompt = rows.prefill_tokens.astype(str).str.strip()
        rows = rows[(prompt != "") & ~prompt.str.contains(" ") & (rows.num_decodes == 0)]

        def priced(r: dict[str, Any], sms: int) -> float:
            n = int(r["corunner_decodes"] or 0)
            corunner = Corunner(BatchShape(num_decodes=n, decode_context=int(r["corunner_context"]),
                                           max_decode_context=int(r["corunner_context"]) // n, num_logits=n),
                                int(r["corunner_sms"])) if n else None
            return self._total(BatchShape((int(r["prefill_tokens"]),), (0,), num_logits=1), sms, corunner)

        return self._lane_levels(rows, "prefill_tokens", "corunner_decodes", priced, alone_measured=True,
                                 co_classes=GEMM_ROW_CLASSES, small_corunner=SMALL_DECODE_CORUNNER)

    def _beside_table(self) -> _LanePass | None:
        """The profile's decode-only passes on partitions beside a looping prompt (`passes`
        rows with `corunner_prompt`), over the same passes priced operator by operator with the
        operator table's contention and the in-pass factor. Where the profile also timed each
        such pass alone on its partition, the factor carries the measured slowdown (beside /
        alone) onto the price alone; a profile without those rows sets the price beside to
        the time measured beside. None for a profile without them."""
        rows = self.profile.tables.get("passes")
        if rows is None or "corunner_prompt" not in rows:
            return None
        rows = rows[(rows.num_decodes > 0) & (rows.prefill_tokens.astype(str).str.strip() == "")
                    & rows.sms.notna() & (rows.sms < self.gpu.num_sms)]
        shape = pd.MultiIndex.from_frame(rows[["sms", "num_decodes", "decode_context"]].astype(int))
        beside = (rows.corunner_prompt.fillna(0) > 0).to_numpy()
        rows = rows[beside | shape.isin(shape[beside])]  # those passes, beside and alone

        alone = bool((rows.corunner_prompt.fillna(0) == 0).any())

        def priced(r: dict[str, Any], sms: int) -> float:
            n = int(r["num_decodes"])
            decode = BatchShape(num_decodes=n, decode_context=int(r["decode_context"]),
                                max_decode_context=int(r["max_decode_context"]), num_logits=n)
            q = int(r["corunner_prompt"])
            prompt = Corunner(BatchShape((q,), (0,), num_logits=1), int(r["corunner_sms"])) if q and not alone else None
            return self._total(decode, sms, prompt)

        return self._lane_levels(rows, "num_decodes", "corunner_prompt", priced, alone_measured=alone,
                                 relative=alone)

    def _runtime_prompts(self, method: str) -> dict[int, float]:
        """Prompt length -> seconds of the profile's runtime prompt passes of `method` on the
        whole GPU (`passes` rows written by servesim.profiler.runtime_passes); {} without them."""
        rows = self.profile.tables.get("passes")
        if rows is None:
            return {}
        rows = rows.dropna(subset=["median_us"])
        rows = rows[(rows.method.astype(str) == method) & (rows.num_decodes == 0)
                    & (rows.sms.fillna(self.gpu.num_sms) == self.gpu.num_sms)]
        return {int(q): float(us) * 1e-6 for q, us in zip(rows.prefill_tokens, rows.median_us, strict=True)}

    def _prompt_pass_table(self) -> _PromptPass | None:
        """The runtime's whole prompt passes on the whole GPU, timed in serving's context in one
        graph (`runtime_graph`), over the same passes priced operator by operator. None for a
        profile without them."""
        measured = sorted(self._runtime_prompts("runtime_graph").items())
        if not measured:
            return None
        counted = self.extrapolated
        factors = []
        for q, seconds in measured:  # the factor of the prompt's layers (the ends as priced)
            layers = self._prompt_layers_s(BatchShape((q,), (0,), num_logits=1))
            whole = self._total(BatchShape((q,), (0,), num_logits=1), self.gpu.num_sms, None)
            factors.append((seconds - whole + layers) / layers)
        self.extrapolated = counted
        return _PromptPass([q for q, _ in measured], factors)

    def _prompt_issue_table(self) -> _PromptPass | None:
        """What the runtime's way of issuing a prompt pass (piecewise graphs with the attention
        launched between them up to its graph size, every kernel launched above it) adds to the
        same pass in one graph: `runtime_served` less `runtime_graph` at each length (seconds).
        None without both."""
        served, graph = self._runtime_prompts("runtime_served"), self._runtime_prompts("runtime_graph")
        tokens = sorted(set(served) & set(graph))
        if not tokens:
            return None
        return _PromptPass(tokens, [served[q] - graph[q] for q in tokens])

    @property
    def issues_prompts(self) -> bool:
        """Prompt passes, on the whole GPU or a partition, are priced with the runtime's issue
        overhead (the host model's launch gaps then leave their prompt out)."""
        return self._issue is not None

    def _prompt_layers_s(self, batch: BatchShape) -> float:
        """The prompt's layers of a pass on the whole GPU, priced operator by operator."""
        parts = self._parts(batch, self.gpu.num_sms)
        return sum(times * g.total for times, g in parts[1:1 + self._prompt_parts(batch)])

    def _lane_levels(self, rows: pd.DataFrame, size: str, co_size: str,
                     priced: Callable[[dict[str, Any], int], float], alone_measured: bool,
                     relative: bool = False, co_classes: tuple[int, ...] = (),
                     small_corunner: tuple[tuple[int, float], ...] = ()) -> _LanePass | None:
        """Measured / priced per SM count below the whole GPU, on a (size x co-runner size)
        grid; co-runner size 0 (alone) is measured or, without `alone_measured`, 1. With
        `relative`, each size's factors are divided by its factor alone: the pass beside a
        co-runner then costs its price alone times the slowdown measured. An SM count whose
        grid is not complete is left out; pricing here leaves `extrapolated` as it was. A
        relative table's factors are measured slowdowns: they scale the price without the
        operator table's contention (`_composed`). With `co_classes`, a co-runner reads the grid
        within its size class only (`_LanePass._columns`), and with `small_corunner` a co-runner
        below the smallest measured is raised toward that ratio (SMALL_DECODE_CORUNNER)."""
        rows = rows.dropna(subset=["median_us", "sms"])
        rows = rows[rows.sms < self.gpu.num_sms]
        rows = rows.assign(**{co_size: rows[co_size].fillna(0)})
        counted = self.extrapolated
        levels: dict[int, tuple[list[int], list[int], list[list[float]]]] = {}
        for sms, at in rows.groupby(rows.sms.astype(int)):
            records = [{str(k): v for k, v in r.items()} for r in at.to_dict("records")]
            sizes = sorted({int(r[size]) for r in records})
            measured = sorted({int(r[co_size]) for r in records})
            co_sizes = measured if alone_measured else [0, *measured]
            if len(records) != len(sizes) * len(measured) or 0 not in co_sizes:
                continue
            factors = [[1.0] * len(co_sizes) for _ in sizes]
            for r in records:
                factors[sizes.index(int(r[size]))][co_sizes.index(int(r[co_size]))] = \
                    float(r["median_us"]) * 1e-6 / priced(r, int(sms))
            if relative:
                factors = [[f / row[0] for f in row] for row in factors]
            levels[int(sms)] = (sizes, co_sizes, factors)
        self.extrapolated = counted
        return _LanePass(levels, self.gpu.num_sms, relative, co_classes, small_corunner) if levels else None

    def _in_pass_grid(self, rows: pd.DataFrame, sms: int) -> tuple[list[int], list[int], list[list[float]]] | None:
        batches = sorted({int(n) for n in rows.num_decodes})
        contexts = sorted({round(c / n) for c, n in zip(rows.decode_context, rows.num_decodes, strict=True)})
        if len(rows) != len(batches) * len(contexts) or not len(rows) or not 0 < sms <= self.gpu.num_sms:
            return None
        factors = [[math.nan] * len(contexts) for _ in batches]
        columns = (rows.num_decodes.tolist(), rows.decode_context.tolist(), rows.max_decode_context.tolist(),
                   rows.num_logits.tolist(), rows.median_us.tolist())
        for n, ctx, longest, logits, measured_us in zip(*columns, strict=True):
            op_by_op = self.step_time(BatchShape((), (), int(n), int(ctx), int(longest), int(logits)), sms)
            factors[batches.index(int(n))][contexts.index(round(ctx / n))] = float(measured_us) * 1e-6 / op_by_op
        if any(math.isnan(f) for row in factors for f in row):
            return None
        return batches, contexts, factors

    # -- one operator ---------------------------------------------------------------------
    def lookup(self, op: OpSpec) -> tuple[str, tuple[float, ...]]:
        """The table and axis values that price an operator of servesim.models.ops."""
        a, s, kind = self.arch, op.shape, op.kind
        k = max(a.num_experts_per_tok, 1)
        if kind == "gemm":
            return op.name, (s["m"],)
        if kind == "attn_prefill":
            return "attn_prefill", (s["q"], s["prefix"])
        if kind == "attn_decode":
            n, ctx = s["num_decodes"], s["context"]
            mean = ctx / n
            return "attn_decode", (n, mean, s["max_context"] / mean if mean else 1.0)
        if kind == "moe_gemm":
            return op.name, (s["rows"] / k, self.moe_skew)
        if kind == "router":
            return op.name, ((s["tokens"] if "tokens" in s else s["rows"] / k),)
        if kind == "sample":
            return "sample", (s["rows"],)
        per_token = {"qk_norm": a.q_size + a.kv_size, "rope": a.q_size + a.kv_size,
                     "kv_write": 2 * a.kv_size, "embedding": a.hidden_size,
                     "silu_mul": 2 * a.intermediate_size,
                     "shared_silu_mul": 2 * a.shared_expert_intermediate_size,
                     "moe_silu_mul": 2 * k * a.moe_intermediate_size, "moe_combine": k * a.hidden_size}
        return table_for(op.name), (s["read"] / per_token.get(op.name, 2 * a.hidden_size),)

    def table_seconds(self, table: str, x: tuple[float, ...], sms: int | None = None) -> tuple[float, bool]:
        """(seconds, off the grid) of one table lookup on `sms` SMs (None = whole GPU)."""
        if table not in self.profile.ops:
            raise InputError(f"{self.profile.path}: no '{table}' table for this model's operators")
        t, outside = self.profile.ops[table].seconds(x)
        if sms is not None and sms < self.gpu.num_sms:
            ratios = self.profile.ratios.get(_SM_PROXY.get(table, table))
            if ratios is None:
                return t * self.gpu.num_sms / sms, True
            t, below = ratios.seconds_on(x, sms, t)
            outside = outside or below
        return t, outside

    def _op(self, op: OpSpec, sms: int) -> tuple[float, bool]:
        table, x = self.lookup(op)
        return self.table_seconds(table, x, sms)

    # -- groups of operators --------------------------------------------------------------
    def _price(self, ops: list[OpSpec], sms: int, packed: int = 1) -> _Priced:
        by_target, by_corunner = [0.0] * len(CONTENTION_TARGETS), [0.0] * len(CORUNNERS)
        extrapolated = 0
        for op in ops:
            t, outside = self._op(op, sms)
            if op.kind == "attn_prefill" and packed > 1:
                t *= self._packing(op, packed)
            by_target[CONTENTION_TARGETS.index(_target_class(op))] += t
            by_corunner[CORUNNERS.index(_corunner_class(op))] += t
            extrapolated += outside
        return _Priced(sum(by_target), tuple(by_target), tuple(by_corunner),
                       sum(o.hbm_bytes for o in ops), extrapolated)

    def _packing(self, op: OpSpec, chunks: int) -> float:
        """Measured time of `chunks` equal chunks in one launch over chunks x one alone."""
        packed = self.profile.ops.get("attn_prefill_packed")
        q, p = op.shape["q"], op.shape["prefix"]
        if packed is None or packed.grid is None or q > packed.top[0]:
            return 1.0
        together, _ = packed.seconds((q, min(p, packed.top[1]), min(chunks, packed.top[2])))
        alone, _ = self.profile.ops["attn_prefill"].seconds((q, min(p, packed.top[1])))
        return min(1.0, together / (min(chunks, packed.top[2]) * alone))

    def _cached(self, key: tuple[int, ...], sms: int, packed: int = 1) -> _Priced:
        priced = self._groups.get(key)
        if priced is None:
            if len(self._groups) >= _MAX_CACHE:
                self._groups.clear()
            priced = self._groups[key] = self._price(self._group_ops(key), sms, packed)
        return priced

    def _group_ops(self, key: tuple[int, ...]) -> list[OpSpec]:
        arch = self.arch
        if key[0] == 0:
            return model_ops.dense_layer_ops(arch, key[1])
        if key[0] == 1:
            return model_ops.embedding_ops(arch, key[1]) + model_ops.head_ops(arch, key[2], key[3])
        return [model_ops.prefill_attention(arch, key[1], key[2])] if key[1] else []

    def dense_layer_s(self, tokens: int, sms: int | None = None) -> float:
        """One layer's operators but attention, at `tokens` rows, alone on `sms` SMs (what a
        graph padded to more rows than the pass has runs longer; HostOverheadCostModel)."""
        return self._dense(tokens, self._check_sms(sms)).total

    def _dense(self, tokens: int, sms: int) -> _Priced:
        return self._cached((0, tokens, sms), sms)

    def _ends(self, entering: int, leaving: int, logits: int, sms: int) -> _Priced:
        return self._cached((1, entering, leaving, logits, sms), sms)

    def _chunk(self, q: int, prefix: int, chunks: int, sms: int) -> _Priced:
        return self._cached((2, q, prefix, chunks, sms), sms, chunks)

    def _decode_attn(self, batch: BatchShape, sms: int) -> _Priced:
        rows = 0 if batch.prefill_tokens else self._factor_rows(batch.num_decodes)
        t = self._decode_s(batch.num_decodes, batch.decode_context, batch.max_decode_context, sms, rows)
        if t is None:
            return self._price([model_ops.decode_attention(self.arch, batch)], sms)
        return _Priced(t, _one(CONTENTION_TARGETS, "attn_decode", t), _one(CORUNNERS, "decode_attn", t),
                       batch.decode_context * self.arch.kv_bytes_per_token_per_layer, 0)

    def _decode_s(self, n: int, ctx: int, max_ctx: int, sms: int, rows: int = 0) -> float | None:
        """Decode attention inside the grid, from per-(decodes, SMs) curves over the mean
        context (one per skew value): a few bisections, no per-context cache; None outside.
        `rows` > n: launched padded to that many rows (a decode graph's; `decode_estimate`)."""
        key = (n, sms, rows if rows > n else 0)
        if key not in self._decode:
            if len(self._decode) >= _MAX_CACHE:
                self._decode.clear()
            self._decode[key] = self._decode_curves(n, sms, key[2])
        curves = self._decode[key]
        if curves is None or not ctx:
            return None
        mean = ctx / n
        contexts, coords, log_axis, skews, ratios, estimate = curves
        skew = max_ctx / mean
        if not contexts[0] <= mean <= contexts[-1] or skew > skews[-1]:
            return None
        # One bisection for every skew row (they share the context axis).
        if len(contexts) > 1:
            j = min(bisect.bisect_right(contexts, mean) - 1, len(contexts) - 2)
            w = ((math.log(mean) if log_axis else mean) - coords[j]) / (coords[j + 1] - coords[j])
            at = [row[j] + (row[j + 1] - row[j]) * w for row in ratios]
        else:
            at = [row[0] for row in ratios]
        if len(at) == 2:  # the usual two skews, inline (priced at every decode step); skew >= 1
            ratio = at[0] + (at[1] - at[0]) * max(0.0, (skew - skews[0]) / (skews[1] - skews[0]))
        else:
            ratio = lerp(skews, at, skew) if len(skews) > 1 else at[0]
        return ratio * estimate(ctx, max_ctx) if estimate else ratio

    def _decode_curves(self, n: int, sms: int, rows: int = 0) -> _Curves | None:
        table = self.profile.ops["attn_decode"]
        if table.grid is None or not table.grid.axes[0][0] <= n <= table.grid.axes[0][-1]:
            return None
        _, contexts, skews = table.grid.axes
        ratios = [[self.table_seconds("attn_decode", (n, c, s), sms)[0] / table.work((n, c, s)) for c in contexts]
                  for s in skews]
        estimate = kernel_work.decode_estimate(self.arch, self.gpu.num_sms, n, table.scale, rows) \
            if table.scale else None
        log_axis = table.grid.log_axes[1]
        return contexts, [math.log(c) for c in contexts] if log_axis else contexts, log_axis, skews, ratios, estimate

    def decode_stepper(self, n: int, logits: int, sms: int | None) -> Callable[[int, int], float]:
        """step_time of a decode-only batch of `n` sequences as a function of (total context,
        longest context): the executor's fast-forward prices thousands of these in a row, and
        everything but decode attention is the same for all of them. Returns exactly what
        step_time returns (same terms, same order, same extrapolation count)."""
        num_sms = self._check_sms(sms)
        if not n:
            return lambda ctx_sum, ctx_max: 0.0
        ends = self._groups.get((1, n, n, logits, num_sms)) or self._ends(n, n, logits, num_sms)
        dense = self._groups.get((0, n, num_sms)) or self._dense(n, num_sms)
        fixed, layers, ends_s, dense_s = self.fixed_s, self.arch.num_layers, ends.total, dense.total
        base_outside = ends.extrapolated + layers * dense.extrapolated
        in_pass = self._in_pass
        row = in_pass.row(self._factor_rows(n), num_sms) if in_pass else None
        log_ctx = in_pass.log_ctx if in_pass else []

        rows = self._factor_rows(n)

        def step(ctx_sum: int, ctx_max: int) -> float:
            attn_s = self._decode_s(n, ctx_sum, ctx_max, num_sms, rows)
            if attn_s is None:
                return self.step_time(BatchShape((), (), n, ctx_sum, ctx_max, logits), sms)
            if base_outside:
                self.extrapolated += base_outside
            total = fixed + ends_s + layers * (dense_s + attn_s)
            return total * _interp(log_ctx, row, math.log(max(ctx_sum / n, 1.0))) if row else total

        return step

    # -- the protocol ---------------------------------------------------------------------
    def step_time(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> float:
        num_sms = self._check_sms(sms)
        if corunner is None and not batch.prefill_tokens:
            n = batch.num_decodes
            if not n:
                return 0.0
            ends = self._groups.get((1, n, n, batch.num_logits, num_sms)) or self._ends(n, n, batch.num_logits, num_sms)
            dense = self._groups.get((0, n, num_sms)) or self._dense(n, num_sms)
            layers, rows = self.arch.num_layers, self._factor_rows(n)
            attn_s = self._decode_s(n, batch.decode_context, batch.max_decode_context, num_sms, rows)
            if attn_s is None:
                attn = self._decode_attn(batch, num_sms)
                attn_s = attn.total
                self.extrapolated += layers * attn.extrapolated
            if ends.extrapolated or dense.extrapolated:
                self.extrapolated += ends.extrapolated + layers * dense.extrapolated
            total = self.fixed_s + ends.total + layers * (dense.total + attn_s)
            return total * self._in_pass.factor(rows, batch.decode_context / n, num_sms) \
                if self._in_pass else total
        total = self._total(batch, num_sms, corunner)
        if corunner is None or corunner.batch.is_empty:
            return total
        # A co-runner never speeds a pass up; a factor measured beside one can still price it
        # below the pass alone where the alone factor is interpolated (32 decodes of 2k on 68
        # SMs: alone +12 % from the 64- and 96-SM passes, beside on the grid measured).
        return max(total, self.step_time(batch, num_sms))

    def _parts(self, batch: BatchShape, sms: int) -> list[tuple[int, _Priced]]:
        """(times, group) of the pass: ends, prefill layers (`_prompt_parts` of them), decode-only
        layers."""
        layers, n = self.arch.num_layers, batch.num_decodes
        start, end = (batch.prefill_layers or (0, layers)) if batch.prefill_tokens else (0, 0)
        if not 0 <= start <= end <= layers:
            raise ValueError(f"prefill_layers {batch.prefill_layers} outside 0..{layers}")
        entering, leaving = model_ops.boundary_tokens(self.arch, batch)
        parts = [(1, self._ends(entering, leaving, batch.num_logits, sms))]
        attn = [self._decode_attn(batch, sms)] if n else []
        if end > start:
            chunks = len(batch.prefill_tokens)
            attn_p = [self._chunk(q, p, chunks, sms) for q, p in zip(batch.prefill_tokens, batch.prefill_prefix, strict=True)]
            parts += [(end - start, g) for g in [self._dense(batch.num_prefill_tokens + n, sms), *attn_p, *attn]]
        if n and layers - (end - start):
            parts += [(layers - (end - start), g) for g in [self._dense(n, sms), *attn]]
        return parts

    @staticmethod
    def _prompt_parts(batch: BatchShape) -> int:
        """How many of `_parts`' entries after the ends are the prompt's layers."""
        start, end = batch.prefill_layers or (0, 1)
        if not batch.prefill_tokens or end <= start:
            return 0
        return 1 + len(batch.prefill_tokens) + (batch.num_decodes > 0)

    def _total(self, batch: BatchShape, sms: int, corunner: Corunner | None) -> float:
        if batch.is_empty:
            return 0.0
        slowdown, fallback = self._slowdown(self._composed(batch, sms, corunner), sms)
        parts = self._parts(batch, sms)
        self.extrapolated += sum(times * g.extrapolated for times, g in parts) + fallback
        priced = [times * g.seconds(slowdown) for times, g in parts]
        rows = batch.num_prefill_tokens + batch.num_decodes
        if self._prompt_applies(batch, sms):
            assert self._prompt is not None
            # The prompt's layers as the runtime's whole prompt passes run them (their rows:
            # the prompt's tokens and the decodes that share its GEMMs).
            factor = self._prompt.at(rows)
            prompt = slice(1, 1 + self._prompt_parts(batch))
            priced[prompt] = [t * factor for t in priced[prompt]]
        total = (self.fixed_s + sum(priced)) * self._pass_factor(batch, sms, corunner)
        if self._issue is not None and batch.prefill_tokens:
            # What the runtime's way of issuing a prompt pass adds, over the prompt's layers: on
            # a partition too, whose lane table holds passes captured whole, as the whole GPU's
            # one-graph passes are.
            start, end = batch.prefill_layers or (0, self.arch.num_layers)
            total += self._issue.at(rows) * (end - start) / self.arch.num_layers
        return total

    def _prompt_applies(self, batch: BatchShape, sms: int) -> bool:
        """A pass with a prompt on the whole GPU, with a table of the runtime's prompt passes."""
        return self._prompt is not None and bool(batch.prefill_tokens) and sms >= self.gpu.num_sms

    def _pass_factor(self, batch: BatchShape, sms: int, corunner: Corunner | None = None) -> float:
        """The in-pass factor of a decode-only pass on `sms` SMs, or of a prompt-only pass on a
        partition (beside `corunner`); 1 for any other pass."""
        if batch.prefill_tokens:
            if self._lane is None or batch.num_decodes or sms >= self.gpu.num_sms:
                return 1.0
            beside = corunner.batch.num_decodes if corunner is not None and not corunner.batch.prefill_tokens else 0
            return self._lane.factor(batch.num_prefill_tokens, sms, beside)
        if not batch.num_decodes:
            return 1.0
        factor = 1.0 if self._in_pass is None else \
            self._in_pass.factor(self._factor_rows(batch.num_decodes), batch.decode_context / batch.num_decodes, sms)
        if self._beside_applies(batch, sms, corunner):
            assert self._beside is not None and corunner is not None
            factor *= self._beside.factor(batch.num_decodes, sms, corunner.batch.num_prefill_tokens)
        return factor

    def _factor_rows(self, n: int) -> int:
        """The batch whose in-pass factor prices a decode-only pass of `n` sequences: the row
        count of the graph that replays it (`graph_rows`), else `n`."""
        i = bisect.bisect_left(self.graph_rows, n)
        return self.graph_rows[i] if i < len(self.graph_rows) else n

    def _beside_applies(self, batch: BatchShape, sms: int, corunner: Corunner | None) -> bool:
        """A decode-only pass on a partition beside a prompt-only pass, with a beside table."""
        return self._beside is not None and corunner is not None and sms < self.gpu.num_sms \
            and not batch.prefill_tokens and batch.num_decodes > 0 \
            and bool(corunner.batch.prefill_tokens) and not corunner.batch.num_decodes

    def _composed(self, batch: BatchShape, sms: int, corunner: Corunner | None) -> Corunner | None:
        """The co-runner whose contention the operator table composes: none where a relative
        beside table's measured slowdown prices the pass instead."""
        if self._beside is not None and self._beside.relative and self._beside_applies(batch, sms, corunner):
            return None
        return corunner

    def _slowdown(self, corunner: Corunner | None, sms: int) -> tuple[tuple[float, ...], int]:
        """Per target class: 1 + sum over co-runner classes of (time share x (slowdown - 1))."""
        if corunner is None or corunner.batch.is_empty:
            return _NO_SLOWDOWN, 0
        cached = self._slowdowns.get((corunner, sms))
        if cached is None:
            other = self._check_sms(corunner.sms)
            parts = self._parts(corunner.batch, other)
            by_class = [sum(t * g.by_corunner[i] for t, g in parts) for i in range(len(CORUNNERS))]
            total = sum(by_class) or 1.0
            demand = min(1.0, sum(t * g.hbm_bytes for t, g in parts) / total / self.gpu.hbm_bytes_per_s)
            out, missing = [], 0
            for target in CONTENTION_TARGETS:
                extra = 0.0
                for cls, secs in zip(CORUNNERS, by_class, strict=True):
                    curve = self.profile.contention.get((target, cls))
                    missing += curve is None and secs > 0
                    s = lerp(*curve, float(sms)) if curve else 1.0 + CORUN_BASE + CORUN_PER_DEMAND * demand
                    extra += secs / total * (s - 1.0)
                out.append(1.0 + extra)
            cached = self._slowdowns[(corunner, sms)] = (tuple(out), missing)
        return cached

    def batch_cost(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> BatchCost:
        """Every op priced as step_time prices it; total_s is step_time's (plus the fixed
        per-iteration cost as an op after the last layer)."""
        num_sms, layers = self._check_sms(sms), self.arch.num_layers
        slowdown, _ = self._slowdown(self._composed(batch, num_sms, corunner), num_sms)
        out: list[OpCost] = []
        extrapolated = 0
        chunks = len(batch.prefill_tokens)
        for layer, op in model_ops.forward_ops(self.arch, batch):
            if op.kind == "attn_decode":  # the same curves as step_time's
                priced = self._decode_attn(batch, num_sms)
                t, outside = priced.total, priced.extrapolated > 0
            else:
                t, outside = self._op(op, num_sms)
            if op.kind == "attn_prefill" and chunks > 1:
                t *= self._packing(op, chunks)
            t *= slowdown[CONTENTION_TARGETS.index(_target_class(op))]
            extrapolated += outside
            out.append(OpCost(layer, op.name, t, op.flops, op.hbm_bytes))
        if out:
            out.append(OpCost(layers, "iteration_fixed", self.fixed_s, 0.0, 0.0))
        factor = self._pass_factor(batch, num_sms, corunner)
        total = self.step_time(batch, sms, corunner)
        op_sum = factor * sum(c.seconds for c in out)
        if op_sum > 0 and (total > op_sum or self._prompt_applies(batch, num_sms)):
            # step_time's floor at the pass alone; the prompt's layers' factor (spread evenly)
            factor *= total / op_sum
        if factor != 1.0:
            out = [dataclasses.replace(c, seconds=c.seconds * factor) for c in out]
        layer_s = [0.0] * layers
        for c in out:
            if 0 <= c.layer < layers:
                layer_s[c.layer] += c.seconds
        specs = [op for _, op in model_ops.forward_ops(self.arch, batch)]
        return BatchCost(total, tuple(layer_s), tuple(out),
                         sum(o.flops for o in specs), sum(o.hbm_bytes for o in specs),
                         sum(o.weight_bytes for o in specs if o.kind == "moe_gemm"), extrapolated)

    def _check_sms(self, sms: int | None) -> int:
        num_sms = self.gpu.num_sms if sms is None else sms
        if 0 < num_sms <= self.gpu.num_sms:
            return num_sms
        raise ValueError(f"sms={sms} outside 1..{self.gpu.num_sms} on {self.gpu.name}")


class _PromptPass:
    """A value per prompt length measured on whole-GPU prompt passes (a factor over their
    operators' sum, or seconds the runtime's issue adds): linear in the log of the tokens
    between the lengths measured, held outside."""

    def __init__(self, tokens: list[int], values: list[float]) -> None:
        self.tokens, self.factors = tokens, values
        self.log_q = [math.log(q) for q in tokens]

    def at(self, tokens: int) -> float:
        return _interp(self.log_q, self.factors, math.log(max(tokens, 1)))


class _InPass:
    """Factors on a (decodes x mean context) grid per SM count, bilinear in the logs of both,
    held at the grid's edges, and linear in the SM count between the counts measured. Below the
    smallest partition measured its factors hold; a profile whose passes ran on the whole GPU
    only prices a partition's pass at its operators' sum (factor 1: Nexus's decode passes on
    52-92 SMs measured within 5 % of it, where the whole GPU's factor made them 12-16 % fast).
    Per (batch size, SM count) the context row is interpolated once and kept."""

    def __init__(self, batches: list[int], contexts: list[int], factors: dict[int, list[list[float]]],
                 whole_sms: int) -> None:
        self.batches, self.factors, self.whole_sms = batches, factors, whole_sms
        self.sms = sorted(factors)
        self.log_n = [math.log(n) for n in batches]
        self.log_ctx = [math.log(c) for c in contexts]
        self._rows: dict[tuple[int, int], list[float]] = {}

    def row(self, n: int, sms: int) -> list[float]:
        """The factors of `n` decodes on `sms` SMs over the context grid."""
        row = self._rows.get((n, sms))
        if row is None:
            row = self._rows[(n, sms)] = self._row(n, sms)
        return row

    def _row(self, n: int, sms: int) -> list[float]:
        def at(level: int) -> list[float]:
            return [_interp(self.log_n, col, math.log(n)) for col in zip(*self.factors[level], strict=True)]

        if sms >= self.whole_sms:
            return at(self.whole_sms)
        below = [s for s in self.sms if s <= sms]
        above = [s for s in self.sms if s > sms]
        if not below:
            return at(above[0]) if above[0] < self.whole_sms else [1.0] * len(self.log_ctx)
        lo, hi = below[-1], above[0]
        if lo == sms:
            return at(lo)
        w = (sms - lo) / (hi - lo)
        return [a + (b - a) * w for a, b in zip(at(lo), at(hi), strict=True)]

    def factor(self, n: int, mean_context: float, sms: int) -> float:
        return _interp(self.log_ctx, self.row(n, sms), math.log(max(mean_context, 1.0)))


class _LanePass:
    """Factors of whole passes on partitions: per SM count measured, a grid over the pass's
    size (prompt tokens, or decodes) x the co-runner's size (its decodes, or prompt tokens; 0:
    alone), bilinear in log size and log(1 + co-runner size), held at its edges; with
    `co_classes`, a co-runner reads only the columns of its size class (`_columns`). Between SM
    counts measured: linear in SMs; below the smallest, held; above the largest, linear to 1 at
    the whole GPU (no co-runner there)."""

    def __init__(self, levels: dict[int, tuple[list[int], list[int], list[list[float]]]], whole_sms: int,
                 relative: bool = False, co_classes: tuple[int, ...] = (),
                 small_corunner: tuple[tuple[int, float], ...] = ()) -> None:
        self.whole_sms, self.relative, self.co_classes = whole_sms, relative, co_classes
        self.small_corunner = ([math.log(q) for q, _ in small_corunner], [r for _, r in small_corunner])
        self.sms = sorted(levels)
        self.co_sizes = {sms: ns for sms, (_, ns, _) in levels.items()}
        self.levels = {sms: ([math.log(q) for q in qs], [math.log1p(n) for n in ns], grid)
                       for sms, (qs, ns, grid) in levels.items()}

    def _columns(self, sms: int, co_size: int) -> list[int]:
        """The grid's co-runner columns that price a co-runner of `co_size`: all of them; with
        `co_classes`, a co-runner (size > 0) reads only the measured sizes of its own class (the
        sizes up to the same boundary), else the nearest measured size."""
        sizes = self.co_sizes[sms]
        if not self.co_classes or co_size <= 0:
            return list(range(len(sizes)))

        def cls(n: int) -> int:
            return bisect.bisect_left(self.co_classes, n)

        same = [j for j, n in enumerate(sizes) if n > 0 and cls(n) == cls(co_size)]
        if same:
            return same
        beside = [j for j, n in enumerate(sizes) if n > 0]
        if not beside:
            return list(range(len(sizes)))
        return [min(beside, key=lambda j: abs(math.log(sizes[j]) - math.log(co_size)))]

    def _at(self, sms: int, tokens: int, decodes: int) -> float:
        log_q, log_n, grid = self.levels[sms]
        use = self._columns(sms, decodes)
        column = [_interp([log_n[j] for j in use], [row[j] for j in use], math.log1p(decodes)) for row in grid]
        return _interp(log_q, column, math.log(max(tokens, 1))) * self._small(sms, tokens, decodes)

    def _small(self, sms: int, tokens: int, decodes: int) -> float:
        """SMALL_DECODE_CORUNNER's raise for a co-runner below the smallest measured."""
        log_q, ratios = self.small_corunner
        smallest = min((n for n in self.co_sizes[sms] if n > 0), default=0)
        if not ratios or not 0 < decodes < smallest:
            return 1.0
        weight = min(1.0, math.log(smallest / decodes) / math.log(4))
        return 1.0 + (_interp(log_q, ratios, math.log(max(tokens, 1))) - 1.0) * weight

    def factor(self, tokens: int, sms: int, decodes: int) -> float:
        below = [s for s in self.sms if s <= sms]
        above = [s for s in self.sms if s > sms]
        if not below:
            return self._at(above[0], tokens, decodes)
        lo = below[-1]
        if lo == sms:
            return self._at(lo, tokens, decodes)
        hi, f_hi = (above[0], self._at(above[0], tokens, decodes)) if above else (self.whole_sms, 1.0)
        w = (sms - lo) / (hi - lo)
        f_lo = self._at(lo, tokens, decodes)
        return f_lo + (f_hi - f_lo) * w


def _interp(xs: list[float], ys: list[float] | tuple[float, ...], x: float) -> float:
    """Piecewise linear, held at the ends."""
    if x <= xs[0] or len(xs) == 1:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x) - 1
    return ys[j] + (ys[j + 1] - ys[j]) * (x - xs[j]) / (xs[j + 1] - xs[j])


def _one(classes: tuple[str, ...], name: str, seconds: float) -> tuple[float, ...]:
    return tuple(seconds if c == name else 0.0 for c in classes)


def _rows(op: OpSpec) -> float:
    return op.shape.get("m", op.shape.get("rows", op.shape.get("tokens", op.shape.get("read", 0.0))))


def _target_class(op: OpSpec) -> str:
    if op.kind in ("attn_decode", "attn_prefill"):
        return op.kind
    if op.kind in ("gemm", "moe_gemm"):
        return "gemm_small" if _rows(op) <= SMALL_GEMM_ROWS else "gemm_large"
    return "elementwise"


def _corunner_class(op: OpSpec) -> str:
    if op.kind == "attn_decode":
        return "decode_attn"
    if op.kind == "attn_prefill":
        return "prefill_attn"
    rows = _rows(op) if op.kind in ("gemm", "moe_gemm") else op.hbm_bytes / 8192
    return "decode_gemm" if rows <= SMALL_GEMM_ROWS else "prefill_gemm"
