"""Physical KV blocks behind the serving state's block counts: a free list, and each request's
block table grown or shrunk to the count the shared bookkeeping says it holds."""

from __future__ import annotations

from servesim.request import Request


class BlockTables:
    """Which physical blocks each request holds."""

    def __init__(self, num_blocks: int) -> None:
        self.free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self.tables: dict[int, list[int]] = {}

    def sync(self, req: Request) -> list[int]:
        """Make the request's table hold exactly req.kv_blocks blocks; return it."""
        table = self.tables.setdefault(req.request_id, [])
        while len(table) < req.kv_blocks:
            table.append(self.free.pop())
        while len(table) > req.kv_blocks:
            self.free.append(table.pop())
        if not table:
            del self.tables[req.request_id]
        return table
