"""The C tests of the KDA op, built with AddressSanitizer + UndefinedBehaviorSanitizer and run.

test_kda_errors: every invalid input (null pointers, zero/negative dims, shape mismatches, bad or
overlapping strides, dst overlapping inputs, wrong types at the ggml node) -> its error code.
test_kda_fuzz: random shapes / strides / snapshot counts / algorithms / thread counts against
llama.cpp's builtin op on the same ggml, plus random corruptions of valid params. Seeds are fixed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FUZZ_SEEDS = (1, 2)
FUZZ_ITERS = 120


@pytest.fixture(scope="module")
def san_build(tmp_path_factory):
    cmake = shutil.which("cmake")
    assert cmake, "cmake is required (make ops uses it too)"
    build = tmp_path_factory.mktemp("kda_asan")
    cfg = [cmake, "-S", str(REPO), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
           "-DKIMI_KDA_SANITIZE=ON", "-DKIMI_KDA_CUDA=OFF", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"]
    subprocess.run(cfg, check=True, capture_output=True, text=True)
    r = subprocess.run([cmake, "--build", str(build), "-j", "2", "--target", "test_kda_errors",
                        "test_kda_fuzz"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return build / "ggml_ops"


def run_sanitized(exe: Path, *args: str) -> str:
    env = dict(os.environ,
               ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out[-6000:]
    return out


def test_error_codes_under_sanitizers(san_build):
    out = run_sanitized(san_build / "test_kda_errors")
    assert "test_kda_errors: all passed" in out


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_shape_fuzz_under_sanitizers(san_build, seed):
    out = run_sanitized(san_build / "test_kda_fuzz", str(FUZZ_ITERS), str(seed))
    assert f"{FUZZ_ITERS} cases" in out
