"""A transformer built from servesim's Triton kernels, with random weights and a paged KV cache.

Only timing is validated, so weights are random (scaled so activations stay finite) and the
sampled token ids are not fed back as text; every operator the cost model prices runs here with
its real shapes. `forward` is a generator that yields after each attention and MLP block, so a
caller can stop (preempt) a pass between operators and resume it later.

A pass is a chain of pieces over a `Workspace` (the activations of its rows): per layer, the
pre-attention piece (norm, QKV, RoPE, KV write), attention, and the post-attention piece
(O projection, norm, MLP). Like vLLM's piecewise CUDA graphs, `capture_graphs` records the two
non-attention pieces of every layer once per padded row count, so a pass replays 2 graphs per
layer and launches only attention (whose shapes follow the batch) from the host; without graphs
(CPU, or more rows than the largest capture) the same pieces run eagerly. A decode-only pass
can instead replay one graph of the whole pass (`capture_decode_graphs`, vLLM's full graphs for
uniform decode batches): its decode attention reads the step's block tables, contexts and split
size from static buffers, one graph per padded row count and split count.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from servesim import kernels as K
from servesim.models.arch import ModelArch

GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512,
               *range(640, 2049, 128))
"""Padded row counts with captured graphs: fine steps where GEMM tiles change (padding within a
64- or 128-row tile costs nothing), none above 2048 rows (a pass that large is GPU-bound)."""

TABLE_ALIGN = 16
"""Block-table widths are padded to a multiple of this. Triton specialises an integer kernel
argument on its divisibility by 16, and the attention kernels take the table's row stride: an
unpadded width compiles a second variant of each kernel the first time a batch's longest
table is a multiple of 16 (~0.5 s inside a measured step)."""


@dataclass
class Plan:
    """One forward pass. Rows are the packed prefill tokens (first) then one row per decode."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    num_prefill_tokens: int
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    prefix_lens: torch.Tensor  # [S] int32
    prefill_block_tables: torch.Tensor  # [S, max_blocks] int32
    max_seqlen_q: int
    decode_block_tables: torch.Tensor  # [D, max_blocks] int32
    decode_context_lens: torch.Tensor  # [D] int32
    max_decode_context: int
    logit_rows: torch.Tensor  # [R] int64, rows whose last token is sampled
    prefill_layers: tuple[int, int]
    prefill_ids: tuple[int, ...] = ()
    """Request ids of the prefill chunks, in row order (layered prefill parks rows by id)."""
    prefill_lens: tuple[int, ...] = ()


@dataclass
class Workspace:
    """The activations of a pass over up to `size` rows: row inputs (token ids, positions, KV
    slots) and the hidden state, residual, QKV and attention output. Under CUDA graphs these are
    the static buffers the captured pieces read and write, shared by every pass of that size."""

    ids: torch.Tensor  # [size] int64
    positions: torch.Tensor  # [size] int64
    slots: torch.Tensor  # [size] int64
    x: torch.Tensor  # [size, hidden]
    res: torch.Tensor  # [size, hidden]
    qkv: torch.Tensor  # [size, q + 2 kv]
    attn: torch.Tensor  # [size, q]

    @property
    def size(self) -> int:
        return self.ids.shape[0]


@dataclass
class DecodeInputs:
    """The static buffers a full decode graph of `size` rows reads and writes: block tables
    (wide enough for the longest context captured for), contexts (padded rows at 1), the split
    size of decode attention, and the logits of every row."""

    tables: torch.Tensor  # [size, width] int32
    lens: torch.Tensor  # [size] int32
    split_tokens: torch.Tensor  # [1] int32
    logits: torch.Tensor  # [size, vocab]


