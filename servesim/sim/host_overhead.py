"""Host-bound iterations: an engine cannot issue work faster than its host loop runs. This
wrapper adds that to any cost model:

    iteration = host_step_s + host_per_seq_s x sequences
                + max(gpu time + launches x host_gap_s, launches x host_launch_s)

host_step_s (plus host_per_seq_s for each sequence of the batch: block tables, inputs, token
bookkeeping) is the scheduler, input preparation and bookkeeping around a pass (the GPU idles);
the GPU starts as soon as the first kernel is issued, so issuing and executing overlap and the
slower of the two sets the pace. What the host launches depends on the engine: eagerly, every
kernel of the pass; with piecewise CUDA graphs (`graph_max_tokens`: passes up to that many
tokens, as servesim's runtime and vLLM capture them), two graph replays per layer plus the
attention kernels, whose shapes follow the batch, plus a few per pass; with full decode graphs
(`graph_max_decodes`: decode-only passes of up to that many sequences, as vLLM replays uniform
decode batches), one replay and the copies of the step's inputs: those copies are issued before
the replay, so the host's time to issue them (host_graph_issue_s) comes before the GPU's work
instead of overlapping it. The constants are
measured on the engine being modelled (benchmarks/runtime_overhead.py measures servesim's
runtime). In a graphed pass the GPU also idles briefly at each launch from the host (a graph
replay handing over to an attention kernel and back): host_gap_s per launch, on top of the
inner model's time for the pass as one graph. The op breakdown of `batch_cost` is stretched
uniformly to the total. An engine that runs a pass block by block and asks the policy at each
preemption point (FlowPrefill) spends host_check_s there; servesim's runtime decides on the next
block while the GPU runs the current one, so the operator executor charges each block the
longer of its GPU time (with its share of the gaps) and the host's work for it (its share of
the launches plus the check). Graphs are captured at a few row counts (`graph_sizes`): a graphed
pass runs its graphed operators on the padding rows up to the next one too (`padding_s`).
"""

from __future__ import annotations

import bisect
import dataclasses

from servesim.models import ops as model_ops
from servesim.models.arch import ModelArch
from servesim.models.shapes import BatchCost, BatchShape, Corunner
from servesim.sim.cost_model import CostModel

FULL_DECODE_LAUNCHES = 11
"""What the host issues for a decode-only pass replayed whole from one graph (servesim's
runtime, `RuntimeModel._full_decode`): ids, positions and KV slots into the graph's rows and
the padding rows' slots and positions reset (5), block tables and contexts copied in, the
padding rows' contexts set, the split size (4), the replay, and sampling."""

CONTENTION_DUTY_EXPONENT = 1.6
"""A pass's excess time beside a co-runner, over its time alone, scales as the co-runner's duty
to this power. Measured on the H200 (benchmarks/pass_contention.py --cases paced, result
benchmarks/results/h200-pass-contention-paced.json): prompts of 256 and 2,048 tokens on 48 SMs
beside 8 or 32 decodes that pause 0.4-2 ms after each pass; the least-squares exponent over
the nine paced rows is 1.64 (1.7-2.0 for the long prompt, 1.4-1.6 for the short one). A
co-runner that pauses also lets the clock recover and its memory traffic come in bursts the
other lane's kernels partly hide, so the excess falls faster than the share of time it runs."""


