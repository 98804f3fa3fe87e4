"""Model architecture: what a cost model needs to know about a decoder-only transformer.

`ModelArch` is read from an HF-style config.json (dense Llama/Qwen2 and MoE Mixtral/Qwen3-MoE
spellings), or from a shipped preset (`servesim/models/presets/<name>.json`, the public configs
unchanged). It answers weight bytes, KV bytes per token and parameter counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from servesim.errors import InputError

# Bytes per element of the weight dtype named by `torch_dtype` (or `dtype`, newer configs).
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1}

# Model types whose attention projections carry biases / whose q and k are RMS-normed per head.
_QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe"})
_QK_NORM_TYPES = frozenset({"qwen3", "qwen3_moe"})


@dataclass(frozen=True, slots=True)
class ModelArch:
    """A decoder-only transformer (RMSNorm, RoPE, GQA, SwiGLU MLP or top-k MoE)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    """Dense MLP width (unused by layers that are MoE)."""
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    num_experts: int = 0
    """Routed experts per MoE layer; 0 = dense model."""
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    """Width of one routed expert's MLP."""
    shared_expert_intermediate_size: int = 0
    """Width of the always-on shared expert (Qwen2-MoE style); 0 = none."""
    attention_bias: bool = False
    """q/k/v projections have biases (Qwen2)."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k before RoPE (Qwen3)."""
    dtype_bytes: int = 2

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_size(self) -> int:
        """Width of the query projection output (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """K and V of one token in one layer."""
        return 2 * self.kv_size * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers (Llama-3.1-8B bf16: 2*32*8*128*2 = 131072)."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    @property
    def attention_params_per_layer(self) -> int:
        proj = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        bias = self.q_size + 2 * self.kv_size if self.attention_bias else 0
        norms = 2 * self.head_dim if self.qk_norm else 0
        return proj + bias + norms

    @property
    def expert_params(self) -> int:
        """One routed expert: gate, up and down projections."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def mlp_params_per_layer(self) -> int:
        if not self.is_moe:
            return 3 * self.hidden_size * self.intermediate_size
        router = self.hidden_size * self.num_experts
        shared = 3 * self.hidden_size * self.shared_expert_intermediate_size
        shared_gate = self.hidden_size if self.shared_expert_intermediate_size else 0
        return self.num_experts * self.expert_params + router + shared + shared_gate

    @property
    def params_per_layer(self) -> int:
        return self.attention_params_per_layer + self.mlp_params_per_layer + 2 * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """All parameters, counting a tied LM head once."""
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params
        final_norm = self.hidden_size
        return self.num_layers * self.params_per_layer + self.embedding_params + lm_head + final_norm

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def expert_bytes(self) -> int:
        """Weight bytes of one routed expert in one layer (Qwen3-30B-A3B: 9.44 MB)."""
        return self.expert_params * self.dtype_bytes

    @classmethod
    def from_hf_config(cls, d: dict[str, Any], name: str, where: str) -> ModelArch:
        """Read an HF config.json dict; `where` (a file or preset) prefixes every error."""
        cfg = _ConfigReader(d, where)
        num_heads = cfg.positive("num_attention_heads")
        hidden = cfg.positive("hidden_size")
        num_experts = cfg.count("num_local_experts", cfg.count("num_experts", 0))
        model_type = d.get("model_type", "")
        arch = cls(
            name=name,
            num_layers=cfg.positive("num_hidden_layers"),
            hidden_size=hidden,
            num_heads=num_heads,
            num_kv_heads=cfg.positive("num_key_value_heads", num_heads),
            head_dim=cfg.positive("head_dim", hidden // num_heads),
            intermediate_size=cfg.positive("intermediate_size"),
            vocab_size=cfg.positive("vocab_size"),
            max_position_embeddings=cfg.positive("max_position_embeddings"),
            tie_word_embeddings=cfg.flag("tie_word_embeddings", False),
            num_experts=num_experts,
            num_experts_per_tok=cfg.positive("num_experts_per_tok") if num_experts else 0,
            # Mixtral's experts use `intermediate_size`; Qwen-MoE names the expert width apart.
            moe_intermediate_size=(
                cfg.positive("moe_intermediate_size", cfg.positive("intermediate_size"))
                if num_experts
                else 0
            ),
            shared_expert_intermediate_size=cfg.count("shared_expert_intermediate_size", 0),
            attention_bias=cfg.flag("attention_bias", model_type in _QKV_BIAS_TYPES),
            qk_norm=model_type in _QK_NORM_TYPES,
            dtype_bytes=cfg.dtype_bytes(),
        )
        _check_consistent(arch, cfg)
        return arch


class _ConfigReader:
    """Typed access to a config dict; every error names the file and the key."""

    def __init__(self, d: dict[str, Any], where: str) -> None:
        if not isinstance(d, dict):
            raise InputError(f"{where}: a model config must be a JSON object")
        self.d = d
        self.where = where

    def fail(self, key: str, why: str) -> InputError:
        return InputError(f"{self.where}: key '{key}' {why}")

    def count(self, key: str, default: int) -> int:
        """A non-negative integer (absent or null -> default)."""
        value = self.d.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"must be a non-negative integer, got {value!r}")
        return value

    def positive(self, key: str, default: int | None = None) -> int:
        """A positive integer; absent or null is an error unless a default is given."""
        if self.d.get(key) is None:
            if default is None:
                raise self.fail(key, "is missing")
            return default
        value = self.count(key, 0)
        if value == 0:
            raise self.fail(key, "must be a positive integer, got 0")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.d.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def dtype_bytes(self) -> int:
        key = "torch_dtype" if "torch_dtype" in self.d else "dtype"
        value = self.d.get(key, "bfloat16")
        if value not in _DTYPE_BYTES:
            known = ", ".join(sorted(_DTYPE_BYTES))
            raise self.fail(key, f"must be one of {known}, got {value!r}")
        return _DTYPE_BYTES[value]


def _check_consistent(arch: ModelArch, cfg: _ConfigReader) -> None:
    if arch.num_heads % arch.num_kv_heads:
        raise cfg.fail(
            "num_key_value_heads",
            f"({arch.num_kv_heads}) must divide num_attention_heads ({arch.num_heads})",
        )
    if arch.is_moe and arch.num_experts_per_tok > arch.num_experts:
        raise cfg.fail(
            "num_experts_per_tok",
            f"({arch.num_experts_per_tok}) exceeds the number of experts ({arch.num_experts})",
        )
    if cfg.count("decoder_sparse_step", 1) != 1 or cfg.d.get("mlp_only_layers"):
        raise cfg.fail("decoder_sparse_step", "must be 1 (mixing dense and MoE layers is unsupported)")


def list_models() -> list[str]:
    """Names of the shipped presets."""
    files = _presets_dir().iterdir()
    return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))


def _presets_dir() -> Traversable:
    return resources.files("servesim.models").joinpath("presets")


def load_model(name_or_path: str) -> ModelArch:
    """A preset by name (`llama-3.1-8b`) or a config.json path (or a folder holding one)."""
    if name_or_path in list_models():
        text = _presets_dir().joinpath(f"{name_or_path}.json").read_text()
        return ModelArch.from_hf_config(_parse(text, name_or_path), name_or_path, name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        known = ", ".join(list_models())
        raise InputError(
            f"unknown model '{name_or_path}': not a preset ({known}) nor a config.json file"
        )
    name = path.parent.name if path.name == "config.json" else path.stem
    return ModelArch.from_hf_config(_parse(path.read_text(), str(path)), name, str(path))


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: a model config must be a JSON object")
    return data
