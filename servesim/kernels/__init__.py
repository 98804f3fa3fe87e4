"""Triton kernels for every operator of dense and MoE transformers, each with a torch reference.

Each module holds private `_x_kernel`s, a public launcher that checks shapes, strides and dtypes
(ValueError on bad input) and a torch `x_ref`. Launchers whose grid depends on the machine take
`num_sms`, the SM budget of the partition they run in. This package imports only torch, triton
and the standard library.
"""

from servesim.kernels._common import resolve_num_sms
from servesim.kernels.activation import silu_and_mul, silu_and_mul_ref
from servesim.kernels.attention_decode import (
    decode_attention,
    decode_attention_ref,
    decode_num_splits,
    decode_split_plan,
)
from servesim.kernels.attention_prefill import prefill_attention, prefill_attention_ref
from servesim.kernels.configs import GemmConfig, gemm_config
from servesim.kernels.gemm import gemm, gemm_ref
from servesim.kernels.kv_cache import kv_cache_write, kv_cache_write_ref, slot_mapping_for
from servesim.kernels.moe import (
    fused_moe,
    fused_moe_ref,
    moe_align,
    topk_softmax,
    topk_softmax_ref,
)
from servesim.kernels.norm import rmsnorm, rmsnorm_ref
from servesim.kernels.rope import rope, rope_inv_freq, rope_ref

__all__ = [
    "GemmConfig",
    "decode_attention",
    "decode_attention_ref",
    "decode_num_splits",
    "decode_split_plan",
    "resolve_num_sms",
    "fused_moe",
    "fused_moe_ref",
    "gemm",
    "gemm_config",
    "gemm_ref",
    "kv_cache_write",
    "kv_cache_write_ref",
    "moe_align",
    "prefill_attention",
    "prefill_attention_ref",
    "rmsnorm",
    "rmsnorm_ref",
    "rope",
    "rope_inv_freq",
    "rope_ref",
    "silu_and_mul",
    "silu_and_mul_ref",
    "slot_mapping_for",
    "topk_softmax",
    "topk_softmax_ref",
]
