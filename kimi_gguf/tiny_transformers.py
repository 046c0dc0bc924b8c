"""The tiny checkpoint in transformers' layout, written by transformers itself.

`make-tiny --dialect transformers` loads the Moonshot-layout tiny checkpoint with transformers'
native ``KimiLinearForCausalLM`` and writes it back with ``save_pretrained``: its config (native
``layer_types`` / ``mlp_layer_types`` / ``linear_*`` keys beside the Moonshot ones it loaded) and its
tensor naming (the dense layer under ``block_sparse_moe.``). The model is loaded in float32 and every
tensor is cast back to the dtype the published checkpoint uses (bf16; A_log, dt_bias and the router
bias float32), so both dialects hold exactly the same numbers -- a converter must turn them into the
same GGUF. The tokenizer files are copied (transformers would need Moonshot's remote code for them).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import KimiError
from .tokenizer.files import CONFIG_FILE, TEMPLATE_FILE
from .tokenizer.tiktoken_file import FILE_NAME as TIKTOKEN_FILE

_F32_SUFFIXES = ("A_log", "dt_bias", "e_score_correction_bias")


def save_transformers_dialect(moonshot_dir: str | Path, out_dir: str | Path) -> None:
    try:
        import torch
        from transformers import KimiLinearForCausalLM
    except ImportError as exc:
        raise KimiError(f"make-tiny --dialect transformers needs transformers>=5 with kimi_linear ({exc})") from None
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # rope_scaling: null in the published config
        model = KimiLinearForCausalLM.from_pretrained(str(moonshot_dir), dtype=torch.float32)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.is_floating_point():
                p.data = p.data.to(torch.float32 if name.endswith(_F32_SUFFIXES) else torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out_dir), max_shard_size="600KB")
    for name in (TIKTOKEN_FILE, CONFIG_FILE, TEMPLATE_FILE):
        shutil.copyfile(Path(moonshot_dir) / name, Path(out_dir) / name)
