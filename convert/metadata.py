"""GGUF metadata keys for arch `kimi-linear`, exactly what llama.cpp 0c1e570 reads.

llama.cpp's loader (llama_model_base::load_hparams + llama_model_kimi_linear::load_arch_hparams)
reads: context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
attention.head_count_kv (per-layer array: 0 marks a KDA = recurrent layer, 1 an MLA layer, whose
latent KV is one shared "head"), attention.key_length / value_length (MLA cache entry: latent +
shared key part / latent), attention.key_length_mla / value_length_mla (per-head q.k and v sizes),
attention.kv_lora_rank, rope.dimension_count (the shared key part; no RoPE is applied),
attention.layer_norm_rms_eps, ssm.conv_kernel, kda.head_dim, expert_count, expert_used_count,
expert_feed_forward_length, expert_shared_count, leading_dense_block_count, expert_weights_scale,
expert_gating_func.

The project's own keys (ignored by llama.cpp) carry the hybrid layer map, the source dialect, the
converter version and the source config, so a GGUF can be read back into a ModelSpec.
"""
from __future__ import annotations

import json

import gguf

from .. import __version__
from ..names import ARCH_NAME
from ..spec import KDA, MOE, ModelSpec

K = gguf.Keys
PREFIX = "kimi_gguf."
KEY_LAYER_ATTN = PREFIX + "layer_attn"          # per layer "kda" | "mla"
KEY_LAYER_FFN = PREFIX + "layer_ffn"            # per layer "dense" | "moe"
KEY_SOURCE_DIALECT = PREFIX + "source_dialect"  # config dialect: "moonshot" | "transformers"
KEY_TENSOR_DIALECT = PREFIX + "tensor_dialect"  # tensor naming found in the checkpoint
KEY_VERSION = PREFIX + "converter_version"
KEY_CONFIG = PREFIX + "source_config"           # the checkpoint's config.json (JSON text)
KEY_KEEP_F32 = PREFIX + "keep_f32"              # GGUF names kept float32 for precision


def _k(key: str) -> str:
    return key.format(arch=ARCH_NAME)


def add_model_keys(w: gguf.GGUFWriter, spec: ModelSpec, *, name: str, file_type: int,
                   tensor_dialect: str, keep_f32: list[str]) -> None:
    m, k, e = spec.mla, spec.kda, spec.moe
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_vocab_size(spec.vocab_size)
    heads = m.num_heads if spec.mla_layers() else k.num_heads
    w.add_head_count(heads)
    w.add_head_count_kv([0 if l.attn == KDA else 1 for l in spec.layers])
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    # MLA with the absorbed (latent) KV cache
    w.add_kv_lora_rank(m.kv_lora_rank)
    w.add_key_length(m.kv_lora_rank + m.qk_rope_head_dim)
    w.add_value_length(m.kv_lora_rank)
    w.add_key_length_mla(m.qk_head_dim)
    w.add_value_length_mla(m.v_head_dim)
    w.add_rope_dimension_count(m.qk_rope_head_dim)
    # KDA
    w.add_ssm_conv_kernel(k.conv_kernel)
    w.add_kda_head_dim(k.head_dim)
    # MoE
    w.add_expert_count(e.num_experts)
    w.add_expert_used_count(e.top_k)
    w.add_expert_feed_forward_length(e.intermediate_size)
    w.add_expert_shared_count(e.num_shared_experts)
    w.add_leading_dense_block_count(spec.leading_dense_blocks)
    w.add_expert_weights_scale(e.routed_scaling_factor)
    w.add_expert_weights_norm(e.renormalize)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    # the project's own keys
    w.add_array(KEY_LAYER_ATTN, [l.attn for l in spec.layers])
    w.add_array(KEY_LAYER_FFN, [l.ffn for l in spec.layers])
    w.add_string(KEY_SOURCE_DIALECT, spec.config_dialect)
    w.add_string(KEY_TENSOR_DIALECT, tensor_dialect)
    w.add_string(KEY_VERSION, __version__)
    w.add_string(KEY_CONFIG, json.dumps(dict(spec.extra), sort_keys=True))
    if keep_f32:
        w.add_array(KEY_KEEP_F32, keep_f32)


def has_moe(spec: ModelSpec) -> bool:
    return any(l.ffn == MOE for l in spec.layers)
