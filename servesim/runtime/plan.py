"""Host-side construction of a forward pass from a policy's step: packed rows, positions, KV
slots and block tables (the same layout the kernels and the profiler use). Vectorised with
torch on the host, then copied once per tensor, as a real engine's input preparation is."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from servesim.policies.base import Step
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import Plan


def _tables(tables: list[list[int]]) -> torch.Tensor:
    """Block tables as one zero-padded int32 matrix, filled in one vectorised step."""
    lens = np.fromiter(map(len, tables), dtype=np.int64, count=len(tables))
    width = int(lens.max(initial=0)) or 1
    out = np.zeros((len(tables), width), dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int32, count=int(lens.sum()))
    out[np.arange(width) < lens[:, None]] = flat
    return torch.from_numpy(out)


def build_plan(step: Step, blocks: BlockTables, block_size: int, num_layers: int, vocab: int,
               device: torch.device) -> Plan:
    """The plan of `step` (KV already allocated for it). Token ids are a function of the position
    (only shapes matter for timing; a fixed id per position keeps any split of a prompt
    computing the same thing)."""
    layers = step.prefill_layers or (0, num_layers)
    full = layers[1] >= num_layers
    lens = [n for _, n in step.prefills]
    starts = [r.num_computed_tokens for r, _ in step.prefills]
    pre_tables = _tables([blocks.tables[r.request_id] for r, _ in step.prefills])
    cu = torch.tensor([0, *lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.int64))
    offset_in_chunk = torch.arange(int(cu[-1]), dtype=torch.int64) - cu[:-1].long()[seq]
    pre_pos = torch.tensor(starts, dtype=torch.int64)[seq] + offset_in_chunk
    pre_slots = pre_tables[seq, pre_pos // block_size].long() * block_size + pre_pos % block_size
    dec_tables = _tables([blocks.tables[r.request_id] for r in step.decodes])
    dec_pos = torch.tensor([r.num_computed_tokens for r in step.decodes], dtype=torch.int64)
    rows = torch.arange(len(step.decodes))
    dec_slots = dec_tables[rows, dec_pos // block_size].long() * block_size + dec_pos % block_size
    p = int(cu[-1])
    logit_rows = [int(cu[i + 1]) - 1 for i, (r, n) in enumerate(step.prefills)
                  if full and n == r.prefill_left] + [p + i for i in range(len(step.decodes))]
    positions = torch.cat([pre_pos, dec_pos])
    return Plan(
        input_ids=((positions * 7919 + 13) % vocab).to(device),  # a fixed token per position
        positions=positions.to(device), slot_mapping=torch.cat([pre_slots, dec_slots]).to(device),
        num_prefill_tokens=p, cu_seqlens_q=cu.to(device),
        prefix_lens=torch.tensor(starts, dtype=torch.int32).to(device),
        prefill_block_tables=pre_tables.to(device), max_seqlen_q=max(lens, default=0),
        decode_block_tables=dec_tables.to(device),
        decode_context_lens=(dec_pos + 1).to(torch.int32).to(device),
        max_decode_context=int(dec_pos.max()) + 1 if len(dec_pos) else 0,
        logit_rows=torch.tensor(logit_rows, dtype=torch.int64).to(device), prefill_layers=layers,
        prefill_ids=tuple(r.request_id for r, _ in step.prefills), prefill_lens=tuple(lens),
    )
