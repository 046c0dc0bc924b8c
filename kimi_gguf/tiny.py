"""The embedded tiny checkpoint: a small, deterministic Kimi Linear in the ORIGINAL Moonshot layout.

What `kimi-gguf make-tiny` writes, and what every test and the demo run on:

* config.json: every key of the published config, scaled down; layer kinds in
  ``linear_attn_config`` (1-based lists, KDA, KDA, KDA, MLA, ...), ``first_k_dense_replace`` = 1;
* model-0000i-of-0000N.safetensors shards + model.safetensors.index.json, tensor names, shapes and
  dtypes as the published checkpoint (bf16 matrices and norms; A_log, dt_bias and the router's
  correction bias in float32);
* tiktoken.model (a byte-level BPE trained here on kimi_gguf/data/corpus.txt), tokenizer_config.json
  with the Kimi special-token layout, chat_template.jinja.

Weights are drawn so the model behaves like a trained one rather than like noise around zero:
projections with std ~ 1/sqrt(fan_in); norms near 1 with some spread; conv kernels that lean on
the current token; Mamba-style A_log / dt_bias so the KDA log-decay g = -exp(A_log) *
softplus(f + dt_bias) lies in about [-5, -0.005]; router with a nonzero correction bias. Each tensor
has its own random stream derived from (seed, tensor name), so the bytes depend only on the seed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import KimiError
from .tokenizer import specials as sp
from .tokenizer.bpe_train import DEFAULT_MERGES, builtin_corpus, train_bpe
from .tokenizer.files import write_tokenizer_files
from .fileio import atomic_write_bytes, current_umask as _umask

PUBLISHED_CONFIG = "data/kimi-linear-48b-a3b-instruct.config.json"
NUM_SHARDS = 3


@dataclass(frozen=True)
class TinyDims:
    hidden: int = 64
    layers: int = 8
    full_attn_every: int = 4          # 1-based layers 4, 8 are MLA (as 4, 8, ..., 24 in the real one)
    heads: int = 2                    # KDA and MLA share the head count (llama.cpp reads one n_head)
    kda_head_dim: int = 32            # multiple of 16 for the C kernels
    conv_kernel: int = 4
    qk_nope: int = 32
    qk_rope: int = 16                 # the shared key part (no RoPE applied)
    v_head_dim: int = 32
    kv_lora_rank: int = 32
    intermediate: int = 128           # dense layer 0
    experts: int = 8
    top_k: int = 2
    moe_intermediate: int = 32
    shared_experts: int = 1
    routed_scaling_factor: float = 2.446


def published_config() -> dict:
    return json.loads(resources.files("kimi_gguf").joinpath(PUBLISHED_CONFIG).read_text("utf-8"))


def tiny_config(n_ranks: int, d: TinyDims = TinyDims()) -> dict:
    """The published config with every size scaled down; all its keys kept."""
    cfg = published_config()
    full = [i for i in range(1, d.layers + 1) if i % d.full_attn_every == 0]
    kda = [i for i in range(1, d.layers + 1) if i not in full]
    vocab = n_ranks + sp.NUM_RESERVED_SPECIAL
    cfg.update({
        "bos_token_id": n_ranks + 0,                  # [BOS]
        "eos_token_id": n_ranks + 2,                  # <|im_end|>, as the published config
        "pad_token_id": n_ranks + 255,                # [PAD]
        "first_k_dense_replace": 1,
        "head_dim": d.hidden // d.heads,
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "kv_lora_rank": d.kv_lora_rank,
        "linear_attn_config": {"full_attn_layers": full, "head_dim": d.kda_head_dim,
                               "kda_layers": kda, "num_heads": d.heads,
                               "short_conv_kernel_size": d.conv_kernel},
        "moe_intermediate_size": d.moe_intermediate,
        "num_attention_heads": d.heads,
        "num_experts": d.experts,
        "num_experts_per_token": d.top_k,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.heads,
        "num_shared_experts": d.shared_experts,
        "qk_nope_head_dim": d.qk_nope,
        "qk_rope_head_dim": d.qk_rope,
        "routed_scaling_factor": d.routed_scaling_factor,
        "v_head_dim": d.v_head_dim,
        "vocab_size": vocab,
    })
    return cfg


class _Draw:
    """Per-tensor random streams: the same (seed, name) always gives the same numbers."""

    def __init__(self, seed: int):
        self.seed = seed

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(name.encode())]))

    def matrix(self, name: str, out_f: int, in_f: int, gain: float = 1.0) -> np.ndarray:
        return self.rng(name).standard_normal((out_f, in_f)) * (gain / np.sqrt(in_f))

    def norm(self, name: str, n: int, spread: float = 0.1) -> np.ndarray:
        return 1.0 + spread * self.rng(name).standard_normal(n)


def tiny_tensors(cfg: dict, seed: int) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (float64 values in the published shape, dtype 'bf16' or 'f32'), in checkpoint order."""
    dr = _Draw(seed)
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    lac = cfg["linear_attn_config"]
    nh, D, K = lac["num_heads"], lac["head_dim"], lac["short_conv_kernel_size"]
    P = nh * D
    mh, nope, rope, vd, r = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                             cfg["v_head_dim"], cfg["kv_lora_rank"])
    E, I, Ie = cfg["num_experts"], cfg["intermediate_size"], cfg["moe_intermediate_size"]
    Is = Ie * cfg["num_shared_experts"]
    full = set(lac["full_attn_layers"])
    out: dict[str, tuple[np.ndarray, str]] = {}

    def put(name, arr, dtype="bf16"):
        out[name] = (np.asarray(arr, dtype=np.float64), dtype)

    put("model.embed_tokens.weight", dr.rng("model.embed_tokens.weight").standard_normal((V, H)))
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        put(p + "input_layernorm.weight", dr.norm(p + "input_layernorm.weight", H))
        a = p + "self_attn."
        if il + 1 in full:       # MLA
            put(a + "q_proj.weight", dr.matrix(a + "q_proj.weight", mh * (nope + rope), H))
            put(a + "kv_a_proj_with_mqa.weight", dr.matrix(a + "kv_a_proj_with_mqa.weight", r + rope, H))
            put(a + "kv_a_layernorm.weight", dr.norm(a + "kv_a_layernorm.weight", r))
            put(a + "kv_b_proj.weight", dr.matrix(a + "kv_b_proj.weight", mh * (nope + vd), r))
            put(a + "o_proj.weight", dr.matrix(a + "o_proj.weight", H, mh * vd, gain=0.5))
        else:                    # KDA
            for w in ("q", "k", "v"):
                put(a + f"{w}_proj.weight", dr.matrix(a + f"{w}_proj.weight", P, H))
            for w in ("q", "k", "v"):
                # depthwise causal kernel; the last tap multiplies the current token: lean on it
                c = 0.3 * dr.rng(a + f"{w}_conv1d.weight").standard_normal((P, 1, K))
                c[:, :, -1] += 0.6
                put(a + f"{w}_conv1d.weight", c)
            # Mamba-style: A in [1, 8], dt in [0.005, 0.5] -> g = -A * softplus(f + dt_bias) ~ [-5, -0.005]
            A = np.exp(dr.rng(a + "A_log").uniform(np.log(1.0), np.log(8.0), nh))
            put(a + "A_log", np.log(A).reshape(1, 1, nh, 1), "f32")
            dt = np.exp(dr.rng(a + "dt_bias").uniform(np.log(0.005), np.log(0.5), P))
            put(a + "dt_bias", dt + np.log(-np.expm1(-dt)), "f32")   # inverse softplus
            put(a + "f_a_proj.weight", dr.matrix(a + "f_a_proj.weight", D, H))
            put(a + "f_b_proj.weight", dr.matrix(a + "f_b_proj.weight", P, D, gain=0.5))
            put(a + "b_proj.weight", dr.matrix(a + "b_proj.weight", nh, H))
            put(a + "g_a_proj.weight", dr.matrix(a + "g_a_proj.weight", D, H))
            put(a + "g_b_proj.weight", dr.matrix(a + "g_b_proj.weight", P, D))
            put(a + "o_norm.weight", dr.norm(a + "o_norm.weight", D))
            put(a + "o_proj.weight", dr.matrix(a + "o_proj.weight", H, P, gain=0.5))
        put(p + "post_attention_layernorm.weight", dr.norm(p + "post_attention_layernorm.weight", H))
        if il < cfg["first_k_dense_replace"]:
            m = p + "mlp."
            put(m + "gate_proj.weight", dr.matrix(m + "gate_proj.weight", I, H))
            put(m + "up_proj.weight", dr.matrix(m + "up_proj.weight", I, H))
            put(m + "down_proj.weight", dr.matrix(m + "down_proj.weight", H, I, gain=0.5))
        else:
            m = p + "block_sparse_moe."
            put(m + "gate.weight", dr.matrix(m + "gate.weight", E, H))
            put(m + "gate.e_score_correction_bias",
                0.05 * dr.rng(m + "gate.e_score_correction_bias").standard_normal(E), "f32")
            for e in range(E):
                x = m + f"experts.{e}."
                put(x + "w1.weight", dr.matrix(x + "w1.weight", Ie, H))
                put(x + "w2.weight", dr.matrix(x + "w2.weight", H, Ie, gain=0.5))
                put(x + "w3.weight", dr.matrix(x + "w3.weight", Ie, H))
            s = m + "shared_experts."
            put(s + "gate_proj.weight", dr.matrix(s + "gate_proj.weight", Is, H))
            put(s + "up_proj.weight", dr.matrix(s + "up_proj.weight", Is, H))
            put(s + "down_proj.weight", dr.matrix(s + "down_proj.weight", H, Is, gain=0.5))
    put("model.norm.weight", dr.norm("model.norm.weight", H))
    put("lm_head.weight", dr.matrix("lm_head.weight", V, H, gain=2.0))
    return out


