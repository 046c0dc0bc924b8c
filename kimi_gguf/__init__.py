"""kimi-gguf: Kimi Linear in the llama.cpp world.

Sub-packages map to the repository's top-level folders:
  kimi_gguf.convert    -> convert/     HF checkpoint -> GGUF
  kimi_gguf.python_ref -> python_ref/  float64 NumPy / PyTorch reference model
  kimi_gguf.ggml_ops   -> ggml_ops/    C/CUDA KDA kernels, cffi binding, llama.cpp bridge
Shared, lower-level pieces live here: the model spec (spec.py) and the one tensor name table
(names.py) that the converter and the reference's GGUF loader both use.
"""
__version__ = "0.1.0"
