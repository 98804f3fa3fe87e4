"""A whole forward pass of a mixed batch with servesim's kernels, for `--validate`.

Every layer of the real layer count runs, in the operator order of `servesim.models.ops`:
fused add + RMSNorm, QKV GEMM, (q/k norm,) RoPE, KV write, one packed prefill-attention launch
for all chunks, one decode-attention launch, O GEMM, RMSNorm, then SwiGLU or router + top-k +
fused MoE; embedding before, final norm + LM head + sampling after. Layers cycle over
`LAYER_SETS` distinct weight sets and KV caches: each set's weights (>= 100 MB per layer here)
are evicted from the 60 MB L2 by the layers in between, as in a real pass.

A step is timed as the engine runs one: input metadata copied in, the captured graph of the
pass replayed, sampled ids copied out (`IterationIO`); the profiler's `iteration_fixed`
operator is the same step around an empty pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from servesim import kernels as K
from servesim.profiler.operators import PAGE, OperatorFactory, sample_tokens
from servesim.profiler.timing import Call

LAYER_SETS = 4
_META_INTS = 16384
"""Host metadata copied in per step (ids, positions, slots, lengths): 64 KB of int32."""


class IterationIO:
    """Pinned host buffers copied in before and out after each step."""

    def __init__(self, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.host_in = torch.zeros(_META_INTS, dtype=torch.int32, pin_memory=pin)
        self.dev_in = torch.zeros(_META_INTS, dtype=torch.int32, device=device)
        self.host_out = torch.zeros(4096, dtype=torch.int64, pin_memory=pin)

    def step(self, run: Call, sampled: torch.Tensor | None) -> None:
        self.dev_in.copy_(self.host_in, non_blocking=True)
        run()
        if sampled is not None:
            n = min(sampled.numel(), self.host_out.numel())
            self.host_out[:n].copy_(sampled[:n], non_blocking=True)


def fixed_cost_call(factory: OperatorFactory) -> Call:
    """One step around an empty pass: metadata in, one kernel, ids out. The timer captures the
    whole step in a CUDA graph, so what it times is the GPU's share of a step; timed eagerly,
    the host's issue time of the three launches showed up instead (918-922 us in three of the
    shipped profiles, 16-22 us in the others)."""
    io = IterationIO(factory.device)
    ids = torch.zeros(1, dtype=torch.int64, device=factory.device)
    return lambda: io.step(lambda: ids.add_(1), ids)


class Forward:
    """One pass of `chunks` [(new tokens, prefix)] plus decodes with `decode_context` each."""

    def __init__(self, factory: OperatorFactory, chunks: list[tuple[int, int]],
                 decode_context: list[int], num_logits: int, sms: int | None = None,
                 layer_sets: int = LAYER_SETS) -> None:
        self.f, self.arch = factory, factory.arch
        self.layer_sets = layer_sets
        """Distinct weight sets and KV caches the layers cycle over (the real layer count: one
        per layer, as a serving engine holds them)."""
        self.sms = sms
        """SMs of the partition the pass runs on: GEMM grids and decode-attention splits are
        sized for them, as the partitioned runtime's lanes size theirs (None: the whole GPU)."""
        arch, dev = self.arch, factory.device
        self.num_prefill = sum(q for q, _ in chunks)
        self.tokens = self.num_prefill + len(decode_context)
        self.chunks, self.decode_context = chunks, decode_context
        seq_tokens = [p + q for q, p in chunks] + list(decode_context)
        self.blocks = [math.ceil(n / PAGE) for n in seq_tokens]
        shape = (sum(self.blocks) + 1, PAGE, arch.num_kv_heads, arch.head_dim)
        self.kv = [(factory.rand(*shape), factory.rand(*shape)) for _ in range(layer_sets)]
        self._metadata(chunks, decode_context, dev)
        self.ids = torch.randint(0, arch.vocab_size, (self.tokens,), device=dev)
        ends = [sum(q for q, _ in chunks[: i + 1]) - 1 for i in range(len(chunks))]
        rows = (list(range(self.num_prefill, self.tokens)) + ends)[:num_logits]
        self.logit_rows = torch.tensor(rows, dtype=torch.int64, device=dev)
        self.sampled: torch.Tensor | None = None

    def _metadata(self, chunks: list[tuple[int, int]], contexts: list[int], dev: torch.device) -> None:
        starts = [sum(self.blocks[:i]) for i in range(len(self.blocks))]
        width = max(self.blocks)
        table = torch.zeros(len(self.blocks), width, dtype=torch.int32)
        for s, (b0, nb) in enumerate(zip(starts, self.blocks, strict=True)):
            table[s, :nb] = torch.arange(b0, b0 + nb, dtype=torch.int32)
        positions = [p + i for q, p in chunks for i in range(q)] + [c - 1 for c in contexts]
        seq_of = [s for s, (q, _) in enumerate(chunks) for _ in range(q)]
        seq_of += list(range(len(chunks), len(chunks) + len(contexts)))
        slots = [int(table[s, pos // PAGE]) * PAGE + pos % PAGE for s, pos in zip(seq_of, positions, strict=True)]
        self.positions = torch.tensor(positions, dtype=torch.int64, device=dev)
        self.slots = torch.tensor(slots, dtype=torch.int64, device=dev)
        n = len(chunks)
        self.bt_prefill = table[:n].to(dev)
        self.bt_decode = table[n:].to(dev)
        cu = [0]
        for q, _ in chunks:
            cu.append(cu[-1] + q)
        self.cu = torch.tensor(cu, dtype=torch.int32, device=dev)
        self.prefix = torch.tensor([p for _, p in chunks], dtype=torch.int32, device=dev)
        self.ctx = torch.tensor(contexts, dtype=torch.int32, device=dev)
        self.max_q = max((q for q, _ in chunks), default=0)

    def _w(self, name: str, layer_set: int, *shape: int) -> torch.Tensor:
        return self.f.weight(f"L{layer_set}.{name}", 0, *shape)

    def run(self) -> None:
        arch, t = self.arch, self.tokens
        h = arch.hidden_size
        x = F.embedding(self.ids, self.f.weight("embedding", 0, arch.vocab_size, h))
        residual = torch.zeros_like(x)
        for layer in range(arch.num_layers):
            x, residual = self._layer(x, residual, layer % self.layer_sets)
        out, _ = K.rmsnorm(x, self.f.weight("final_norm", 0, h), 1e-6, residual)
        hidden = out.index_select(0, self.logit_rows)
        logits = K.gemm(hidden, self.f.weight("lm_head", 0, arch.vocab_size, h), num_sms=self.sms)
        self.sampled = sample_tokens(logits) if t else None

    def _layer(self, x: torch.Tensor, residual: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        arch, t = self.arch, self.tokens
        h, d, hq, hkv = arch.hidden_size, arch.head_dim, arch.num_heads, arch.num_kv_heads
        qs, kvs = arch.q_size, arch.kv_size
        normed, residual_out = K.rmsnorm(x, self._w("ln1", j, h), 1e-6, residual)
        assert residual_out is not None
        qkv = K.gemm(normed, self._w("qkv", j, qs + 2 * kvs, h), num_sms=self.sms)  # [T, q + 2 kv]
        if arch.qk_norm:
            qkv = K.rmsnorm(qkv.view(-1, d), self._w("qk_norm", j, d))[0].view(t, -1)
        q = qkv[:, :qs].view(t, hq, d)
        k = qkv[:, qs : qs + kvs].view(t, hkv, d)
        v = qkv[:, qs + kvs :].view(t, hkv, d)
        K.rope(q, k, self.positions, self.f.inv_freq)
        kc, vc = self.kv[j]
        K.kv_cache_write(k, v, kc, vc, self.slots)
        attn = torch.empty(t, hq, d, dtype=x.dtype, device=x.device)
        p = self.num_prefill
        if self.chunks:
            K.prefill_attention(q[:p], kc, vc, self.bt_prefill, self.cu, self.prefix, self.max_q, out=attn[:p])
        if self.decode_context:
            K.decode_attention(q[p:], kc, vc, self.bt_decode, self.ctx, max(self.decode_context), out=attn[p:],
                               num_sms=self.sms)
        o = K.gemm(attn.view(t, qs), self._w("o", j, h, qs), num_sms=self.sms)
        normed, residual_out = K.rmsnorm(o, self._w("ln2", j, h), 1e-6, residual_out)
        assert residual_out is not None
        return self._mlp(normed, j), residual_out

    def _mlp(self, x: torch.Tensor, j: int) -> torch.Tensor:
        arch, h = self.arch, self.arch.hidden_size
        if not arch.is_moe:
            width = arch.intermediate_size
            act = K.silu_and_mul(K.gemm(x, self._w("gate_up", j, 2 * width, h), num_sms=self.sms))
            return K.gemm(act, self._w("down", j, h, width), num_sms=self.sms)
        e, w = arch.num_experts, arch.moe_intermediate_size
        logits = K.gemm(x, self._w("router", j, e, h), num_sms=self.sms)
        weights, ids = K.topk_softmax(logits, arch.num_experts_per_tok)
        return K.fused_moe(x, self._w("w13", j, e, 2 * w, h), self._w("w2", j, e, h, w), weights, ids)
