"""Builds each operator of a model's layer as calls of servesim's own kernels on random data.

`OperatorFactory.builder(op, a, b, c, sms)` returns a `Builder` (G -> G independent calls) and
whether the operator streams weights or KV from HBM (then L2 is flushed before each timing).
Weights and the paged KV pool are made once per model and reused by every point; copy i of an
operator gets its own weights (and its own KV blocks), so that none of the G calls of one
graph replay finds its data in L2. Sampling has no Triton kernel in servesim.kernels: it is
timed as the torch ops a serving engine runs (temperature softmax, exponential race, argmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from servesim import kernels as K
from servesim.kernels.moe import moe_block_config, moe_grouped_gemm
from servesim.models.arch import ModelArch
from servesim.models.profile_schema import MOE_SKEW_ZIPF
from servesim.profiler.grid import gemm_shapes
from servesim.profiler.timing import Builder, Call

PAGE = 16
_COLD_COPY_BYTES = 4 * 2**30
"""Cap on the extra weight/KV copies one operator may allocate for cold-L2 graph replays."""
MOE_ROUTINGS = 4
"""Routing draws a MoE point is timed over, up to MOE_ROUTED_TOKENS tokens (beyond, every
expert gets tokens in any draw and the draws time alike)."""
MOE_ROUTED_TOKENS = 1024
_STREAMING = {"attn_prefill", "attn_prefill_packed", "attn_decode", "embedding",
              "moe_gate_up", "moe_down", "moe_fused"}


class OperatorFactory:
    """Operators of one model on one device (bf16 on CUDA, fp16 under the CPU interpreter)."""

    def __init__(self, arch: ModelArch, device: torch.device, kv_tokens: int, seed: int = 0) -> None:
        self.arch, self.device = arch, device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
        self.seed = seed
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self._weights: dict[tuple[str, int], torch.Tensor] = {}
        self.kv_blocks = math.ceil(kv_tokens / PAGE) + 1
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.inv_freq = K.rope_inv_freq(arch.head_dim, 500000.0, device)
        self.gemms = gemm_shapes(arch)

    def rand(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        out = torch.empty(shape, dtype=self.dtype, device=self.device)
        return out.normal_(0.0, scale, generator=self.gen)

    def weight(self, name: str, copy: int, *shape: int) -> torch.Tensor:
        key = (name, copy)
        if key not in self._weights:
            self._weights[key] = self.rand(*shape, scale=0.02)
        return self._weights[key]

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The paged KV pool [blocks, PAGE, kv heads, head_dim] (K and V), made on first use."""
        if self._kv is None:
            shape = (self.kv_blocks, PAGE, self.arch.num_kv_heads, self.arch.head_dim)
            self._kv = (self.rand(*shape), self.rand(*shape))
        return self._kv

    def free_weights(self) -> None:
        self._weights.clear()

    def free(self) -> None:
        self._weights.clear()
        self._kv = None

    def builder(self, op: str, a: float, b: float, c: float, sms: int | None) -> tuple[Builder, bool]:
        """(G -> G calls, flush L2 before each timing)."""
        a_i, b_i, c_i = int(a), int(b), int(c)
        if op in self.gemms:
            return self._gemm(op, a_i, sms), True
        if op == "attn_prefill":
            return self._prefill(a_i, b_i, 1), True
        if op in _STREAMING or op == "attn_decode":
            make: dict[str, Callable[[], Builder]] = {
                "attn_prefill_packed": lambda: self._prefill(a_i, b_i, c_i),
                "attn_decode": lambda: self._decode(a_i, b_i, c, sms),
                "embedding": lambda: self._embedding(a_i),
                "moe_gate_up": lambda: self._moe(op, a_i, b),
                "moe_down": lambda: self._moe(op, a_i, b),
                "moe_fused": lambda: self._moe(op, a_i, b),
            }
            return make[op](), True
        return self._elementwise(op, a_i), False

    def copies_for(self, g: int, cold_bytes: float) -> int:
        return max(1, min(g, int(_COLD_COPY_BYTES // max(cold_bytes, 1.0))))

    def _gemm(self, op: str, m: int, sms: int | None) -> Builder:
        n, k = self.gemms[op]
        x = self.rand(m, k)

        def build(g: int) -> list[Call]:
            calls: list[Call] = []
            for i in range(self.copies_for(g, n * k * 2)):
                w = self.weight(op, i, n, k)
                out = torch.empty(m, n, dtype=self.dtype, device=self.device)
                calls.append(lambda w=w, out=out: K.gemm(x, w, out, num_sms=sms))
            return calls

        return build

    def _blocks(self, copy: int, seqs: int, tokens: list[int]) -> torch.Tensor:
        """Block tables [seqs, max blocks] over distinct pool blocks, shifted per copy."""
        need = [math.ceil(t / PAGE) for t in tokens]
        width = max(need)
        if sum(need) > self.kv_blocks:
            # The table would index past the pool: an illegal address on the GPU, not an error.
            raise ValueError(f"{sum(need)} KV blocks needed but the pool has {self.kv_blocks}; "
                             f"size the factory's kv_tokens from every operator it builds")
        base = (copy * sum(need)) % max(1, self.kv_blocks - sum(need))
        table = torch.zeros(seqs, width, dtype=torch.int32)
        start = base
        for s, nb in enumerate(need):
            table[s, :nb] = torch.arange(start, start + nb, dtype=torch.int32)
            start += nb
        return table.to(self.device)

    def _prefill(self, q: int, prefix: int, seqs: int) -> Builder:
        hq, d = self.arch.num_heads, self.arch.head_dim
        queries = self.rand(q * seqs, hq, d)
        cu = torch.arange(0, (seqs + 1) * q, q, dtype=torch.int32, device=self.device)
        prefix_lens = torch.full((seqs,), prefix, dtype=torch.int32, device=self.device)
        kc, vc = self.kv()
        kv_bytes = seqs * (prefix + q) * self.arch.kv_bytes_per_token_per_layer

        def build(g: int) -> list[Call]:
            calls: list[Call] = []
            for i in range(self.copies_for(g, kv_bytes)):
                bt = self._blocks(i, seqs, [prefix + q] * seqs)
                calls.append(lambda bt=bt: K.prefill_attention(queries, kc, vc, bt, cu, prefix_lens, q))
            return calls

        return build

    def _decode(self, batch: int, context: int, skew: float, sms: int | None) -> Builder:
        lens = decode_contexts(batch, context, skew)
        hq, d = self.arch.num_heads, self.arch.head_dim
        queries = self.rand(batch, hq, d)
        ctx = torch.tensor(lens, dtype=torch.int32, device=self.device)
        kc, vc = self.kv()
        kv_bytes = sum(lens) * self.arch.kv_bytes_per_token_per_layer

        def build(g: int) -> list[Call]:
            calls: list[Call] = []
            for i in range(self.copies_for(g, kv_bytes)):
                bt = self._blocks(i, batch, lens)
                calls.append(lambda bt=bt: K.decode_attention(queries, kc, vc, bt, ctx, max(lens), num_sms=sms))
            return calls

        return build

    def _embedding(self, tokens: int) -> Builder:
        arch = self.arch
        ids = torch.randint(0, arch.vocab_size, (tokens,), device=self.device, generator=self.gen)

        def build(g: int) -> list[Call]:
            tables = [self.weight("embedding", i, arch.vocab_size, arch.hidden_size)
                      for i in range(self.copies_for(g, tokens * arch.hidden_size * 2))]
            return [lambda t=t: F.embedding(ids, t) for t in tables]

        return build

    def routing(self, tokens: int, skew: float, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights fp32 [T, k], ids int32 [T, k]): k distinct experts per token, uniform or
        Zipf-skewed popularity (Gumbel top-k samples without replacement). Draw `draw` of
        (tokens, skew) is the same whatever was measured before it."""
        e, k = self.arch.num_experts, self.arch.num_experts_per_tok
        gen = torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + tokens * 1009 + round(100 * skew) * 17 + draw)
        rank = torch.randperm(e, device=self.device, generator=gen).float() + 1.0
        logp = -MOE_SKEW_ZIPF * skew * torch.log(rank)
        noise = torch.rand(tokens, e, device=self.device, generator=gen).clamp_min(1e-9)
        ids = (logp[None, :] - torch.log(-torch.log(noise))).topk(k, dim=-1).indices.int()
        weights = torch.rand(tokens, k, device=self.device, generator=gen)
        return weights / weights.sum(-1, keepdim=True), ids

    def _moe(self, op: str, tokens: int, skew: float) -> Builder:
        """One call per routing draw (MOE_ROUTINGS of them for a few tokens): which experts a
        few tokens touch, and so the weight bytes read, varies from draw to draw, so a point's
        time is the mean over the draws rather than one draw's."""
        arch = self.arch
        e, k, w, h = arch.num_experts, arch.num_experts_per_tok, arch.moe_intermediate_size, arch.hidden_size
        block = moe_block_config(tokens, k, e, self.device.type == "cuda")
        x = self.rand(tokens, h)
        act = self.rand(tokens * k, w)
        routings: list[tuple[torch.Tensor, ...]] = []

        def routed(draw: int) -> tuple[torch.Tensor, ...]:
            while len(routings) <= draw:
                topk_w, ids = self.routing(tokens, skew, len(routings))
                sorted_ids, expert_ids, total = K.moe_align(ids, e, block[0])
                routings.append((topk_w, ids, sorted_ids, expert_ids, total))
            return routings[draw]

        def call(i: int, copy: int) -> Call:
            w13 = self.weight("w13", copy, e, 2 * w, h)
            w2 = self.weight("w2", copy, e, h, w)
            topk_w, ids, sorted_ids, expert_ids, total = routed(i)
            if op == "moe_gate_up":
                return lambda: moe_grouped_gemm(x, w13, sorted_ids, expert_ids, total, tokens * k, k, None, block)
            if op == "moe_down":
                flat_w = topk_w.reshape(-1)
                return lambda: moe_grouped_gemm(act, w2, sorted_ids, expert_ids, total, tokens * k, 1, flat_w, block)
            return lambda: K.fused_moe(x, w13, w2, topk_w, ids)

        def build(g: int) -> list[Call]:
            copies = self.copies_for(g, 3 * e * w * h * 2)
            draws = MOE_ROUTINGS if tokens <= MOE_ROUTED_TOKENS else 1
            return [call(i, i % copies) for i in range(max(copies, draws))]

        return build

    def _elementwise(self, op: str, t: int) -> Builder:
        arch = self.arch
        h, d, hq, hkv = arch.hidden_size, arch.head_dim, arch.num_heads, arch.num_kv_heads
        k = max(arch.num_experts_per_tok, 1)
        make: dict[str, Callable[[], Call]] = {
            "rmsnorm": lambda: _bind(K.rmsnorm, self.rand(t, h), self.rand(h), 1e-6, self.rand(t, h)),
            "qk_norm": lambda: _bind(K.rmsnorm, self.rand(t * (hq + hkv), d), self.rand(d)),
            "rope": lambda: _bind(K.rope, self.rand(t, hq, d), self.rand(t, hkv, d),
                                  torch.randint(0, 8192, (t,), device=self.device), self.inv_freq),
            "kv_write": lambda: self._kv_write(t),
            "silu_mul": lambda: _bind(K.silu_and_mul, self.rand(t, 2 * arch.intermediate_size)),
            "shared_silu_mul": lambda: _bind(K.silu_and_mul, self.rand(t, 2 * arch.shared_expert_intermediate_size)),
            "moe_silu_mul": lambda: _bind(K.silu_and_mul, self.rand(t * k, 2 * arch.moe_intermediate_size)),
            "topk_softmax": lambda: _bind(K.topk_softmax, self.rand(t, arch.num_experts), k),
            "moe_align": lambda: self._align(t),
            "sample": lambda: self._sample(t),
        }
        return lambda g: [make[op]() for _ in range(g)]

    def _kv_write(self, t: int) -> Call:
        kc, vc = self.kv()
        hkv, d = self.arch.num_kv_heads, self.arch.head_dim
        slots = torch.randperm(min(self.kv_blocks * PAGE, max(t, 1) * 4), device=self.device)[:t]
        return _bind(K.kv_cache_write, self.rand(t, hkv, d), self.rand(t, hkv, d), kc, vc, slots)

    def _align(self, t: int) -> Call:
        e, k = self.arch.num_experts, self.arch.num_experts_per_tok
        block_m = moe_block_config(t, k, e, self.device.type == "cuda")[0]
        return _bind(K.moe_align, self.routing(t, 0.0)[1], e, block_m)

    def _sample(self, rows: int) -> Call:
        logits = torch.randn(rows, self.arch.vocab_size, device=self.device, generator=self.gen)
        return lambda: sample_tokens(logits)


def sample_tokens(logits: torch.Tensor, temperature: float = 0.8) -> torch.Tensor:
    """Temperature sampling as engines do it on the GPU: softmax, exponential race, argmax."""
    probs = torch.softmax(logits / temperature, dim=-1)
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(dim=-1)


def decode_contexts(batch: int, mean: int, skew: float) -> list[int]:
    """Contexts of `batch` decodes with the given mean: one straggler of min(skew, batch) x
    the mean, the others equal (>= 1 token)."""
    if batch == 1 or skew <= 1:
        return [mean] * batch
    longest = int(min(skew, batch) * mean)
    rest = max(1, (mean * batch - longest) // (batch - 1))
    return [longest] + [rest] * (batch - 1)


def _bind(fn: Callable[..., object], *args: object) -> Call:
    return lambda: fn(*args)