@dataclass
class Lane:
    """Where passes run: kernels sized for `num_sms` SMs (None: the whole GPU) and launched on
    `stream` (None: the current one), with the workspaces they share and the graphs captured
    over them, by padded row count. The colocated runtime has one lane; Nexus has one per
    (phase, split), and the lanes of one phase share workspaces (one pass per phase at a time)."""

    num_sms: int | None = None
    stream: Any = None
    spaces: dict[int, Workspace] = field(default_factory=dict)
    graphs: dict[int, list[torch.cuda.CUDAGraph]] = field(default_factory=dict)
    pool: Any = None
    """The memory pool of the lane's graph captures (intermediate tensors)."""
    inputs: dict[int, DecodeInputs] = field(default_factory=dict)
    """Full decode graphs' static buffers by padded row count (shared like `spaces`)."""
    decode_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = field(default_factory=dict)
    """(padded rows, split count) -> the graph of a whole decode-only pass."""

    @property
    def sizes(self) -> list[int]:
        return sorted(self.spaces)


class RuntimeModel:
    """Weights, KV cache and a forward pass over `arch` on one device."""

    def __init__(self, arch: ModelArch, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype = torch.bfloat16, seed: int = 0, num_sms: int | None = None) -> None:
        self.arch, self.device, self.dtype, self.num_sms = arch, device, dtype, num_sms
        gen = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: fast
        h, q, kv = arch.hidden_size, arch.q_size, arch.kv_size

        def w(*shape: int) -> torch.Tensor:
            out = torch.empty(shape, device=device, dtype=dtype)
            return out.normal_(0.0, shape[-1] ** -0.5, generator=gen)

        self.embed = w(arch.vocab_size, h)
        self.lm_head = self.embed if arch.tie_word_embeddings else w(arch.vocab_size, h)
        self.final_norm = torch.ones(h, device=device, dtype=dtype)
        self.layers = []
        for _ in range(arch.num_layers):
            layer = {"ln1": torch.ones(h, device=device, dtype=dtype), "wqkv": w(q + 2 * kv, h),
                     "wo": w(h, q), "ln2": torch.ones(h, device=device, dtype=dtype)}
            if arch.qk_norm:  # Qwen3: RMSNorm of each head's q and k
                layer |= {"q_norm": torch.ones(arch.head_dim, device=device, dtype=dtype),
                          "k_norm": torch.ones(arch.head_dim, device=device, dtype=dtype)}
            if arch.is_moe:
                e, i = arch.num_experts, arch.moe_intermediate_size
                layer |= {"router": w(e, h), "w13": w(e, 2 * i, h), "w2": w(e, h, i)}
            else:
                layer |= {"w_gate_up": w(2 * arch.intermediate_size, h),
                          "w_down": w(h, arch.intermediate_size)}
            self.layers.append(layer)
        # One block more than the engine hands out: padded graph rows write their K/V there.
        cache_shape = (num_blocks + 1, block_size, arch.num_kv_heads, arch.head_dim)
        self.scratch_slot = num_blocks * block_size
        self.k_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in self.layers]
        self.inv_freq = K.rope_inv_freq(arch.head_dim, 500000.0, device)
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """Layered prefill: a request's hidden and residual rows between its layer groups."""
        self.lane = Lane(num_sms)
        """The whole GPU on the current stream: padded row count -> the workspace shared by
        every pass of that size, and its graphs [pre 0, post 0, pre 1, post 1, ...]."""

    # -- workspaces and pieces ---------------------------------------------------------------

    def _new_workspace(self, size: int) -> Workspace:
        a, dev, dt = self.arch, self.device, self.dtype

        def rows(*shape: int, dtype: torch.dtype = dt) -> torch.Tensor:
            return torch.zeros((size, *shape), device=dev, dtype=dtype)

        ws = Workspace(rows(dtype=torch.int64), rows(dtype=torch.int64), rows(dtype=torch.int64),
                       rows(a.hidden_size), rows(a.hidden_size), rows(a.q_size + 2 * a.kv_size),
                       rows(a.q_size))
        ws.slots.fill_(self.scratch_slot)
        return ws

    def _workspace(self, plan: Plan, lo: int, lane: Lane) -> tuple[Workspace, int]:
        """A workspace for rows [lo, T) of the plan with their ids, positions and slots loaded:
        the smallest captured one that holds them (padding rows point at the scratch slot), or a
        private one of the exact size. Returns it and the row count."""
        n = plan.input_ids.shape[0] - lo
        sizes = lane.sizes
        i = bisect.bisect_left(sizes, n)
        ws = lane.spaces[sizes[i]] if i < len(sizes) else self._new_workspace(n)
        ws.ids[:n].copy_(plan.input_ids[lo:])
        ws.positions[:n].copy_(plan.positions[lo:])
        ws.slots[:n].copy_(plan.slot_mapping[lo:])
        if n < ws.size:
            ws.slots[n:].fill_(self.scratch_slot)
            ws.positions[n:].zero_()
        return ws, n

    def _pre(self, index: int, ws: Workspace, sms: int | None) -> None:
        """Norm, QKV projection, per-head norms (Qwen3), RoPE and KV write of every row."""
        arch, layer = self.arch, self.layers[index]
        if index == 0:
            torch.index_select(self.embed, 0, ws.ids, out=ws.x)
            h = K.rmsnorm(ws.x, layer["ln1"])[0]
            ws.res.copy_(ws.x)
        else:
            h = K.rmsnorm(ws.x, layer["ln1"], residual=ws.res, residual_out=ws.res)[0]
        K.gemm(h, layer["wqkv"], out=ws.qkv, num_sms=sms)
        t, d = ws.size, arch.head_dim
        q = ws.qkv[:, : arch.q_size].view(t, arch.num_heads, d)
        k = ws.qkv[:, arch.q_size: arch.q_size + arch.kv_size].view(t, arch.num_kv_heads, d)
        v = ws.qkv[:, arch.q_size + arch.kv_size:].view(t, arch.num_kv_heads, d)
        if arch.qk_norm:
            q.copy_(K.rmsnorm(q.reshape(-1, d), layer["q_norm"])[0].view(q.shape))
            k.copy_(K.rmsnorm(k.reshape(-1, d), layer["k_norm"])[0].view(k.shape))
        K.rope(q, k, ws.positions, self.inv_freq)
        K.kv_cache_write(k, v, self.k_cache[index], self.v_cache[index], ws.slots)

    def _post(self, index: int, ws: Workspace, sms: int | None) -> None:
        """O projection, norm with the residual, and the MLP; leaves the layer's output in x."""
        layer = self.layers[index]
        o = K.gemm(ws.attn, layer["wo"], num_sms=sms)
        h = K.rmsnorm(o, layer["ln2"], residual=ws.res, residual_out=ws.res)[0]
        if self.arch.is_moe:
            logits = K.gemm(h, layer["router"], num_sms=sms)
            weights, ids = K.topk_softmax(logits, self.arch.num_experts_per_tok)
            K.fused_moe(h, layer["w13"], layer["w2"], weights, ids, out=ws.x)
        else:
            act = K.silu_and_mul(K.gemm(h, layer["w_gate_up"], num_sms=sms))
            K.gemm(act, layer["w_down"], out=ws.x, num_sms=sms)

    def _attend(self, index: int, ws: Workspace, n: int, plan: Plan, with_prefill: bool,
                sms: int | None) -> None:
        """Attention of the first n rows (the prefill chunks first if `with_prefill`, then the
        decodes), launched from the host with the batch's own shapes."""
        arch, p = self.arch, plan.num_prefill_tokens if with_prefill else 0
        q = ws.qkv[:n, : arch.q_size].view(n, arch.num_heads, arch.head_dim)
        out = ws.attn[:n].view(n, arch.num_heads, arch.head_dim)
        if p:
            K.prefill_attention(q[:p], self.k_cache[index], self.v_cache[index],
                                plan.prefill_block_tables, plan.cu_seqlens_q, plan.prefix_lens,
                                plan.max_seqlen_q, out=out[:p])
        if n > p:
            K.decode_attention(q[p:], self.k_cache[index], self.v_cache[index],
                               plan.decode_block_tables, plan.decode_context_lens,
                               plan.max_decode_context, num_sms=sms, out=out[p:])

    def _piece(self, kind: int, index: int, ws: Workspace, lane: Lane) -> None:
        """Run piece `kind` (0 pre, 1 post) of layer `index`: replayed if captured for ws."""
        graphs = lane.graphs.get(ws.size)
        if graphs is not None and lane.spaces[ws.size] is ws:
            graphs[2 * index + kind].replay()
        elif kind == 0:
            self._pre(index, ws, lane.num_sms)
        else:
            self._post(index, ws, lane.num_sms)

    # -- CUDA graphs -------------------------------------------------------------------------

    def share_workspaces(self, max_rows: int, lane: Lane | None = None) -> list[int]:
        """Give every pass of up to max_rows rows on `lane` (default: the whole GPU) a shared
        workspace of the next size of GRAPH_SIZES (what graphs need: fixed buffers, padded
        rows). Returns the sizes."""
        lane = self.lane if lane is None else lane
        for size in (s for s in GRAPH_SIZES if s <= max_rows):
            lane.spaces.setdefault(size, self._new_workspace(size))
        return lane.sizes

    def _capture_stream(self, lane: Lane) -> Any:
        """The stream a lane's kernels run on eagerly before a capture (the lane's own, or a
        side stream for the whole GPU's), with the lane's graph memory pool made."""
        if lane.pool is None:
            lane.pool = torch.cuda.graph_pool_handle()
        return torch.cuda.Stream(self.device) if lane.stream is None else lane.stream

    def capture_graphs(self, max_rows: int, lane: Lane | None = None) -> int:
        """Record the pieces of every layer for each size of GRAPH_SIZES up to max_rows on
        `lane`'s stream (run once eagerly there first, which also compiles their kernels).
        Returns the number of graphs of the lane."""
        lane = self.lane if lane is None else lane
        if self.device.type != "cuda" or max_rows < 1:
            return 0
        side = self._capture_stream(lane)
        # Largest first: smaller captures then carve their intermediates out of the blocks the
        # largest left in the pool, instead of each size holding blocks of its own.
        for size in reversed(self.share_workspaces(max_rows, lane)):
            ws = lane.spaces[size]
            if size in lane.graphs:
                continue
            # A partition's stream (another context, non-blocking) does not wait for work on
            # the current stream: synchronise instead of stream waits.
            torch.cuda.synchronize(self.device)
            with torch.cuda.stream(side):
                for index in range(self.arch.num_layers):
                    self._pre(index, ws, lane.num_sms)
                    self._post(index, ws, lane.num_sms)
            torch.cuda.synchronize(self.device)
            graphs = []
            for index in range(self.arch.num_layers):
                for piece in (self._pre, self._post):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=lane.pool, stream=lane.stream):
                        piece(index, ws, lane.num_sms)
                    graphs.append(graph)
            lane.graphs[size] = graphs
        torch.cuda.synchronize(self.device)
        return sum(len(g) for g in lane.graphs.values())

    def decode_split_counts(self, size: int, sms: int | None, max_context: int) -> range:
        """The split counts decode attention can pick for a batch padded to `size` rows: the
        count falls with the batch, so the bucket's smallest batch bounds it."""
        smaller = [s for s in GRAPH_SIZES if s < size]
        fewest = (smaller[-1] + 1) if smaller else 1
        sms = sms or K.resolve_num_sms(None, self.device)
        return range(1, K.decode_num_splits(fewest, self.arch.num_kv_heads, max_context, sms) + 1)

    def capture_decode_graphs(self, max_rows: int, max_context: int, lane: Lane | None = None) -> int:
        """Record every decode-only pass of up to max_rows sequences (padded to GRAPH_SIZES) and
        contexts of up to max_context tokens as one graph per (padded rows, split count), on
        `lane` (run once eagerly first, which compiles its kernels). Returns the lane's count."""
        lane = self.lane if lane is None else lane
        if self.device.type != "cuda" or max_rows < 1:
            return 0
        side = self._capture_stream(lane)
        blocks = -(-max_context // self.k_cache[0].shape[1])
        width = -(-blocks // TABLE_ALIGN) * TABLE_ALIGN
        for size in reversed([s for s in self.share_workspaces(max_rows, lane) if s <= max_rows]):
            ws = lane.spaces[size]
            inputs = lane.inputs.get(size)
            if inputs is None:
                dev = self.device
                inputs = lane.inputs[size] = DecodeInputs(
                    torch.zeros((size, width), dtype=torch.int32, device=dev),
                    torch.ones(size, dtype=torch.int32, device=dev),
                    torch.full((1,), 64, dtype=torch.int32, device=dev),
                    torch.zeros((size, self.arch.vocab_size), dtype=self.dtype, device=dev))
            for splits in self.decode_split_counts(size, lane.num_sms, max_context):
                if (size, splits) in lane.decode_graphs:
                    continue
                torch.cuda.synchronize(self.device)
                with torch.cuda.stream(side):
                    self._decode_pass(ws, inputs, splits, lane.num_sms)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=lane.pool, stream=lane.stream):
                    self._decode_pass(ws, inputs, splits, lane.num_sms)
                lane.decode_graphs[(size, splits)] = graph
        torch.cuda.synchronize(self.device)
        return len(lane.decode_graphs)

    def _decode_pass(self, ws: Workspace, inputs: DecodeInputs, splits: int, sms: int | None) -> None:
        """Every layer of a decode-only pass over all of ws's rows, then the logits of each."""
        arch = self.arch
        q = ws.qkv[:, : arch.q_size].view(ws.size, arch.num_heads, arch.head_dim)
        out = ws.attn.view(ws.size, arch.num_heads, arch.head_dim)
        for index in range(arch.num_layers):
            self._pre(index, ws, sms)
            K.decode_attention(q, self.k_cache[index], self.v_cache[index], inputs.tables, inputs.lens,
                               inputs.tables.shape[1] * self.k_cache[index].shape[1], num_sms=sms,
                               out=out, num_splits=splits, split_tokens=inputs.split_tokens)
            self._post(index, ws, sms)
        normed, _ = K.rmsnorm(ws.x, self.final_norm, residual=ws.res)
        K.gemm(normed, self.lm_head, out=inputs.logits, num_sms=sms)

    def _full_decode(self, plan: Plan, lane: Lane) -> torch.Tensor | None:
        """Replay the whole pass of a decode-only plan from its graph, with the plan's inputs
        in the graph's buffers; returns the logits (None: no graph for it, run piecewise)."""
        n = plan.decode_context_lens.shape[0]
        if plan.num_prefill_tokens or not n or not lane.decode_graphs:
            return None
        sizes = sorted(lane.inputs)
        i = bisect.bisect_left(sizes, n)
        if i == len(sizes) or plan.decode_block_tables.shape[1] > lane.inputs[sizes[i]].tables.shape[1]:
            return None
        size, inputs = sizes[i], lane.inputs[sizes[i]]
        sms = lane.num_sms or K.resolve_num_sms(None, self.device)
        splits, tokens = K.decode_split_plan(n, self.arch.num_kv_heads, plan.max_decode_context, sms)
        graph = lane.decode_graphs.get((size, splits))
        if graph is None:
            return None
        ws, _ = self._workspace(plan, 0, lane)
        assert ws.size == size
        inputs.tables[:n, : plan.decode_block_tables.shape[1]].copy_(plan.decode_block_tables)
        inputs.lens[:n].copy_(plan.decode_context_lens)
        if n < size:
            inputs.lens[n:].fill_(1)
        inputs.split_tokens.fill_(tokens)
        graph.replay()
        return inputs.logits[:n]

    # -- the pass ----------------------------------------------------------------------------

    def forward(self, plan: Plan, lane: Lane | None = None) -> Generator[str, str | None, torch.Tensor]:
        """Run the pass, yielding after each attention and MLP block; returns the logits of
        `plan.logit_rows` [R, vocab] (the caller samples). Sending "suspend" at a yield makes
        the pass save its rows (a shared workspace is reused by other passes meanwhile) and
        yield "suspended"; the next `next()` restores them and goes on. Kernels launch on the
        stream current at each `next()`: the caller makes `lane.stream` current."""
        lane = self.lane if lane is None else lane
        logits = self._full_decode(plan, lane)
        if logits is not None:
            return logits
        start, end = plan.prefill_layers
        num_layers, p = self.arch.num_layers, plan.num_prefill_tokens
        lo = 0 if start == 0 else p  # before the cohort's group only the decode rows run
        ws, n = self._workspace(plan, lo, lane) if plan.input_ids.shape[0] > lo else (None, 0)
        for index in range(num_layers):
            if index == start and start > 0 and p:  # the cohort rejoins with its saved state
                ws, n = self._rejoin(plan, ws, n, lane)
            if ws is not None and n:
                self._piece(0, index, ws, lane)
                self._attend(index, ws, n, plan, start <= index < end and p > 0, lane.num_sms)
            if (yield "attention") == "suspend":
                yield from self._suspend(ws, n, lane)
            if ws is not None and n:
                self._piece(1, index, ws, lane)
            if (yield "mlp") == "suspend":
                yield from self._suspend(ws, n, lane)
            if index == end - 1 and end < num_layers and p:  # park the cohort until next step
                ws, n = self._park(plan, ws, n, lane)
        if not len(plan.logit_rows):
            return torch.empty((0, self.arch.vocab_size), dtype=self.dtype, device=self.device)
        assert ws is not None
        out, _ = K.rmsnorm(ws.x[:n], self.final_norm, residual=ws.res[:n])
        local = plan.logit_rows if end == num_layers else plan.logit_rows - p
        return K.gemm(out.index_select(0, local), self.lm_head, num_sms=lane.num_sms)

    def _rejoin(self, plan: Plan, ws: Workspace | None, n: int, lane: Lane) -> tuple[Workspace, int]:
        """Rows of the cohort's saved state, then the decodes' rows, in one workspace."""
        p = plan.num_prefill_tokens
        decodes = (ws.x[:n].clone(), ws.res[:n].clone()) if ws is not None and n else None
        parked = [self.saved.pop(rid) for rid in plan.prefill_ids]
        joined, total = self._workspace(plan, 0, lane)
        torch.cat([px for px, _ in parked], out=joined.x[:p])
        torch.cat([pr for _, pr in parked], out=joined.res[:p])
        if decodes is not None:
            joined.x[p:total].copy_(decodes[0])
            joined.res[p:total].copy_(decodes[1])
        return joined, total

    def _park(self, plan: Plan, ws: Workspace | None, n: int, lane: Lane) -> tuple[Workspace | None, int]:
        """Save the cohort's rows per request; go on with the decodes' rows alone."""
        assert ws is not None
        p = plan.num_prefill_tokens
        for rid, xs, rs in zip(plan.prefill_ids, ws.x[:p].split(plan.prefill_lens),
                               ws.res[:p].split(plan.prefill_lens), strict=True):
            self.saved[rid] = (xs.clone(), rs.clone())
        if n == p:
            return None, 0
        decodes = ws.x[p:n].clone(), ws.res[p:n].clone()
        rest, m = self._workspace(plan, p, lane)
        rest.x[:m].copy_(decodes[0])
        rest.res[:m].copy_(decodes[1])
        return rest, m

    def _suspend(self, ws: Workspace | None, n: int, lane: Lane) -> Generator[str, str | None, None]:
        """Keep the rows of a suspended pass while other passes use its workspace."""
        if ws is None or lane.spaces.get(ws.size) is not ws:  # private: nothing to save
            yield "suspended"
            return
        kept = {f.name: getattr(ws, f.name)[:n].clone() for f in fields(ws) if f.name != "qkv"}
        yield "suspended"
        for name, rows in kept.items():
            getattr(ws, name)[:n].copy_(rows)
        ws.slots[n:].fill_(self.scratch_slot)
        ws.positions[n:].zero_()
