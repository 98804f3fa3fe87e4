"""A transformer built from servesim's Triton kernels, with random weights and a paged KV cache.

Only timing is validated, so weights are random (scaled so activations stay finite) and the
sampled token ids are not fed back as text; every operator the cost model prices runs here with
its real shapes. `forward` is a generator that yields after each operator group, so a caller can
stop (preempt) a pass between operators and resume it later.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch

from servesim import kernels as K
from servesim.models.arch import ModelArch


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
        cache_shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        self.k_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in self.layers]
        self.inv_freq = K.rope_inv_freq(arch.head_dim, 500000.0, device)
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """Layered prefill: a request's hidden and residual rows between its layer groups."""

    def forward(self, plan: Plan) -> Generator[str, None, torch.Tensor]:
        """Run the pass, yielding after each attention and MLP block; returns the logits of
        `plan.logit_rows` [R, vocab] (the caller samples)."""
        start, end = plan.prefill_layers
        num_layers, p = self.arch.num_layers, plan.num_prefill_tokens
        rows = plan.input_ids if start == 0 else plan.input_ids[p:]
        x = self.embed.index_select(0, rows)
        residual: torch.Tensor | None = None
        for index, layer in enumerate(self.layers):
            if index == start and start > 0 and p:  # the cohort rejoins with its saved state
                parked = [self.saved.pop(rid) for rid in plan.prefill_ids]
                x = torch.cat([*(px for px, _ in parked), x])
                res = [pr for _, pr in parked] + ([residual] if residual is not None else [])
                residual = torch.cat(res)
            with_prefill = start <= index < end and p > 0
            if x.shape[0]:  # (empty: a layer outside the cohort's group, with no decodes)
                x, residual = self._attention(index, layer, x, residual, plan, with_prefill)
            yield "attention"
            if x.shape[0]:
                assert residual is not None
                x, residual = self._mlp(layer, x, residual)
            yield "mlp"
            if index == end - 1 and end < num_layers and p:  # park the cohort until next step
                assert residual is not None
                for rid, xs, rs in zip(plan.prefill_ids, x[:p].split(plan.prefill_lens),
                                       residual[:p].split(plan.prefill_lens), strict=True):
                    self.saved[rid] = (xs, rs)
                x, residual = x[p:], residual[p:]
        if not len(plan.logit_rows):
            return torch.empty((0, self.arch.vocab_size), dtype=self.dtype, device=self.device)
        out, _ = K.rmsnorm(x, self.final_norm, residual=residual)
        local = plan.logit_rows if end == num_layers else plan.logit_rows - p
        return K.gemm(out.index_select(0, local), self.lm_head, num_sms=self.num_sms)

    def _attention(self, index: int, layer: dict[str, torch.Tensor], x: torch.Tensor,
                   residual: torch.Tensor | None, plan: Plan, with_prefill: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        arch, p = self.arch, plan.num_prefill_tokens
        if residual is None:
            h, residual = K.rmsnorm(x, layer["ln1"])[0], x
        else:
            h, new_residual = K.rmsnorm(x, layer["ln1"], residual=residual)
            assert new_residual is not None
            residual = new_residual
        lo = 0 if with_prefill else p  # rows of this layer: [lo, T) of the plan
        qkv = K.gemm(h, layer["wqkv"], num_sms=self.num_sms)  # [T, (Hq + 2 Hkv) D]
        t, d = qkv.shape[0], arch.head_dim
        q = qkv[:, : arch.q_size].view(t, arch.num_heads, d)
        k = qkv[:, arch.q_size: arch.q_size + arch.kv_size].view(t, arch.num_kv_heads, d)
        v = qkv[:, arch.q_size + arch.kv_size:].view(t, arch.num_kv_heads, d)
        if arch.qk_norm:
            q = K.rmsnorm(q.reshape(-1, d), layer["q_norm"])[0].view(t, arch.num_heads, d)
            k = K.rmsnorm(k.reshape(-1, d), layer["k_norm"])[0].view(t, arch.num_kv_heads, d)
        K.rope(q, k, plan.positions[lo:], self.inv_freq)
        K.kv_cache_write(k, v, self.k_cache[index], self.v_cache[index], plan.slot_mapping[lo:])
        out = torch.empty_like(q)
        if with_prefill:
            K.prefill_attention(q[:p], self.k_cache[index], self.v_cache[index],
                                plan.prefill_block_tables, plan.cu_seqlens_q, plan.prefix_lens,
                                plan.max_seqlen_q, out=out[:p])
        if t > (p if with_prefill else 0):
            dq = q[p:] if with_prefill else q
            K.decode_attention(dq, self.k_cache[index], self.v_cache[index],
                               plan.decode_block_tables, plan.decode_context_lens,
                               plan.max_decode_context, num_sms=self.num_sms,
                               out=out[p:] if with_prefill else out)
        o = K.gemm(out.view(t, arch.q_size), layer["wo"], num_sms=self.num_sms)
        return o, residual

    def _mlp(self, layer: dict[str, torch.Tensor], x: torch.Tensor, residual: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        h, new_residual = K.rmsnorm(x, layer["ln2"], residual=residual)
        assert new_residual is not None
        if self.arch.is_moe:
            logits = K.gemm(h, layer["router"], num_sms=self.num_sms)
            weights, ids = K.topk_softmax(logits, self.arch.num_experts_per_tok)
            return K.fused_moe(h, layer["w13"], layer["w2"], weights, ids), new_residual
        act = K.silu_and_mul(K.gemm(h, layer["w_gate_up"], num_sms=self.num_sms))
        return K.gemm(act, layer["w_down"], num_sms=self.num_sms), new_residual
