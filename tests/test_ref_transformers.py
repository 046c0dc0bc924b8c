"""python_ref against Hugging Face transformers' own KimiLinearForCausalLM (an independent implementation).

A small random KimiLinearConfig model (KDA and MLA layers, a dense first layer, MoE with a shared
expert, a nonzero router correction bias) with weights scaled like a trained model's, in float64.
transformers runs its KDA, norms, router and softmax in float32 even then, so agreement is ~1e-7,
well inside the 5e-5 budget. Three checkpoints of the same weights are read back:

* what ``save_pretrained`` writes (native config keys, original tensor names, the dense layer saved
  as ``block_sparse_moe.``) -- the "transformers dialect" checkpoint;
* a Moonshot-dialect checkpoint (``linear_attn_config`` + ``first_k_dense_replace``, original
  names, sharded with an index) written here from the same tensors;
* transformers' in-memory names (fused conv1d, forget_gate.*, stacked experts) saved directly.
"""
import json
import math

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from kimi_gguf.checkpoint import HFCheckpoint  # noqa: E402
from kimi_gguf.python_ref.model import KimiLinearRef  # noqa: E402

LAYER_TYPES = ["linear_attention", "linear_attention", "linear_attention", "full_attention", "linear_attention"]
T = 70  # longer than one KDA chunk (64), not a multiple of it


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    cfg = KimiLinearConfig(
        vocab_size=120, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=len(LAYER_TYPES), num_attention_heads=2, num_key_value_heads=2,
        num_local_experts=6, num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=2.446,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, kv_lora_rank=24,
        linear_head_dim=16, linear_num_heads=2, linear_conv_kernel_dim=4, rms_norm_eps=1e-5,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        layer_types=LAYER_TYPES, mlp_layer_types=["dense"] + ["sparse"] * (len(LAYER_TYPES) - 1))
    torch.manual_seed(1234)
    model = KimiLinearForCausalLM(cfg)
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():  # trained-looking scales instead of the 0.02 init
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "A_log" in name or "dt_bias" in name:
                continue  # transformers' FLA-style init already gives realistic decays
            elif "conv1d" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
    model = model.double().eval()
    model.config._experts_implementation = "eager"  # the grouped-matmul path rejects float64
    tf_dir = tmp_path_factory.mktemp("hf") / "tf"
    model.save_pretrained(tf_dir)
    ids = torch.randint(3, cfg.vocab_size, (1, T), generator=gen)
    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
    return {"model": model, "dir": tf_dir, "ids": ids[0].numpy(), "logits": logits, "cfg": cfg}


def test_save_pretrained_checkpoint_matches_transformers(hf):
    src = HFCheckpoint(hf["dir"])
    assert src.spec.config_dialect == "transformers"
    # save_pretrained stores the dense layer under block_sparse_moe.; the reader maps it back
    stored = json.dumps(sorted(src._refs[n].stored for n in src.keys()))
    assert "layers.0.block_sparse_moe.gate_proj" in stored
    ref = KimiLinearRef(None, src, dialect="transformers")
    out = ref.logits(hf["ids"])
    assert out.shape == hf["logits"].shape
    print(f"\nsave_pretrained checkpoint, dialect transformers: max rel err {rel(out, hf['logits']):.3g}")
    assert rel(out, hf["logits"]) < 5e-5
    # The torch backend of the reference agrees as well
    out_t = KimiLinearRef(None, src, backend="torch", dtype="float64", dialect="transformers").logits(hf["ids"])
    assert rel(out_t, hf["logits"]) < 5e-5


def test_default_dialect_within_budget(hf):
    # default = vLLM's choices; it differs from transformers only in the kv_a_layernorm eps
    # (rms_norm_eps vs 1e-6), which is far below the budget on model-like activations
    out = KimiLinearRef(None, HFCheckpoint(hf["dir"]), dialect="default").logits(hf["ids"])
    err = rel(out, hf["logits"])
    print(f"\ndialect default vs transformers: max rel err {err:.3g}")
    assert err < 5e-5


