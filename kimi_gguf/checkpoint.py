"""HFCheckpoint: a Hugging Face Kimi Linear checkpoint directory as a TensorSource (safetensors, mmap).

Reads one ``model.safetensors`` or shards listed in ``model.safetensors.index.json`` and presents
every tensor under its canonical (published Moonshot) name and shape, whichever naming the files use:

* original / Moonshot: ``self_attn.{q,k,v}_conv1d.weight``, ``self_attn.{f_a_proj,f_b_proj,A_log,
  dt_bias}``, ``block_sparse_moe.experts.N.w{1,2,3}.weight``, dense layer under ``mlp.``;
* transformers' in-memory (state-dict) naming: fused ``self_attn.conv1d.weight`` [3*C, 1, K] (split
  into q/k/v in that order), ``self_attn.forget_gate.*``, MoE under ``mlp.`` with stacked
  ``mlp.experts.gate_up_proj`` [E, 2*I, H] (gate rows first, then up) and ``mlp.experts.down_proj``
  [E, H, I];
* what transformers' ``save_pretrained`` writes: the original naming, except that its reverse
  renaming also moves the *dense* layer's ``mlp.`` to ``block_sparse_moe.{gate,up,down}_proj``.

Whether an ``mlp.`` / ``block_sparse_moe.`` tensor belongs to a dense or an MoE layer is decided by
the ModelSpec (layer kinds come from config.json), not by its prefix.

Nothing is read up front but the safetensors headers; each `get` reads one tensor (or the slice of
a fused/stacked tensor that holds it) through safetensors' memory map. Tensors are read with
framework="pt" because NumPy has no bfloat16; `get` returns float32 (float64 if stored so), and
`get_torch` hands the converter the untouched stored tensor (stored dtype, canonical shape).

`open_source(path)` picks the reader for a path: an HF directory -> HFCheckpoint, a ``.gguf`` file
-> kimi_gguf.convert.gguf_source.GGUFSource.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import KimiError
from .names import canonical_shapes
from .spec import DENSE, ModelSpec

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_FORGET = re.compile(r"^self_attn\.forget_gate\.(f_a_proj\.weight|f_b_proj\.weight|dt_bias|A_log)$")
_FFN = re.compile(r"^(mlp|block_sparse_moe)\.(.+)$")


@dataclass(frozen=True)
class _Ref:
    """Where a canonical tensor lives: a stored tensor, optionally one index/slice of it."""
    file: Path
    stored: str
    select: tuple | None = None  # indexing applied to the stored tensor (None: all of it)


class HFCheckpoint:
    """TensorSource over a Hugging Face checkpoint directory (see module docstring)."""

    def __init__(self, model_dir: str | Path, spec: ModelSpec | None = None):
        self.dir = Path(model_dir)
        self.path = str(self.dir)
        if not self.dir.is_dir():
            raise KimiError(f"{self.dir}: not a directory (expected a Hugging Face checkpoint directory)")
        self.spec = spec if spec is not None else ModelSpec.from_dir(self.dir)
        self._handles: dict[Path, object] = {}
        self._refs: dict[str, _Ref] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file, names in self._stored_files().items():
            handle = self._open(file)
            for stored in names:
                shape = tuple(handle.get_slice(stored).get_shape())
                for canon, select, cshape in self._targets(file, stored, shape):
                    if canon in self._refs:
                        prev = self._refs[canon]
                        raise KimiError(f"{file}: tensor '{stored}' and '{prev.stored}' ({prev.file.name}) "
                                        f"both provide '{canon}'")
                    self._refs[canon] = _Ref(file, stored, select)
                    self._shapes[canon] = cshape
        self._validate()

    # ------------------------------------------------------------------ TensorSource
    def keys(self) -> list[str]:
        return list(self._order)

    def __contains__(self, name: str) -> bool:
        return name in self._refs

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def shape(self, name: str) -> tuple[int, ...]:
        self._ref(name)
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        ref = self._ref(name)
        return str(self._open(ref.file).get_slice(ref.stored).get_dtype())

    raw_dtype = dtype  # the stored dtype name ('BF16', 'F32', ...), as the converter calls it

    def get(self, name: str) -> np.ndarray:
        """The canonical tensor as float32 (float64 if stored as F64), canonical shape."""
        return _to_numpy(self.get_torch(name))

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a canonical tensor (first axis) without reading the rest."""
        ref = self._ref(name)
        if ref.select is not None:  # a slice of a fused tensor: small enough to read whole
            return self.get(name)[start:stop]
        t = self._open(ref.file).get_slice(ref.stored)[start:stop]
        return _to_numpy(t)

    def get_torch(self, name: str):
        """The untouched stored tensor (torch, stored dtype e.g. bfloat16) in its canonical shape.

        For fused/stacked stored tensors it is the slice that holds `name` (a copy of just that part)."""
        ref = self._ref(name)
        handle = self._open(ref.file)
        try:
            if ref.select is None:
                t = handle.get_tensor(ref.stored)
            else:
                t = handle.get_slice(ref.stored)[ref.select]
        except Exception as exc:  # safetensors raises its own types for truncated/corrupt data
            raise KimiError(f"{ref.file}: cannot read tensor '{ref.stored}' ({exc})") from None
        return t.reshape(self._shapes[name]).contiguous()

    # ------------------------------------------------------------------ discovery
    def _stored_files(self) -> dict[Path, list[str]]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            return self._from_index(index)
        single = self.dir / SINGLE_NAME
        if single.is_file():
            return {single: list(self._open(single).keys())}
        raise KimiError(f"{self.dir}: no {SINGLE_NAME} and no {INDEX_NAME}")

    def _from_index(self, index: Path) -> dict[Path, list[str]]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KimiError(f"{index}: not valid JSON ({exc})") from None
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise KimiError(f"{index}: missing or empty 'weight_map'")
        files: dict[Path, list[str]] = {}
        for stored, shard in wmap.items():
            if not isinstance(shard, str) or not shard or "\0" in shard:
                raise KimiError(f"{index}: tensor '{stored}' has no valid shard file name ({shard!r})")
            path = (self.dir / shard)
            # Judge the name the index gives, not where symlinks lead: a Hugging Face cache snapshot
            # links every file to ../../blobs/<hash>, which is the user's own layout, not the index's.
            norm = os.path.normpath(shard)
            if os.path.isabs(shard) or norm == ".." or norm.startswith(".." + os.sep):
                raise KimiError(f"{index}: shard '{shard}' of tensor '{stored}' lies outside {self.dir}")
            if not path.is_file():
                raise KimiError(f"{index}: shard '{shard}' (tensor '{stored}') is missing")
            files.setdefault(path, []).append(stored)
        for path, names in files.items():
            have = set(self._open(path).keys())
            for stored in names:
                if stored not in have:
                    raise KimiError(f"{index}: tensor '{stored}' is listed in shard '{path.name}', "
                                    "which does not hold it")
        return files

    def _open(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            from safetensors import safe_open
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as exc:
                raise KimiError(f"{file}: not a readable safetensors file ({exc})") from None
            self._handles[file] = handle
        return handle

    def _targets(self, file: Path, stored: str, shape: tuple[int, ...]):
        """(canonical name, selection, canonical shape) for each canonical tensor in `stored`."""
        m = _LAYER.match(stored)
        if not m:
            return [(stored, None, shape)]
        i, rest = int(m.group(1)), m.group(2)
        p = f"model.layers.{i}."
        if i >= self.spec.num_layers:
            return [(stored, None, shape)]  # e.g. an MTP layer: kept under its own name, unused
        fg = _FORGET.match(rest)
        if fg:
            return [(p + "self_attn." + fg.group(1), None, shape)]
        if rest == "self_attn.conv1d.weight":
            C = self.spec.kda.proj_dim
            if len(shape) != 3 or shape[0] != 3 * C:
                raise KimiError(f"{file}: tensor '{stored}' has shape {list(shape)}, expected "
                                f"[{3 * C}, 1, {self.spec.kda.conv_kernel}] (fused q/k/v conv)")
            return [(p + f"self_attn.{x}_conv1d.weight", (slice(j * C, (j + 1) * C),), (C,) + shape[1:])
                    for j, x in enumerate("qkv")]
        f = _FFN.match(rest)
        if not f:
            return [(stored, None, shape)]
        sub = f.group(2)
        if self.spec.layers[i].ffn == DENSE:
            return [(p + "mlp." + sub, None, shape)]
        b = p + "block_sparse_moe."
        I = self.spec.moe.intermediate_size
        E = self.spec.moe.num_experts
        if sub == "experts.gate_up_proj":
            if len(shape) != 3 or shape[0] != E or shape[1] != 2 * I:
                raise KimiError(f"{file}: tensor '{stored}' has shape {list(shape)}, expected "
                                f"[{E}, {2 * I}, {self.spec.hidden_size}]")
            out = []
            for e in range(E):
                out.append((b + f"experts.{e}.w1.weight", (e, slice(0, I)), (I, shape[2])))
                out.append((b + f"experts.{e}.w3.weight", (e, slice(I, 2 * I)), (I, shape[2])))
            return out
        if sub == "experts.down_proj":
            if len(shape) != 3 or shape[0] != E:
                raise KimiError(f"{file}: tensor '{stored}' has shape {list(shape)}, expected "
                                f"[{E}, {self.spec.hidden_size}, {I}]")
            return [(b + f"experts.{e}.w2.weight", (e,), tuple(shape[1:])) for e in range(E)]
        return [(b + sub, None, shape)]

    def _validate(self) -> None:
        expected = canonical_shapes(self.spec)
        for name, shape in expected.items():
            if name not in self._refs:
                raise KimiError(f"{self.dir}: missing tensor '{name}'")
            if tuple(self._shapes[name]) != tuple(shape):
                ref = self._refs[name]
                what = f"'{ref.stored}'" + (f" (as '{name}')" if ref.stored != name else "")
                raise KimiError(f"{ref.file}: tensor {what} has shape {list(self._shapes[name])}, "
                                f"expected {list(shape)}")
        # canonical tensors first, in the spec's order; any extras (unused) after them
        self._order = list(expected) + sorted(n for n in self._refs if n not in expected)

    def _ref(self, name: str) -> _Ref:
        ref = self._refs.get(name)
        if ref is None:
            raise KimiError(f"{self.dir}: missing tensor '{name}'")
        return ref


def _to_numpy(t) -> np.ndarray:
    import torch
    if t.dtype == torch.float64:
        return t.numpy()
    if t.is_floating_point():
        return t.to(torch.float32).numpy()
    return t.numpy()


def open_source(path: str | Path):
    """The TensorSource for `path`: a ``.gguf`` file (GGUF reader of kimi_gguf.convert) or an HF dir."""
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise KimiError(f"{p}: no such GGUF file")
        try:
            from kimi_gguf.convert.gguf_source import GGUFSource
        except ImportError as exc:
            raise KimiError(f"{p}: reading GGUF files needs kimi_gguf.convert.gguf_source ({exc})") from None
        return GGUFSource(p)
    if not p.exists():
        raise KimiError(f"{p}: no such checkpoint directory")
    return HFCheckpoint(p)
