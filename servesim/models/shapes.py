"""The contract between the simulator and every cost model: what one forward pass processes
(`BatchShape`) and what it costs (`BatchCost`, `OpCost`).

A batch is a set of prefill chunks (each with the KV prefix it attends to) plus decodes (one
token each, attending to their whole context). Layered prefill runs the prefill chunks through
only some layers in one step; decodes always run every layer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchShape:
    """The work of one forward pass (one scheduler iteration)."""

    prefill_tokens: tuple[int, ...] = ()
    """New prompt tokens of each prefill chunk in the batch."""
    prefill_prefix: tuple[int, ...] = ()
    """Tokens already in the KV cache before each chunk (same length as prefill_tokens)."""
    num_decodes: int = 0
    """Sequences decoding one token each."""
    decode_context: int = 0
    """Sum over the decodes of their context length in tokens (KV read per layer)."""
    max_decode_context: int = 0
    """Longest decode context in tokens (split-KV decode kernels care)."""
    num_logits: int = 0
    """Sequences whose last token goes through the LM head and sampler this step."""
    prefill_layers: tuple[int, int] | None = None
    """[start, end) layers the prefill chunks pass through (layered prefill); None = all."""

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.prefill_tokens)

    @property
    def num_tokens(self) -> int:
        """Tokens through the linear layers of a layer that runs everything."""
        return sum(self.prefill_tokens) + self.num_decodes

    @property
    def is_empty(self) -> bool:
        return not self.prefill_tokens and self.num_decodes == 0


@dataclass(frozen=True, slots=True)
class Corunner:
    """What runs at the same time on the complementary SM partition of the same GPU."""

    batch: BatchShape
    sms: int


@dataclass(frozen=True, slots=True)
class OpCost:
    """One operator of one layer (layer -1: before the first layer, num_layers: after the last)."""

    layer: int
    name: str
    seconds: float
    flops: float
    hbm_bytes: float


@dataclass(frozen=True, slots=True)
class BatchCost:
    """The cost of one forward pass, with its breakdown."""

    total_s: float
    layer_s: tuple[float, ...]
    ops: tuple[OpCost, ...]
    flops: float
    hbm_bytes: float
    expert_bytes: float = 0.0
    """Bytes of MoE expert weights read from HBM (0 for dense models)."""
    extrapolated: int = 0
    """Operator lookups that fell outside a profiled grid (0 for analytic models)."""
