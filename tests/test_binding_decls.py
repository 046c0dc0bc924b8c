"""The cffi declarations in ggml_ops/_binding.py are written by hand (cffi's ABI mode cannot read a
header with preprocessor lines). This checks them against the C headers they mirror, so the two
cannot drift apart unnoticed: every enum value, struct field and function type in CDEF must be the
header's."""
from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

from kimi_gguf.ggml_ops import _binding

INCLUDE = Path(__file__).resolve().parent.parent / "ggml_ops" / "include"
HEADERS = ("kimi_kda.h", "kimi_kda_ggml.h")


def header_cdef(text: str) -> str:
    """A C header reduced to what cffi's cdef parses: no comments, no C++ guard block, no
    preprocessor lines except integer #defines."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines()
             if not ln.lstrip().startswith("#") or re.match(r"\s*#define\s+\w+\s+\d+\s*$", ln)]
    return "\n".join(lines)


def declarations(ffi: FFI) -> dict[str, str]:
    """name -> C type of every declaration (cffi's parser; enum values and struct fields spelled out)."""
    out = {}
    for key, (tp, _quals) in ffi._parser._declarations.items():
        if isinstance(tp, int):  # enum constants and integer #defines
            out[key] = str(tp)
            continue
        desc = tp._get_c_name()
        if hasattr(tp, "enumerators") and tp.enumerators:
            desc += " {" + ", ".join(f"{n}={v}" for n, v in zip(tp.enumerators, tp.enumvalues)) + "}"
        if getattr(tp, "fldnames", None):
            desc += " {" + ", ".join(f"{t._get_c_name()} {n}" for n, t in zip(tp.fldnames, tp.fldtypes)) + "}"
        out[key] = desc
    return out


def test_hand_written_cdef_matches_headers():
    ffi = FFI()
    ffi.cdef("struct ggml_tensor; struct ggml_context;\n" +
             "\n".join(header_cdef((INCLUDE / h).read_text()) for h in HEADERS))
    from_headers = declarations(ffi)
    by_hand = declarations(_binding.ffi)
    assert by_hand, "no declarations parsed from _binding.CDEF"
    for key, desc in by_hand.items():
        assert key in from_headers, f"_binding.CDEF declares {key!r}, which no header declares"
        assert desc == from_headers[key], f"{key}: _binding.CDEF has {desc!r}, the header {from_headers[key]!r}"
    # every entry point of kimi_kda.h is reachable from Python
    for key in from_headers:
        if key.startswith("function kimi_kda_") and "ggml_op" not in key:
            assert key in by_hand, f"{key} is in the headers but not in _binding.CDEF"


def test_header_reduction_keeps_what_it_must():
    """The checker itself: a changed enum value in a header is seen (the test above can fail)."""
    text = (INCLUDE / "kimi_kda.h").read_text().replace("KIMI_KDA_ERR_NOMEM     = 7", "KIMI_KDA_ERR_NOMEM     = 9")
    assert "= 9" in text
    ffi = FFI()
    ffi.cdef(header_cdef(text))
    assert declarations(ffi)["anonymous kimi_kda_status"] != declarations(_binding.ffi)["anonymous kimi_kda_status"]


# --- the bridge's ctypes declarations (ggml_ops/bridge.py, _bind) against kimi_bridge.h ----------

BRIDGE_H = Path(__file__).resolve().parent.parent / "ggml_ops" / "bridge" / "kimi_bridge.h"


def _ctype_of(ffi: FFI, tp):
    """The ctypes type a C type must be declared as (None for void)."""
    import ctypes

    name = tp._get_c_name()
    simple = {"void": None, "int": ctypes.c_int, "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t,
              "double": ctypes.c_double, "char *": ctypes.c_char_p, "char const *": ctypes.c_char_p,
              "int64_t *": ctypes.POINTER(ctypes.c_int64), "double *": ctypes.POINTER(ctypes.c_double)}
    assert name in simple, f"kimi_bridge.h uses {name!r}: teach this test its ctypes twin"
    return simple[name]


def test_bridge_ctypes_match_header():
    import ctypes

    from kimi_gguf.ggml_ops import bridge

    text = BRIDGE_H.read_text().replace("KIMI_BRIDGE_EXPORT", "")
    ffi = FFI()
    ffi.cdef(header_cdef(text))
    lib = ctypes.CDLL(str(bridge.find_library()))  # the real library, as bridge._load binds it
    bridge._bind(lib)
    n = 0
    for key, (tp, _q) in ffi._parser._declarations.items():
        if not key.startswith("function "):
            continue
        name = key.split(" ", 1)[1]
        fn = getattr(lib, name)
        want_res = _ctype_of(ffi, tp.result)
        want_args = [_ctype_of(ffi, a) for a in tp.args]
        # ctypes' default restype is int: leaving it unset is right only for functions returning int
        assert fn.restype == want_res or (want_res is ctypes.c_int and fn.restype is ctypes.c_int), \
            f"{name}: restype {fn.restype} vs the header's {tp.result._get_c_name()}"
        assert list(fn.argtypes or []) == want_args, f"{name}: argtypes {fn.argtypes} vs the header's {want_args}"
        n += 1
    assert n >= 15  # every entry point of kimi_bridge.h was compared
