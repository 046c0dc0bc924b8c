"""Parity suite: llama.cpp vs the float64 reference, layer by layer; quantization quality."""
