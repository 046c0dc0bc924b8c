"""See kimi_gguf/__init__.py."""
