"""Shared pytest fixtures. Each helper adds its own below; keep each one compact."""
from __future__ import annotations

import pytest


# --- tiny checkpoint (owner: tokenizer/tiny) -------------------------------------------------
@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The embedded tiny checkpoint (Moonshot layout, seed 0), written once per test session.
    Treat it as read-only; copy it to a tmp dir before modifying anything."""
    from kimi_gguf.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "kimi-tiny", seed=0)


# --- transformers save_pretrained checkpoints (owner: converter) -----------------------------
@pytest.fixture(scope="session")
def hf_saved_dirs(tmp_path_factory, tiny_dir):
    """A small random transformers KimiLinearForCausalLM (float32, trained-looking scales) written by
    `save_pretrained` (native config keys; dense layer saved as block_sparse_moe.), with the tiny
    checkpoint's tokenizer files, plus a copy whose config.json is rewritten in the Moonshot dialect.
    Returns {"transformers": dir, "moonshot": dir}."""
    import json
    import math
    import shutil

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from kimi_gguf.spec import ModelSpec

    vocab = ModelSpec.from_dir(tiny_dir).vocab_size
    types = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"]
    cfg = transformers.KimiLinearConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=len(types), num_attention_heads=2, num_key_value_heads=2,
        num_local_experts=6, num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=2.446,
        qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=32, kv_lora_rank=32,
        linear_head_dim=32, linear_num_heads=2, linear_conv_kernel_dim=4, rms_norm_eps=1e-5,
        pad_token_id=vocab - 1, bos_token_id=vocab - 256, eos_token_id=vocab - 254,
        tie_word_embeddings=False, layer_types=types,
        mlp_layer_types=["dense"] + ["sparse"] * (len(types) - 1))
    torch.manual_seed(4321)
    model = transformers.KimiLinearForCausalLM(cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "A_log" in name or "dt_bias" in name:
                continue
            elif "conv1d" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
    root = tmp_path_factory.mktemp("hf_saved")
    tf_dir = root / "transformers"
    model.save_pretrained(tf_dir)
    for f in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_dir / f, tf_dir / f)
    ms_dir = root / "moonshot"
    shutil.copytree(tf_dir, ms_dir)
    c = json.loads((tf_dir / "config.json").read_text())
    for k in ("layer_types", "mlp_layer_types", "linear_head_dim", "linear_num_heads", "linear_conv_kernel_dim"):
        c.pop(k, None)
    c["linear_attn_config"] = {"kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
                               "full_attn_layers": [i + 1 for i, t in enumerate(types) if t == "full_attention"],
                               "head_dim": 32, "num_heads": 2, "short_conv_kernel_size": 4}
    c["first_k_dense_replace"] = 1
    (ms_dir / "config.json").write_text(json.dumps(c))
    return {"transformers": tf_dir, "moonshot": ms_dir}


# --- tiny GGUF (owner: bridge) ---------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_dir):
    """The tiny checkpoint converted once per session to an f32 GGUF (read-only)."""
    from kimi_gguf.convert.api import convert_model

    out = tmp_path_factory.mktemp("tiny_gguf") / "kimi-tiny-f32.gguf"
    convert_model(tiny_dir, str(out), "f32")
    return out
