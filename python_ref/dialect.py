"""Dialects: the places where the implementations of Kimi Linear disagree, as named options.

Each field is one documented disagreement (see KIMI_LINEAR_FACTS.md, "Where the references
disagree"); a Dialect picks one answer for each. The reference runs any of them, so its output can
be matched to whichever implementation it is compared with.

* ``default``      -- the published model as vLLM (and FLA's kernels) run it: l2norm of q, k as
                      x / sqrt(sum x^2 + 1e-6); MLA kv_a_layernorm with rms_norm_eps; unbiased MoE
                      weights renormalised with sum + 1e-20; softplus(x) = x above 20.
* ``transformers`` -- transformers 5.24's native ``KimiLinearForCausalLM``: as default, except that
                      its kv_a_layernorm is built without an eps argument, so it uses 1e-6.
* ``llamacpp``     -- llama.cpp 0c1e570 (src/models/kimi-linear.cpp): the l2norm is
                      rms_norm(x, eps/n) / sqrt(n) = x / sqrt(sum x^2 + eps) with eps = rms_norm_eps
                      (1e-5, still inside the sqrt -- ggml_l2_norm's max(norm, eps) is not used);
                      kv_a norm with rms_norm_eps; MoE weights divided by max(sum, 6.103515625e-5)
                      (ggml_clamp to the smallest normal f16); softplus threshold 20 (ggml op_softplus).
* ``hf-remote``    -- the Hugging Face remote code (modeling_kimi.py of the published repo): the
                      correction bias is added in place to the sigmoid scores, so the chosen
                      experts' weights include it; kv_a_layernorm eps 1e-6.

Every dialect agrees on everything else (norm placement, gate formula, conv, MLA scale, routing
choice with the bias, routed_scaling_factor).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from kimi_gguf.errors import KimiError


@dataclass(frozen=True)
class Dialect:
    name: str
    # l2norm of q and k in KDA: x / sqrt(sum(x^2) + l2norm_eps). None: use the config's rms_norm_eps.
    l2norm_eps: float | None = 1e-6
    # eps of MLA's kv_a_layernorm (RMSNorm of the latent). None: use the config's rms_norm_eps.
    kv_a_norm_eps: float | None = None
    # MoE: weights of the chosen experts from the biased scores (score + e_score_correction_bias)
    # instead of the plain sigmoid scores. The bias always takes part in *choosing* experts.
    moe_biased_weights: bool = False
    # MoE renormalisation: "add" divides by (sum + moe_norm_eps), "clamp" by max(sum, moe_norm_eps).
    moe_norm: str = "add"
    moe_norm_eps: float = 1e-20
    # KDA gate softplus: x itself above this threshold (torch/FLA/ggml use 20); None: exact softplus.
    softplus_threshold: float | None = 20.0

    def l2_eps(self, rms_norm_eps: float) -> float:
        return rms_norm_eps if self.l2norm_eps is None else self.l2norm_eps

    def kv_eps(self, rms_norm_eps: float) -> float:
        return rms_norm_eps if self.kv_a_norm_eps is None else self.kv_a_norm_eps

    def with_(self, **changes) -> "Dialect":
        """A copy with some options changed (name gets a '+' suffix): for experiments and tests."""
        return replace(self, name=self.name + "+" + ",".join(f"{k}={v}" for k, v in changes.items()), **changes)


DIALECTS: dict[str, Dialect] = {
    "default": Dialect("default"),
    "transformers": Dialect("transformers", kv_a_norm_eps=1e-6),
    "llamacpp": Dialect("llamacpp", l2norm_eps=None, kv_a_norm_eps=None, moe_norm="clamp",
                        moe_norm_eps=6.103515625e-5),
    "hf-remote": Dialect("hf-remote", kv_a_norm_eps=1e-6, moe_biased_weights=True),
}


def get_dialect(d: str | Dialect) -> Dialect:
    if isinstance(d, Dialect):
        return d
    try:
        return DIALECTS[d]
    except KeyError:
        raise KimiError(f"unknown dialect '{d}' (expected one of {', '.join(DIALECTS)})") from None
