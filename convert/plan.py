"""The conversion plan: every GGUF tensor with its type and size, checked against the checkpoint.

Everything that can be wrong with the input (a missing, unexpected or mis-shaped tensor, a dtype
we cannot read) is found here, before a byte of output is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gguf

from ..errors import KimiError
from ..names import Entry, build_table, canonical_shapes
from ..source import TensorSource
from ..spec import ModelSpec
from . import quantize as qz

SUPPORTED_DTYPES = {"F32", "F16", "BF16", "F64"}


@dataclass(frozen=True)
class Planned:
    entry: Entry
    qtype: gguf.GGMLQuantizationType
    reason: str | None  # why not the requested type

    @property
    def nbytes(self) -> int:
        return qz.nbytes(self.entry.shape, self.qtype)


@dataclass
class Plan:
    spec: ModelSpec
    outtype: str                 # resolved (never "auto")
    write_type: str              # type written by us (the intermediate for K-quants)
    tensors: list[Planned]
    source_dtypes: set[str]
    tensor_dialect: str = "moonshot"
    ignored: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self.tensors)

    @property
    def is_kquant(self) -> bool:
        return self.outtype in qz.KQUANTS


def check_source(spec: ModelSpec, source: TensorSource) -> tuple[set[str], list[str]]:
    """Every expected tensor present with its shape and a readable dtype; nothing unexpected."""
    expected = canonical_shapes(spec)
    have = set(source.keys())
    where = source.path
    for name, shape in expected.items():
        if name not in have:
            raise KimiError(f"{where}: missing tensor '{name}' (config.json expects it)")
        got = tuple(source.shape(name))
        if got != shape:
            raise KimiError(f"{where}: tensor '{name}' has shape {list(got)}, config.json implies {list(shape)}")
    ignored = []
    for name in sorted(have - set(expected)):
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            ignored.append(name)  # tied: llama.cpp gets the embedding as output.weight
            continue
        raise KimiError(f"{where}: unexpected tensor '{name}' (not part of a Kimi Linear model with this config)")
    dtypes = set()
    for name in expected:
        dt = str(source.dtype(name)).upper()
        if dt not in SUPPORTED_DTYPES:
            raise KimiError(f"{where}: tensor '{name}' has unsupported dtype {dt} "
                            f"(supported: {', '.join(sorted(SUPPORTED_DTYPES))})")
        dtypes.add(dt)
    return dtypes, ignored


def make_plan(spec: ModelSpec, source: TensorSource, outtype: str) -> Plan:
    if outtype not in qz.OUTTYPES:
        raise KimiError(f"--outtype: unknown type '{outtype}' (choose from {', '.join(qz.OUTTYPES)})")
    table = build_table(spec)
    dtypes, ignored = check_source(spec, source)
    # the matrices decide `auto` and the K-quant intermediate; small tensors kept f32 (A_log,
    # dt_bias, router bias ship as float32 in bf16 checkpoints) must not force a float32 file
    big = {str(source.dtype(s)).upper() for e in table if not e.keep_f32 for s in e.sources[:1]
           if s in source} or dtypes
    resolved = qz.resolve_auto(big) if outtype == "auto" else outtype
    write_type = qz.intermediate_type(big) if resolved in qz.KQUANTS else resolved
    tensors = []
    for ent in table:
        c = qz.choose(ent, write_type)
        tensors.append(Planned(ent, c.qtype, c.reason))
    dialect = getattr(source, "dialect", None) or getattr(source, "tensor_dialect", None) or "moonshot"
    return Plan(spec, resolved, write_type, tensors, dtypes, str(dialect), ignored)