def test_transformers_mla_uses_kv_a_eps_1e6(hf):
    # transformers 5.x builds kv_a_layernorm without an eps argument (1e-6), not rms_norm_eps.
    # On the MLA block alone (same input), the transformers dialect matches to float32 rounding
    # while default (eps 1e-5) is off by the eps effect.
    layer = LAYER_TYPES.index("full_attention")
    seen = {}

    def hook(module, args, kwargs, output):
        seen["x"] = kwargs["hidden_states"][0].detach().numpy().copy()
        seen["y"] = output[0][0].detach().numpy().copy()

    handle = hf["model"].model.layers[layer].self_attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf["model"](torch.as_tensor(hf["ids"][None]))
    finally:
        handle.remove()
    src = HFCheckpoint(hf["dir"])
    errs = {}
    for d in ("transformers", "default"):
        ref = KimiLinearRef(None, src, dialect=d)
        y, _ = ref.attn(layer, seen["x"], ref.new_state().layers[layer])
        errs[d] = rel(y, seen["y"])
    print(f"\nMLA block vs transformers: {errs}")
    assert errs["transformers"] < 1e-6 < errs["default"]
    assert errs["default"] > 5 * errs["transformers"]


def _moonshot_config(cfg) -> dict:
    kda = [i + 1 for i, t in enumerate(LAYER_TYPES) if t == "linear_attention"]
    mla = [i + 1 for i, t in enumerate(LAYER_TYPES) if t == "full_attention"]
    return {
        "architectures": ["KimiLinearForCausalLM"], "model_type": "kimi_linear",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.moe_intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": 2, "num_key_value_heads": 2, "num_experts": 6, "num_experts_per_token": 2,
        "num_shared_experts": 1, "routed_scaling_factor": 2.446, "moe_renormalize": True,
        "moe_router_activation_func": "sigmoid", "num_expert_group": 1, "topk_group": 1,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "q_lora_rank": None,
        "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "kv_lora_rank": 24,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "mla_use_nope": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "linear_attn_config": {"kda_layers": kda, "full_attn_layers": mla, "head_dim": 16,
                               "num_heads": 2, "short_conv_kernel_size": 4},
    }


def test_moonshot_dialect_checkpoint_matches_transformers(hf, tmp_path):
    # same tensors, original names (dense layer under mlp.), Moonshot config, 2 shards + index
    plain = HFCheckpoint(hf["dir"])
    names = plain.keys()
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, part in shards.items():
        save_file({n: plain.get_torch(n) for n in part}, str(tmp_path / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(_moonshot_config(hf["cfg"])))
    src = HFCheckpoint(tmp_path)
    assert src.spec.config_dialect == "moonshot"
    assert src.spec.layers == plain.spec.layers
    assert src._refs["model.layers.0.mlp.gate_proj.weight"].stored == "model.layers.0.mlp.gate_proj.weight"
    out = KimiLinearRef(None, src, dialect="transformers").logits(hf["ids"])
    print(f"\nMoonshot-dialect checkpoint, dialect transformers: max rel err {rel(out, hf['logits']):.3g}")
    assert rel(out, hf["logits"]) < 5e-5


def test_native_state_dict_names_read_identically(hf, tmp_path):
    # transformers' in-memory naming: fused conv1d, forget_gate.*, mlp.experts.gate_up_proj/down_proj
    sd = {k: v.contiguous() for k, v in hf["model"].state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in sd and "model.layers.0.self_attn.conv1d.weight" in sd
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf["dir"] / "config.json").read_text())
    native, plain = HFCheckpoint(tmp_path), HFCheckpoint(hf["dir"])
    assert native.keys() == plain.keys()
    for name in plain.keys():
        assert np.array_equal(native.get(name), plain.get(name)), name
