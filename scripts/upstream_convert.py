"""Run llama.cpp's own convert_hf_to_gguf.py (from the pinned sdist) on a Kimi Linear checkpoint.

Upstream's KimiLinearModel.set_vocab needs transformers' remote code (tokenization_kimi.py) for the
tiktoken tokenizer; nothing from a checkpoint may run here. The tokenizer has no bearing on the
tensors being compared, so this driver replaces only that one method with the project's own
tokenizer writer (kimi_gguf.convert.tokenizer) and leaves every tensor path of upstream untouched.

usage: python scripts/upstream_convert.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT --outtype TYPE
       (everything after LLAMA_CPP_DIR is passed to convert_hf_to_gguf.py)
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    lcp = Path(sys.argv[1]).resolve()
    sys.argv = [str(lcp / "convert_hf_to_gguf.py")] + sys.argv[2:]
    sys.path.insert(0, str(lcp))
    sys.path.insert(1, str(lcp / "gguf-py"))
    from conversion.kimi_linear import KimiLinearModel  # upstream's class

    from kimi_gguf.convert.tokenizer import add_tokenizer_to_gguf, load_kimi_tokenizer

    def set_vocab(self):
        tok = load_kimi_tokenizer(self.dir_model)
        add_tokenizer_to_gguf(self.gguf_writer, tok, self.hparams["vocab_size"])

    KimiLinearModel.set_vocab = set_vocab
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
