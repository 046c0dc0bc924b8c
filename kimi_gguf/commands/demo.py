"""`kimi-gguf demo`: the project's main job, end to end, on the embedded tiny checkpoint.

1. write the tiny Moonshot-layout checkpoint (once) into out/tiny;
2. convert it to an f32 GGUF with our converter;
3. run the GGUF in the stock llama.cpp of llama-cpp-python, its KDA layers on our kernels (the
   bridge), and compare every layer and the logits with the float64 reference (parity figure);
4. answer one chat prompt through llama-cpp-python's chat API with the GGUF's own chat template.

Each step calls the same library code as its own subcommand (make-tiny, convert, parity, serve).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog. 你好，世界！ def f(x): return 42"
DEFAULT_CHAT = "Say hello in one short sentence."


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="convert the embedded tiny checkpoint, run it in llama.cpp, "
                              "check parity, answer one chat prompt", description=__doc__)
    p.add_argument("--dir", default="out", help="working folder (default: out/)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text for the parity check")
    p.add_argument("--chat", default=DEFAULT_CHAT, help="the chat prompt to answer")
    p.add_argument("--kda", choices=("ours", "builtin"), default="ours",
                   help="run llama.cpp's KDA layers on our kernels (bridge) or its builtin op")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..convert.api import convert_model
    from ..convert.tokenizer import load_kimi_tokenizer
    from ..parity import report
    from ..parity.run import run_parity, write_report
    from ..tiny import make_tiny

    work = Path(args.dir)
    model_dir = work / "tiny"
    if not (model_dir / "config.json").is_file():
        print(f"[1/4] writing the tiny checkpoint to {model_dir}")
        make_tiny(model_dir, seed=0)
    else:
        print(f"[1/4] tiny checkpoint: {model_dir}")

    gguf_path = work / "tiny-f32.gguf"
    print(f"[2/4] converting to {gguf_path}")
    summary = convert_model(model_dir, str(gguf_path), "f32", force=True, verify=True)
    print("      " + summary.format().replace("\n", "\n      "))

    enc = load_kimi_tokenizer(model_dir).encoding()
    ids = np.asarray(enc.encode_ordinary(args.prompt), dtype=np.int64)
    print(f"[3/4] parity on {len(ids)} tokens: llama.cpp (KDA: {args.kda}) vs the float64 reference "
          "(llamacpp dialect)")
    res = run_parity(model_dir, gguf_path, ids, dialect="llamacpp", kda=args.kda)
    js, png = write_report(res, work / "parity")
    rel = float(np.linalg.norm(res.logits_llama - res.logits_ref) / np.linalg.norm(res.logits_ref))
    worst = max(res.rows, key=lambda r: r.rel)
    print(f"      logits relative error {rel:.2e}; worst intermediate {worst.label} {worst.rel:.2e}; "
          f"bridge calls {res.meta['bridge_calls']}")
    print("      " + report.summary(res.verdict, res.budget_row, "llamacpp").replace("\n", "\n      "))
    print(f"      report: {js}, {png}")

    print(f"[4/4] chat: {args.chat!r}")
    reply = _chat(gguf_path, args.chat, args.kda, args.max_tokens)
    print(f"      assistant: {reply!r}")
    print("      (the tiny model's weights are random, so its words are not meaningful)")
    return 0 if res.verdict.ok else 1


def _chat(gguf_path: Path, prompt: str, kda: str, max_tokens: int) -> str:
    import llama_cpp

    from ..ggml_ops import bridge
    from ..ggml_ops.llama_session import quiet_llama_logs
    from ..serve.chat import chat_format_from_gguf

    if kda == "ours":
        bridge.enable_bridge()
    quiet_llama_logs()
    llama = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, verbose=False)
    try:
        llama.chat_handler = chat_format_from_gguf(llama, str(gguf_path)).handler()
        out = llama.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                           max_tokens=max_tokens, temperature=0.0)
        return out["choices"][0]["message"]["content"]
    finally:
        llama.close()
