"""ModelSpec: one frozen description of a Kimi Linear model, parsed from either config dialect.

Everything downstream (converter, reference model, parity suite) takes a ModelSpec, never a raw
config dict. Two config dialects exist in the wild:

* ``moonshot``: the published checkpoint's config.json. Layer kinds come from
  ``linear_attn_config`` (1-based ``kda_layers`` / ``full_attn_layers``), dense layers from
  ``first_k_dense_replace``.
* ``transformers``: what transformers' native ``KimiLinearConfig.save_pretrained`` writes:
  0-based ``layer_types`` ("linear_attention"/"full_attention"), ``mlp_layer_types``
  ("dense"/"sparse"), ``linear_head_dim`` / ``linear_num_heads`` / ``linear_conv_kernel_dim``, and
  aliases such as ``num_local_experts`` / ``num_experts_per_tok`` / ``n_shared_experts``.

A config may carry both (transformers keeps ``linear_attn_config`` when it loaded one); the
Moonshot keys then win, as in transformers itself.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import KimiError

KDA, MLA = "kda", "mla"
DENSE, MOE = "dense", "moe"
MODEL_TYPES = ("kimi_linear",)


@dataclass(frozen=True)
class LayerSpec:
    attn: str  # KDA or MLA
    ffn: str   # DENSE or MOE


@dataclass(frozen=True)
class KDASpec:
    num_heads: int
    head_dim: int
    conv_kernel: int

    @property
    def proj_dim(self) -> int:  # width of q/k/v projections
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class MLASpec:
    num_heads: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int  # the shared key part; no RoPE is applied (mla_use_nope)
    v_head_dim: int
    kv_lora_rank: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    intermediate_size: int
    num_shared_experts: int
    routed_scaling_factor: float
    renormalize: bool
    router_activation: str  # "sigmoid"
    num_expert_group: int
    topk_group: int


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    hidden_size: int
    rms_norm_eps: float
    intermediate_size: int  # dense SwiGLU layers
    tie_word_embeddings: bool
    layers: tuple[LayerSpec, ...]
    kda: KDASpec
    mla: MLASpec
    moe: MoESpec
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    config_dialect: str  # "moonshot" or "transformers"
    max_position_embeddings: int = 1048576
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def leading_dense_blocks(self) -> int:
        n = 0
        for layer in self.layers:
            if layer.ffn != DENSE:
                break
            n += 1
        return n

    def kda_layers(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if l.attn == KDA]

    def mla_layers(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if l.attn == MLA]

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("extra", None)
        return json.dumps(d, sort_keys=True)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "ModelSpec":
        return _parse(cfg, source)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelSpec":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise KimiError(f"{path}: missing config.json")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KimiError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise KimiError(f"{path}: top level is not a JSON object")
        return _parse(cfg, str(path))


class _Reader:
    """Typed access to config keys (with aliases), every error naming the file and key."""

    def __init__(self, cfg: Mapping[str, Any], source: str):
        self.cfg, self.source = cfg, source

    def get(self, *keys: str, kind: type = int, default: Any = ..., sub: Mapping | None = None,
            sub_name: str = "") -> Any:
        where = sub if sub is not None else self.cfg
        for key in keys:
            if key in where and where[key] is not None:
                value = where[key]
                return self._check(value, kind, sub_name + key)
        if default is ...:
            raise KimiError(f"{self.source}: missing config key '{sub_name + keys[0]}'")
        return default

    def _check(self, value: Any, kind: type, key: str) -> Any:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise KimiError(f"{self.source}: config key '{key}' is not finite")
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise KimiError(f"{self.source}: config key '{key}' is negative ({value})")
            return value
        if kind is bool and isinstance(value, bool):
            return value
        if kind in (str, list, dict) and isinstance(value, kind):
            return value
        raise KimiError(f"{self.source}: config key '{key}' should be {kind.__name__}, "
                        f"got {type(value).__name__} {value!r}"[:200])


def _parse(cfg: Mapping[str, Any], source: str) -> ModelSpec:
    r = _Reader(cfg, source)
    model_type = r.get("model_type", kind=str)
    if model_type not in MODEL_TYPES:
        raise KimiError(f"{source}: unknown model_type '{model_type}' (expected one of {', '.join(MODEL_TYPES)})")
    n_layers = r.get("num_hidden_layers")
    if n_layers == 0:
        raise KimiError(f"{source}: config key 'num_hidden_layers' is 0")

    lac = cfg.get("linear_attn_config")
    if lac is not None and not isinstance(lac, dict):
        raise KimiError(f"{source}: config key 'linear_attn_config' should be an object")
    if lac:
        dialect = "moonshot"
        attn = _attn_from_moonshot(r, lac, n_layers)
        kda = KDASpec(
            num_heads=r.get("num_heads", sub=lac, sub_name="linear_attn_config."),
            head_dim=r.get("head_dim", sub=lac, sub_name="linear_attn_config."),
            conv_kernel=r.get("short_conv_kernel_size", sub=lac, sub_name="linear_attn_config."),
        )
    else:
        dialect = "transformers"
        attn = _attn_from_layer_types(r, n_layers)
        kda = KDASpec(
            num_heads=r.get("linear_num_heads"),
            head_dim=r.get("linear_head_dim"),
            conv_kernel=r.get("linear_conv_kernel_dim", default=4),
        )

    mlp_types = cfg.get("mlp_layer_types")
    if mlp_types is not None and not lac:
        mlp_types = r.get("mlp_layer_types", kind=list)
        if len(mlp_types) != n_layers:
            raise KimiError(f"{source}: config key 'mlp_layer_types' has {len(mlp_types)} entries, "
                            f"num_hidden_layers is {n_layers}")
        ffn = []
        for i, t in enumerate(mlp_types):
            if t not in ("dense", "sparse"):
                raise KimiError(f"{source}: config key 'mlp_layer_types[{i}]' is '{t}' (expected dense or sparse)")
            ffn.append(DENSE if t == "dense" else MOE)
    else:
        first_dense = r.get("first_k_dense_replace", default=1)
        freq = r.get("moe_layer_freq", default=1) or 1
        ffn = [DENSE if (i < first_dense or (i - first_dense) % freq) else MOE for i in range(n_layers)]

    mla = MLASpec(
        num_heads=r.get("num_attention_heads"),
        qk_nope_head_dim=r.get("qk_nope_head_dim"),
        qk_rope_head_dim=r.get("qk_rope_head_dim"),
        v_head_dim=r.get("v_head_dim"),
        kv_lora_rank=r.get("kv_lora_rank"),
    )
    if cfg.get("q_lora_rank") not in (None, 0):
        raise KimiError(f"{source}: config key 'q_lora_rank' = {cfg['q_lora_rank']} is not supported "
                        "(Kimi Linear projects q directly)")
    activation = r.get("moe_router_activation_func", kind=str, default="sigmoid")
    if activation != "sigmoid":
        raise KimiError(f"{source}: config key 'moe_router_activation_func' = '{activation}' is not supported")
    moe = MoESpec(
        num_experts=r.get("num_experts", "num_local_experts", "n_routed_experts"),
        top_k=r.get("num_experts_per_token", "num_experts_per_tok"),
        intermediate_size=r.get("moe_intermediate_size"),
        num_shared_experts=r.get("num_shared_experts", "n_shared_experts", default=0),
        routed_scaling_factor=r.get("routed_scaling_factor", kind=float, default=1.0),
        renormalize=r.get("moe_renormalize", "norm_topk_prob", kind=bool, default=True),
        router_activation=activation,
        num_expert_group=r.get("num_expert_group", "n_group", default=1),
        topk_group=r.get("topk_group", default=1),
    )
    if moe.top_k > moe.num_experts:
        raise KimiError(f"{source}: config key 'num_experts_per_token' ({moe.top_k}) exceeds num_experts ({moe.num_experts})")
    if moe.num_expert_group != 1:
        raise KimiError(f"{source}: config key 'num_expert_group' = {moe.num_expert_group} is not supported (Kimi Linear uses 1)")

    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return ModelSpec(
        vocab_size=r.get("vocab_size"),
        hidden_size=r.get("hidden_size"),
        rms_norm_eps=r.get("rms_norm_eps", kind=float),
        intermediate_size=r.get("intermediate_size"),
        tie_word_embeddings=r.get("tie_word_embeddings", kind=bool, default=False),
        layers=tuple(LayerSpec(a, f) for a, f in zip(attn, ffn)),
        kda=kda,
        mla=mla,
        moe=moe,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=cfg.get("pad_token_id"),
        config_dialect=dialect,
        max_position_embeddings=r.get("model_max_length", "max_position_embeddings", default=1048576),
        extra=dict(cfg),
    )


def _attn_from_moonshot(r: _Reader, lac: Mapping[str, Any], n_layers: int) -> list[str]:
    kinds: list[str | None] = [None] * n_layers
    for key, kind in (("kda_layers", KDA), ("full_attn_layers", MLA)):
        layers = r.get(key, kind=list, sub=lac, sub_name="linear_attn_config.")
        for one_based in layers:
            if not isinstance(one_based, int) or not 1 <= one_based <= n_layers:
                raise KimiError(f"{r.source}: config key 'linear_attn_config.{key}' holds {one_based!r}, "
                                f"outside 1..{n_layers} (the lists are 1-based)")
            if kinds[one_based - 1] is not None:
                raise KimiError(f"{r.source}: layer {one_based} is listed twice in 'linear_attn_config'")
            kinds[one_based - 1] = kind
    missing = [i + 1 for i, k in enumerate(kinds) if k is None]
    if missing:
        raise KimiError(f"{r.source}: layers {missing} are in neither 'linear_attn_config.kda_layers' "
                        "nor 'linear_attn_config.full_attn_layers'")
    return kinds  # type: ignore[return-value]


def _attn_from_layer_types(r: _Reader, n_layers: int) -> list[str]:
    types = r.get("layer_types", kind=list)
    if len(types) != n_layers:
        raise KimiError(f"{r.source}: config key 'layer_types' has {len(types)} entries, "
                        f"num_hidden_layers is {n_layers}")
    out = []
    for i, t in enumerate(types):
        if t == "linear_attention":
            out.append(KDA)
        elif t == "full_attention":
            out.append(MLA)
        else:
            raise KimiError(f"{r.source}: config key 'layer_types[{i}]' is unknown layer kind '{t}'")
    return out