class HostOverheadCostModel:
    """`inner` plus the host's launch and step costs."""

    def __init__(self, inner: CostModel, arch: ModelArch, host_launch_s: float, host_step_s: float,
                 graph_max_tokens: int = 0, num_sms: int = 132, host_per_seq_s: float = 0.0,
                 host_check_s: float = 0.0, host_gap_s: float = 0.0, graph_max_decodes: int = 0,
                 host_graph_issue_s: float = 0.0, host_check_per_seq_s: float = 0.0,
                 graph_sizes: tuple[int, ...] = ()) -> None:
        self.inner, self.arch = inner, arch
        self.graph_sizes = graph_sizes
        """Row counts the graphs are captured at: a graphed pass runs at the smallest that holds
        it (`padding_s`); () = every size."""
        self.graph_max_decodes = graph_max_decodes
        """Decode-only passes of up to this many sequences replay one graph of the whole pass."""
        self.host_graph_issue_s = host_graph_issue_s
        """The host's time to issue such a pass (inputs' copies, replay), ahead of its GPU work."""
        self.host_gap_s = host_gap_s
        """GPU idle per host launch of a graphed pass, beyond the inner model's whole-pass time."""
        self.host_launch_s, self.host_step_s, self.host_per_seq_s = host_launch_s, host_step_s, host_per_seq_s
        self.host_check_s, self.host_check_per_seq_s = host_check_s, host_check_per_seq_s
        """Per preemption point of an operator-level pass, plus per running sequence (the
        policy's scan for due decodes); the operator executor adds them."""
        self.graph_max_tokens, self.num_sms = graph_max_tokens, num_sms
        self._launches: dict[tuple[bool, bool, int, int], int] = {}
        self._duty: dict[Corunner, float] = {}

    def launches(self, batch: BatchShape) -> int:
        """What the host issues for one pass: graph replays and attention kernels when the pass
        is captured, else every kernel."""
        if self.full_graph(batch):
            return FULL_DECODE_LAUNCHES
        if 0 < batch.num_tokens <= self.graph_max_tokens:
            return self.graphed_launches(batch)
        return self.eager_launches(batch)

    def full_graph(self, batch: BatchShape) -> bool:
        """A decode-only pass the engine replays whole from one graph."""
        return not batch.prefill_tokens and 0 < batch.num_decodes <= self.graph_max_decodes \
            and 0 < batch.num_tokens <= self.graph_max_tokens

    def graphed_launches(self, batch: BatchShape) -> int:
        """Per layer that has rows: 2 replays, the varlen prefill attention if the cohort is
        in it, decode attention (a second, merging kernel when the context is split); per pass:
        the inputs' copies into the static buffers (5), final norm, row gather, LM head and
        sampling (4)."""
        num_layers = self.arch.num_layers
        start, end = batch.prefill_layers or (0, num_layers)
        prefill_layers = (end - start) if batch.prefill_tokens else 0
        decode = 0
        if batch.num_decodes:
            decode = 1 + (self.decode_splits(batch) > 1)
        layers_with_rows = num_layers if batch.num_decodes else prefill_layers
        return 2 * layers_with_rows + prefill_layers + decode * num_layers + 9

    def decode_splits(self, batch: BatchShape) -> int:
        """The split count servesim's decode attention picks (kernels.decode_num_splits):
        about two programs per SM, >= 256 tokens per split, at most 64."""
        programs = max(1, batch.num_decodes * self.arch.num_kv_heads)
        want = -(-2 * self.num_sms // programs)
        return max(1, min(want, batch.max_decode_context // 256, 64))

    def eager_launches(self, batch: BatchShape) -> int:
        """Kernels one eager pass launches: every op of the op list, with the prefill chunks'
        attention in one varlen kernel per layer (as servesim's runtime and vLLM launch it)."""
        start, end = batch.prefill_layers or (0, self.arch.num_layers)
        key = (bool(batch.prefill_tokens), batch.num_decodes > 0, start, end)
        count = self._launches.get(key)
        if count is None:
            probe = BatchShape((1,) if key[0] else (), (0,) if key[0] else (),
                               1 if key[1] else 0, 1 if key[1] else 0, 1 if key[1] else 0,
                               1, batch.prefill_layers)
            count = self._launches[key] = len(model_ops.forward_ops(self.arch, probe))
        return count

    def step_time(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> float:
        gpu_s = self.gpu_s(batch, sms, corunner)
        if batch.is_empty:
            return gpu_s
        if self.full_graph(batch):
            return self.step_host_s(batch) + self.host_graph_issue_s + gpu_s
        return self.step_host_s(batch) + max(gpu_s + self.gaps_s(batch), self.launches(batch) * self.host_launch_s)

    def gpu_s(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> float:
        """The inner model's time for the pass plus its graphs' padding (`padding_s`); its excess
        beside `corunner` is scaled by the share of the co-runner's steps its GPU work fills
        (`duty`) to the power CONTENTION_DUTY_EXPONENT."""
        padding = self.padding_s(batch, sms)
        beside = self.inner.step_time(batch, sms, corunner) + padding
        if corunner is None or corunner.batch.is_empty or batch.is_empty:
            return beside
        duty = self.duty(corunner)
        if duty >= 1.0:
            return beside
        alone = self.inner.step_time(batch, sms) + padding
        return alone + duty ** CONTENTION_DUTY_EXPONENT * (beside - alone)

    def padding_s(self, batch: BatchShape, sms: int | None = None) -> float:
        """The GPU time the padding rows of a graphed pass add: its graphs hold the operators but
        attention (all of them, for a whole decode graph, whose padding rows' attention reads one
        token) at the smallest captured size that holds the pass's tokens, so each layer with rows
        runs those operators on that many rows. Needs an inner model that prices one layer's
        operators (`dense_layer_s`, the profiled one); 0 for any other, an ungraphed pass or one
        at a captured size. Negative where the padded size runs faster (GEMM tiles: 320 rows
        price below 300 on the H200). Not priced: a whole decode graph's LM head on its padding
        rows. Its decode attention on them is the inner model's (ProfiledCostModel.graph_rows).
        Alone: a co-runner's slowdown is not applied to it."""
        tokens = batch.num_tokens
        dense = getattr(self.inner, "dense_layer_s", None)
        if not self.graph_sizes or not 0 < tokens <= self.graph_max_tokens or dense is None:
            return 0.0

        sizes = self.graph_sizes

        def pad(rows: int) -> float:  # one layer's padding at `rows` rows
            i = bisect.bisect_left(sizes, rows)
            padded = sizes[i] if i < len(sizes) else rows
            return dense(padded, sms) - dense(rows, sms) if padded != rows else 0.0

        num_layers = self.arch.num_layers
        start, end = batch.prefill_layers or (0, num_layers)
        if not batch.prefill_tokens:
            return num_layers * pad(tokens)
        # A layered pass: the prompt's layers run its rows and the decodes', the others the
        # decodes' alone (the runtime parks the prompt's rows outside its layers).
        rest = (num_layers - (end - start)) * pad(batch.num_decodes) if batch.num_decodes else 0.0
        return (end - start) * pad(tokens) + rest

    def duty(self, corunner: Corunner) -> float:
        """The share of a co-runner's steps in which its kernels keep its SMs busy: its GPU
        time over its step, which also holds the host's work around the pass and the launches
        the GPU waits for. The inner model's contention is measured beside a co-runner looping
        without pause (the profiler replays it back to back); an engine's lane between steps,
        or waiting on its host inside one, presses on the other lane only for this share."""
        duty = self._duty.get(corunner)
        if duty is None:
            busy = self.inner.step_time(corunner.batch, corunner.sms) + self.padding_s(corunner.batch, corunner.sms)
            duty = self._duty[corunner] = min(1.0, busy / self.step_time(corunner.batch, corunner.sms))
        return duty

    def gaps_s(self, batch: BatchShape) -> float:
        """The GPU's idle time at the host's launches inside a graphed pass. Where the inner
        model prices a prompt pass as the runtime issues it (`issues_prompts`), only the decode
        attention's launches count."""
        if not self.host_gap_s or not 0 < batch.num_tokens <= self.graph_max_tokens or self.full_graph(batch):
            return 0.0
        if batch.prefill_tokens and getattr(self.inner, "issues_prompts", False):
            decode = (1 + (self.decode_splits(batch) > 1)) if batch.num_decodes else 0
            return decode * self.arch.num_layers * self.host_gap_s
        return self.graphed_launches(batch) * self.host_gap_s

    def step_host_s(self, batch: BatchShape) -> float:
        """The host's time around a pass, with the GPU idle: scheduling, inputs, bookkeeping."""
        return self.host_step_s + self.host_per_seq_s * (batch.num_decodes + len(batch.prefill_tokens))

    def batch_cost(self, batch: BatchShape, sms: int | None = None, corunner: Corunner | None = None) -> BatchCost:
        cost = self.inner.batch_cost(batch, sms, corunner)
        total = self.step_time(batch, sms, corunner)
        scale = total / cost.total_s if cost.total_s > 0 else 1.0
        ops = tuple(dataclasses.replace(op, seconds=op.seconds * scale) for op in cost.ops)
        layer_s = tuple(s * scale for s in cost.layer_s)
        return dataclasses.replace(cost, total_s=total, ops=ops, layer_s=layer_s)
