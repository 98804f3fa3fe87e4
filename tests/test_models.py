"""Model architectures and their operator lists: parameter counts, KV bytes, FLOPs and bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servesim.errors import InputError
from servesim.models.arch import ModelArch, list_models, load_model
from servesim.models.ops import (
    expected_experts_hit,
    forward_ops,
    gemm,
    layer_ops,
    prefill_attention,
)
from servesim.models.shapes import BatchShape

# Published sizes (model cards / HF parameter counts), in billions.
PUBLISHED_PARAMS_B = {
    "llama-3.1-8b": 8.03,
    "qwen2.5-32b": 32.8,
    "mixtral-8x7b": 46.7,
    "qwen3-30b-a3b": 30.5,
}

LLAMA_CONFIG = json.loads(
    (Path(__file__).parents[1] / "servesim/models/presets/llama-3.1-8b.json").read_text()
)


def test_presets_are_listed() -> None:
    assert list_models() == sorted(PUBLISHED_PARAMS_B)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_B))
def test_parameter_counts_match_published_sizes(name: str) -> None:
    arch = load_model(name)
    assert arch.params / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.02)
    assert arch.weight_bytes == 2 * arch.params


def test_kv_bytes_per_token() -> None:
    llama = load_model("llama-3.1-8b")
    assert llama.kv_bytes_per_token == 131072  # 2 (K, V) * 32 layers * 8 heads * 128 * 2 B
    assert llama.kv_bytes_per_token_per_layer == 4096
    assert load_model("qwen3-30b-a3b").kv_bytes_per_token == 2 * 48 * 4 * 128 * 2


def test_moe_fields() -> None:
    mixtral, qwen3 = load_model("mixtral-8x7b"), load_model("qwen3-30b-a3b")
    assert (mixtral.num_experts, mixtral.num_experts_per_tok) == (8, 2)
    assert mixtral.moe_intermediate_size == 14336  # Mixtral's experts use intermediate_size
    assert (qwen3.num_experts, qwen3.num_experts_per_tok, qwen3.head_dim) == (128, 8, 128)
    assert qwen3.expert_bytes == 3 * 2048 * 768 * 2  # 9.44 MB (policies.md 4.3)
    assert qwen3.qk_norm and not load_model("llama-3.1-8b").is_moe


def test_gemm_flops_and_bytes() -> None:
    op = gemm("x", m=7, n=96, k=40, dtype_bytes=2)
    assert op.flops == 2 * 7 * 96 * 40
    assert op.weight_bytes == 96 * 40 * 2
    assert op.hbm_bytes == (96 * 40 + 7 * 40 + 7 * 96) * 2


def test_prefill_attention_flops_are_exact_for_causal_chunks() -> None:
    arch = load_model("llama-3.1-8b")
    q_tokens, prefix_tokens = 5, 3
    attended = sum(prefix_tokens + i + 1 for i in range(q_tokens))  # token i sees prefix + i + 1
    op = prefill_attention(arch, q_tokens, prefix_tokens)
    assert op.flops == 4 * arch.num_heads * arch.head_dim * attended
    kv_bytes = (prefix_tokens + q_tokens) * arch.kv_bytes_per_token_per_layer
    assert op.hbm_bytes == kv_bytes + 2 * q_tokens * arch.q_size * 2


def test_expected_experts_hit_matches_uniform_routing() -> None:
    # policies.md 4.3: uniform routing covers 64% / 87% / 98% / 100% of 128 experts (top-8).
    coverage = [expected_experts_hit(128, 8, t) / 128 for t in (16, 32, 64, 128)]
    assert coverage == pytest.approx([0.64, 0.87, 0.98, 1.0], abs=0.01)
    assert expected_experts_hit(128, 8, 0) == 0.0


def _moe_weight_bytes(arch: ModelArch, num_decodes: int) -> float:
    batch = BatchShape(num_decodes=num_decodes, decode_context=num_decodes * 100)
    return sum(op.weight_bytes for op in layer_ops(arch, batch, 0) if op.kind == "moe_gemm")


def test_moe_bytes_grow_with_distinct_experts() -> None:
    arch = load_model("qwen3-30b-a3b")
    weights = [_moe_weight_bytes(arch, t) for t in (1, 4, 16, 64, 512)]
    assert weights == sorted(weights) and len(set(weights)) == len(weights)
    assert weights[0] == pytest.approx(8 * arch.expert_bytes)  # one token reads its 8 experts
    assert weights[-1] == pytest.approx(128 * arch.expert_bytes, rel=1e-3)


def test_layers_outside_prefill_range_run_only_decodes() -> None:
    arch = load_model("llama-3.1-8b")
    batch = BatchShape(prefill_tokens=(100,), prefill_prefix=(0,), num_decodes=3,
                       decode_context=300, num_logits=3, prefill_layers=(0, 8))
    inside, outside = layer_ops(arch, batch, 7), layer_ops(arch, batch, 8)
    assert [op.kind for op in inside].count("attn_prefill") == 1
    assert "attn_prefill" not in [op.kind for op in outside]
    assert next(op for op in inside if op.name == "qkv").shape["m"] == 103
    assert next(op for op in outside if op.name == "qkv").shape["m"] == 3


def test_forward_ops_ends_and_weights_read_once() -> None:
    arch = load_model("llama-3.1-8b")
    batch = BatchShape(num_decodes=1, decode_context=10, num_logits=1)
    ops = forward_ops(arch, batch)
    assert ops[0] == (-1, ops[0][1]) and ops[0][1].kind == "embed"
    assert [op.name for layer, op in ops if layer == arch.num_layers] == [
        "final_norm", "lm_head", "sample"]
    # Every weight but the embedding table (a gather of one row) is read exactly once.
    weights = sum(op.weight_bytes for _, op in ops)
    assert weights == arch.weight_bytes - arch.embedding_params * arch.dtype_bytes


def test_moe_layer_op_order() -> None:
    ops = layer_ops(load_model("mixtral-8x7b"), BatchShape(num_decodes=2, decode_context=20), 0)
    assert [op.name for op in ops] == [
        "input_norm", "qkv", "rope", "kv_write", "attn_decode", "o", "post_attn_norm",
        "router", "topk_softmax", "moe_align", "moe_gate_up", "moe_silu_mul", "moe_down",
        "moe_combine",
    ]


def test_unknown_model_lists_presets() -> None:
    with pytest.raises(InputError, match="llama-3.1-8b.*qwen3-30b-a3b"):
        load_model("gpt-17")


def test_load_model_from_a_path(tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    arch = load_model(str(folder))
    assert arch.name == "my-llama"
    assert arch.params == load_model("llama-3.1-8b").params


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_attention_heads": "32"}, "num_attention_heads"),
        ({"num_key_value_heads": 7}, "num_key_value_heads"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
        ({"torch_dtype": "int3"}, "torch_dtype"),
        ({"num_local_experts": 8}, "num_experts_per_tok"),
        ({"num_local_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok"),
    ],
)
def test_bad_config_names_the_key(change: dict[str, object], key: str) -> None:
    config = {**LLAMA_CONFIG, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(InputError, match=f"cfg.json: key '{key}'"):
        ModelArch.from_hf_config(config, "bad", "cfg.json")


def test_bad_json_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="config.json: not valid JSON"):
        load_model(str(path))
