"""`kimi-gguf demo` end to end: convert, llama.cpp with the bridge, parity, one chat answer.

The chat answer is checked against the float64 reference: llama.cpp's greedy reply to the rendered
chat prompt must be the reference's greedy continuation of the same tokens."""
import re
import shutil

import numpy as np
import pytest


@pytest.fixture(scope="module")
def demo_run(tiny_dir, tmp_path_factory):
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_dir, work / "tiny")
    proc = subprocess.run([sys.executable, "-m", "kimi_gguf.cli", "demo", "--dir", str(work),
                           "--max-tokens", "6"], capture_output=True, text=True, timeout=600)
    return work, proc


def test_demo_converts_checks_parity_and_answers(demo_run):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (work / "tiny-f32.gguf").is_file()
    rel = float(re.search(r"logits relative error ([0-9.e+-]+)", out).group(1))
    assert rel <= 1e-5
    calls = int(re.search(r"bridge calls (\d+)", out).group(1))
    assert calls > 0  # the KDA layers really ran on our kernels
    assert "parity OK" in out
    assert (work / "parity" / "parity.json").is_file() and (work / "parity" / "parity.png").is_file()


def test_demo_chat_answer_is_the_reference_greedy_reply(demo_run, tiny_dir):
    import ast

    import llama_cpp

    from kimi_gguf.checkpoint import HFCheckpoint
    from kimi_gguf.commands.demo import DEFAULT_CHAT
    from kimi_gguf.python_ref.model import KimiLinearRef
    from kimi_gguf.serve.chat import chat_format_from_gguf

    work, proc = demo_run
    reply = ast.literal_eval(re.search(r"assistant: (.*)", proc.stdout).group(1))
    gguf_path = str(work / "tiny-f32.gguf")
    llama = llama_cpp.Llama(model_path=gguf_path, n_ctx=256, verbose=False, vocab_only=True)
    fmt = chat_format_from_gguf(llama, gguf_path)
    ids = fmt.prompt_tokens(llama, [{"role": "user", "content": DEFAULT_CHAT}])

    ref = KimiLinearRef(None, HFCheckpoint(tiny_dir), dialect="llamacpp")
    new = [int(t) for t in ref.greedy(np.asarray(ids, dtype=np.int64), 6)]
    stop = [i for i, t in enumerate(new) if t in fmt.stop_ids]
    new = new[: stop[0]] if stop else new
    # Same token ids -> same text through llama.cpp's detokenizer (which renders reserved
    # tokens as nothing and drops a trailing incomplete UTF-8 sequence, as the chat API does).
    expected = llama.detokenize(new).decode("utf-8", errors="ignore")
    llama.close()
    assert reply == expected
    assert reply.strip()  # the demo really answered something
