"""python_ref: the float64 reference of Kimi Linear, written once over an array module.

  xp.py         NumPy / PyTorch behind one small namespace (dtype, device, the few spelled-differently ops)
  ops.py        rmsnorm, l2norm, silu, sigmoid, softplus, swiglu, causal depthwise conv with state
  kda.py        the KDA recurrence: naive_recurrent_kda (definition) and chunk_kda (WY/UT form), FLA layout
  kda_layer.py  the KDA block (projections, conv, gate, beta, recurrence, gated norm)
  mla.py        the MLA block (no positional encoding) with its latent cache
  moe.py        dense SwiGLU and the sigmoid-routed MoE with shared expert
  dialect.py    the named options where implementations disagree (default, transformers, llamacpp, hf-remote)
  model.py      KimiLinearRef: the whole forward, prefill/step with State, block tracing

See kimi_gguf/__init__.py for the package layout.
"""
