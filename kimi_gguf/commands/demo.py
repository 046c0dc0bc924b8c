"""`kimi-gguf demo`: the main job on the embedded tiny checkpoint.

For now: write the tiny checkpoint (once) into out/tiny, tokenize a prompt with its own tokenizer,
and print what the float64 reference makes of it -- the top next tokens and a greedy continuation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_PROMPT = "The quick brown fox"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the reference on the embedded tiny checkpoint", description=__doc__)
    p.add_argument("--dir", default="out/tiny", help="where the tiny checkpoint lives (written if absent)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--tokens", type=int, default=12, help="greedy continuation length")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def _tiny(path: Path) -> Path:
    from ..tiny import make_tiny

    if (path / "config.json").is_file():
        return path
    print(f"writing the tiny checkpoint to {path}")
    return make_tiny(path, seed=0)


def run(args) -> int:
    from ..checkpoint import HFCheckpoint
    from ..convert.tokenizer import load_kimi_tokenizer
    from ..python_ref.model import KimiLinearRef

    model_dir = _tiny(Path(args.dir))
    enc = load_kimi_tokenizer(model_dir).encoding()
    ids = np.asarray(enc.encode_ordinary(args.prompt), dtype=np.int64)
    ref = KimiLinearRef(None, HFCheckpoint(model_dir))
    print(f"model: {model_dir} ({ref.spec.num_layers} layers: "
          f"{''.join('K' if l.attn == 'kda' else 'M' for l in ref.spec.layers)}, vocab {ref.spec.vocab_size})")
    print(f"prompt: {args.prompt!r} -> {len(ids)} tokens {ids.tolist()}")
    last = ref.logits(ids)[-1]
    p = np.exp(last - last.max())
    p /= p.sum()
    print("top next tokens (reference, float64):")
    for t in np.argsort(-last)[:5]:
        print(f"  {int(t):6d}  p={p[t]:.4f}  {enc.decode([int(t)])!r}")
    new = ref.greedy(ids, args.tokens)
    print(f"greedy continuation: {enc.decode(new)!r}")
    print("(the tiny model's weights are random, so its text is not meaningful)")
    return 0
