"""Host-side construction of a forward pass from a policy's step: packed rows, positions, KV
slots and block tables (the same layout the kernels and the profiler use). Vectorised with
numpy on the host, then copied once per tensor, as a real engine's input preparation is."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from servesim.policies.base import Step
from servesim.runtime.blocks import BlockTables
from servesim.runtime.model import TABLE_ALIGN, Plan


def _tables(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one zero-padded int32 matrix, filled in one vectorised step."""
    lens = np.fromiter(map(len, tables), dtype=np.int64, count=len(tables))
    width = -(-max(int(lens.max(initial=0)), 1) // TABLE_ALIGN) * TABLE_ALIGN
    out = np.zeros((len(tables), width), dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int32, count=int(lens.sum()))
    out[np.arange(width) < lens[:, None]] = flat
    return out


def build_plan(step: Step, blocks: BlockTables, block_size: int, num_layers: int, vocab: int,
               device: torch.device) -> Plan:
    """The plan of `step` (KV already allocated for it). Token ids are a function of the position
    (only shapes matter for timing; a fixed id per position keeps any split of a prompt
    computing the same thing). The index arithmetic runs in numpy: torch's CPU gathers cost
    ~8 ms per 4k rows (a host stall before every long prefill), numpy's microseconds."""
    layers = step.prefill_layers or (0, num_layers)
    full = layers[1] >= num_layers
    lens = np.array([n for _, n in step.prefills], dtype=np.int64)
    starts = np.array([r.num_computed_tokens for r, _ in step.prefills], dtype=np.int64)
    pre_tables = _tables([blocks.tables[r.request_id] for r, _ in step.prefills])
    cu = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    seq = np.repeat(np.arange(len(lens)), lens)
    pre_pos = starts[seq] + (np.arange(cu[-1], dtype=np.int64) - cu[:-1][seq])
    pre_slots = pre_tables[seq, pre_pos // block_size].astype(np.int64) * block_size + pre_pos % block_size
    dec_tables = _tables([blocks.tables[r.request_id] for r in step.decodes])
    dec_pos = np.array([r.num_computed_tokens for r in step.decodes], dtype=np.int64)
    rows = np.arange(len(step.decodes))
    dec_slots = dec_tables[rows, dec_pos // block_size].astype(np.int64) * block_size + dec_pos % block_size
    p = int(cu[-1])
    logit_rows = [int(cu[i + 1]) - 1 for i, (r, n) in enumerate(step.prefills)
                  if full and n == r.prefill_left] + [p + i for i in range(len(step.decodes))]
    positions = np.concatenate([pre_pos, dec_pos])

    def dev(values: np.ndarray, dtype: np.dtype | type = np.int64) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=dtype)).to(device)

    return Plan(
        input_ids=dev((positions * 7919 + 13) % vocab),  # a fixed token per position
        positions=dev(positions), slot_mapping=dev(np.concatenate([pre_slots, dec_slots])),
        num_prefill_tokens=p, cu_seqlens_q=dev(cu, np.int32), prefix_lens=dev(starts, np.int32),
        prefill_block_tables=dev(pre_tables, np.int32), max_seqlen_q=int(lens.max(initial=0)),
        decode_block_tables=dev(dec_tables, np.int32), decode_context_lens=dev(dec_pos + 1, np.int32),
        max_decode_context=int(dec_pos.max()) + 1 if len(dec_pos) else 0,
        logit_rows=dev(np.array(logit_rows, dtype=np.int64)), prefill_layers=layers,
        prefill_ids=tuple(r.request_id for r, _ in step.prefills), prefill_lens=tuple(int(n) for n in lens),
    )
