"""Paged KV-cache accounting: a pool of fixed-size blocks, sized from GPU memory.

Capacity = GPU memory x utilization - weights - activation reserve, divided by the bytes of one
block (block_size tokens x K and V of every layer). Only counts are simulated; which physical
block holds what does not change any timing the simulator models.
"""

from __future__ import annotations

from servesim.errors import InputError


def num_kv_blocks(
    memory_bytes: float,
    utilization: float,
    weight_bytes: float,
    reserve_bytes: float,
    kv_bytes_per_token: float,
    block_size: int,
) -> int:
    """Blocks that fit; an InputError if the model leaves no room for a single block."""
    free_bytes = memory_bytes * utilization - weight_bytes - reserve_bytes
    blocks = int(free_bytes // (kv_bytes_per_token * block_size))
    if blocks < 1:
        raise InputError(
            f"hardware: the model's weights ({weight_bytes / 2**30:.1f} GiB) and activation "
            f"reserve ({reserve_bytes / 2**30:.1f} GiB) leave no KV-cache memory out of "
            f"{memory_bytes * utilization / 2**30:.1f} GiB (memory_utilization={utilization})"
        )
    return blocks


class KVCache:
    """Free-block counter with usage statistics."""

    def __init__(self, total_blocks: int, block_size: int) -> None:
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.free_blocks = total_blocks
        self.peak_used_blocks = 0

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks

    def allocate(self, num_blocks: int) -> None:
        if num_blocks > self.free_blocks:
            raise RuntimeError(
                f"policy over-allocated the KV cache: {num_blocks} blocks asked, "
                f"{self.free_blocks} free"
            )
        self.free_blocks -= num_blocks
        used = self.total_blocks - self.free_blocks
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used

    def release(self, num_blocks: int) -> None:
        self.free_blocks += num_blocks
        if self.free_blocks > self.total_blocks:
            raise RuntimeError("KV cache released more blocks than it holds")