def _to_torch(arr: np.ndarray, dtype: str):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t.to(torch.bfloat16) if dtype == "bf16" else t


def _write_shards(tmp: Path, tensors: dict[str, tuple[np.ndarray, str]], num_shards: int) -> None:
    from safetensors.torch import save_file

    names = list(tensors)
    sizes = [tensors[n][0].size * (2 if tensors[n][1] == "bf16" else 4) for n in names]
    total = sum(sizes)
    # cut in checkpoint order into shards of about equal byte size
    groups: list[list[str]] = [[] for _ in range(num_shards)]
    acc = 0
    for n, s in zip(names, sizes):
        groups[min(num_shards - 1, acc * num_shards // total)].append(n)
        acc += s
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: _to_torch(*tensors[n]) for n in group}, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_bytes(tmp / "model.safetensors.index.json", (json.dumps(index, indent=2) + "\n").encode())


TINY_FILES = ("config.json", "model.safetensors.index.json", "tiktoken.model", "tokenizer_config.json",
              "chat_template.jinja", "generation_config.json")


def make_tiny(out_dir: str | Path, seed: int = 0, dialect: str = "moonshot", force: bool = False,
              num_merges: int = DEFAULT_MERGES) -> Path:
    """Write the tiny checkpoint into `out_dir` (created; an existing checkpoint there needs `force`).

    Everything is built in a temp directory beside `out_dir` and moved in at the end, so an error
    leaves no half-written checkpoint. dialect "transformers" re-saves it with transformers' own
    save_pretrained (see tiny_transformers.py)."""
    if dialect not in ("moonshot", "transformers"):
        raise KimiError(f"make-tiny: unknown dialect '{dialect}' (moonshot or transformers)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KimiError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise KimiError(f"{out}: directory is not empty (use --force to overwrite)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise KimiError(f"{out}: cannot create output directory ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())     # mkdtemp makes 0700
        ranks = train_bpe(builtin_corpus(), num_merges=num_merges)
        cfg = tiny_config(len(ranks))
        src = tmp if dialect == "moonshot" else Path(tempfile.mkdtemp(prefix=".moonshot.", dir=tmp))
        atomic_write_bytes(src / "config.json", (json.dumps(cfg, indent=2) + "\n").encode())
        _write_shards(src, tiny_tensors(cfg, seed), NUM_SHARDS)
        write_tokenizer_files(src, ranks)
        if dialect == "transformers":
            from .tiny_transformers import save_transformers_dialect
            save_transformers_dialect(src, tmp)
            shutil.rmtree(src)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())       # some writers create 0600 files
        if out.is_dir():
            for old in out.iterdir():
                if old.is_file() and (old.name in TINY_FILES or old.name.endswith(".safetensors")):
                    old.unlink()
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KimiError(f"{out}: cannot write checkpoint ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
