"""Writing GGUF files one tensor at a time.

A file is laid out from a plan (name, shape, type per tensor) before any weight is converted; each tensor
is then loaded, cast or quantized and written, so peak memory stays at the checkpoint plus one tensor.
Shapes are numpy / PyTorch order ([out, in] for a linear weight); GGUF stores the dims reversed.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import gguf
import numpy as np

from mvlm_jax.atomic import atomic_file

Q = gguf.GGMLQuantizationType

# --type of the export -> (llama file type, tensor type of the matrices). K-quants start from an F16 file
# and go through llama.cpp's own quantizer (mvlm_jax/edge/llamacpp.py, `quantize`).
FILE_TYPES: dict[str, tuple[gguf.LlamaFileType, Q]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, Q.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
    "q4_k_s": (gguf.LlamaFileType.MOSTLY_Q4_K_S, Q.Q4_K),
    "q4_k_m": (gguf.LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K),
}


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a GGUF file. load() returns a float32 array of `shape`."""

    name: str
    shape: tuple[int, ...]
    qtype: Q
    load: Callable[[], np.ndarray]

    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block * type_size

    def encode(self) -> np.ndarray:
        data = self.load()
        if tuple(data.shape) != self.shape:
            raise ValueError(f"tensor {self.name}: planned shape {list(self.shape)}, got {list(data.shape)}")
        if self.qtype == Q.F32:
            return np.ascontiguousarray(data, np.float32)
        if self.qtype == Q.F16:
            return np.ascontiguousarray(data, np.float16)
        return gguf.quants.quantize(np.ascontiguousarray(data, np.float32), self.qtype)


def rename(name: str, table: Sequence[tuple[str, str]], prefix: str = "") -> str:
    """Source tensor name -> llama.cpp name by the first (regex, replacement) of `table` that fully matches."""
    for pattern, replacement in table:
        if re.fullmatch(pattern, name):
            return prefix + re.sub(pattern, replacement, name)
    raise ValueError(f"no llama.cpp name for tensor {name}")


def matrix_type(shape: Sequence[int], wanted: Q) -> Q:
    """The type llama.cpp itself would give: vectors stay F32 (it never quantizes 1-D tensors); a block
    type needs rows (ne[0] = shape[-1]) that are a multiple of its block size, else F16."""
    if len(shape) < 2:
        return Q.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else Q.F16


def write_gguf(path: str | os.PathLike, arch: str, metadata: Callable[[gguf.GGUFWriter], None],
               tensors: Sequence[PlannedTensor], force: bool = False) -> Path:
    """Write a complete GGUF file at `path` (atomically: a temporary name renamed at the end)."""
    names = [t.name for t in tensors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate GGUF tensor name(s) {duplicates}")
    with atomic_file(path, force=force) as partial:
        writer = gguf.GGUFWriter(partial, arch)
        try:
            metadata(writer)
            for tensor in tensors:
                if tensor.qtype in (Q.F32, Q.F16):
                    dtype = np.float32 if tensor.qtype == Q.F32 else np.float16
                    writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(dtype), tensor.nbytes())
                else:
                    byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, tensor.qtype)
                    writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), tensor.nbytes(),
                                           raw_dtype=tensor.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor in tensors:
                writer.write_tensor_data(tensor.encode())
        finally:
            writer.close()
    return Path(path)
