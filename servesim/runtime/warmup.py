"""Compile every kernel variant a run will need before the clock starts: Triton compiles on
first use (seconds per variant), which would otherwise land inside measured iterations. The
shapes cover the GEMM M buckets (multiples of 16 and not, since Triton specialises integer
arguments on divisibility by 16), single and packed prefills with prefixes, and decode batches
with short and long contexts, and every split count decode attention can choose (a constexpr:
one binary each, up to 2 x 64 of them, so a long run would otherwise compile mid-measurement)."""

from __future__ import annotations

import torch

from servesim import kernels as K
from servesim.policies.base import EngineLimits, Step
from servesim.request import Request
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import RuntimeModel
from servesim.runtime.plan import build_plan

PREFILL_TOKENS = (1, 7, 16, 33, 64, 100, 128, 250, 256, 500, 512, 1000, 1024, 2000, 2048,
                  4000, 4096, 8000, 8192, 16000, 16384)
DECODE_BATCHES = (1, 3, 16, 31, 64, 100, 128, 250, 256)


def _drain(model: RuntimeModel, step: Step, blocks: BlockTables, limits: EngineLimits) -> None:
    run = model.forward(build_plan(step, blocks, limits.block_size, limits.num_layers,
                                   model.arch.vocab_size, model.device))
    for _ in run:
        pass


def warm_up(model: RuntimeModel, limits: EngineLimits, max_prompt: int) -> None:
    """Run one pass per warm-up shape (up to `max_prompt` tokens), then synchronise."""
    blocks = BlockTables(limits.total_blocks)
    bs, rid = limits.block_size, 10**9
    for n in (t for t in PREFILL_TOKENS if t <= max(max_prompt, 1)):
        for prefix in (0, 3 * bs + 5):
            req = Request(rid, 0.0, prefix + n, 1)
            req.num_computed_tokens, req.kv_blocks = prefix, -(-(prefix + n) // bs)
            if req.kv_blocks > len(blocks.free):
                continue
            blocks.sync(req)
            _drain(model, Step(prefills=[(req, n)]), blocks, limits)
            req.kv_blocks = 0
            blocks.sync(req)
    for batch in DECODE_BATCHES:
        for context in (17, 2049):
            reqs = [Request(rid + i, 0.0, context, 2) for i in range(batch)]
            if batch * -(-(context + 1) // bs) > len(blocks.free):
                continue
            for r in reqs:
                r.num_computed_tokens, r.num_generated_tokens = context, 1
                r.prefill_target = context
                r.kv_blocks = -(-(context + 1) // bs)
                blocks.sync(r)
            _drain(model, Step(decodes=reqs), blocks, limits)
            for r in reqs:
                r.kv_blocks = 0
                blocks.sync(r)
    compile_decode_splits(model, limits, model.num_sms)
    compile_logits(model, model.num_sms, max(DECODE_BATCHES))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def compile_decode_splits(model: RuntimeModel, limits: EngineLimits, num_sms: int | None) -> None:
    """Decode attention once per split count it can pick on `num_sms` SMs (None: the whole
    GPU) for any batch and context here: one sequence whose context is just long enough for
    each count."""
    arch, bs = model.arch, limits.block_size
    sms = num_sms or K.resolve_num_sms(None, model.device)
    counts = {K.decode_num_splits(1, arch.num_kv_heads, c, sms)
              for c in range(256, limits.max_model_len + 1, 256)}
    q = torch.zeros((1, arch.num_heads, arch.head_dim), device=model.device, dtype=model.dtype)
    for splits in sorted(counts - {1}):
        context = 256 * splits
        table = torch.zeros((1, -(-context // bs)), device=model.device, dtype=torch.int32)
        lens = torch.full((1,), context, device=model.device, dtype=torch.int32)
        K.decode_attention(q, model.k_cache[0], model.v_cache[0], table, lens, context,
                           num_sms=num_sms)


def compile_logits(model: RuntimeModel, num_sms: int | None, max_rows: int) -> None:
    """The LM-head GEMM (launched outside the graphs) at every row count up to max_rows on
    `num_sms` SMs: its tile and split choices, and Triton's specialisation of the row count,
    differ between counts, and any one met first while serving would compile mid-step."""
    x = torch.zeros((max_rows, model.arch.hidden_size), device=model.device, dtype=model.dtype)
    for rows in range(1, max_rows + 1):
        K.gemm(x[:rows], model.lm_head, num_sms=num_sms)
