"""One export call: a checkpoint to the GGUF files llama.cpp loads (the LLM, plus an mmproj for a VLM)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mvlm_jax.atomic import atomic_file, ensure_writable
from mvlm_jax.checkpoint import TOKENIZER_FILE, load_model
from mvlm_jax.edge.llamacpp import quantize
from mvlm_jax.export.gguf_io import FILE_TYPES, write_gguf
from mvlm_jax.export.llm_gguf import llm_metadata, llm_tensors
from mvlm_jax.export.mmproj_gguf import CLS_MODES, ClsMode, check_supported, mmproj_metadata, mmproj_tensors
from mvlm_jax.models.config import LlamaConfig, VLMConfig
from mvlm_jax.models.lora import merge_lora
from mvlm_jax.paths import as_path, local_file, probe, require_local


def output_paths(out: str | os.PathLike, name: str, file_type: str, vision: bool,
                 cls: ClsMode = "keep") -> list[Path]:
    """[LLM file] or [LLM file, mmproj file]. A `cls` workaround other than the faithful "keep" is part of
    the mmproj's name (`mmproj-NAME-cls-drop-f16.gguf`), so exports in several modes sit side by side."""
    if cls not in CLS_MODES:
        raise ValueError(f"unknown --cls mode {cls!r}; expected one of {list(CLS_MODES)}")
    out = Path(out)
    paths = [out / f"{name}-{file_type}.gguf"]
    if vision:
        mode = "" if cls == "keep" else f"-cls-{cls}"
        paths.append(out / f"mmproj-{name}{mode}-f16.gguf")
    return paths


def export_gguf(ckpt: str | os.PathLike, out: str | os.PathLike, file_type: str = "f16",
                tokenizer: str | os.PathLike | None = None, name: str | None = None, cls: ClsMode = "keep",
                force: bool = False, mmproj_only: bool = False) -> list[Path]:
    """Write the GGUF file(s) for checkpoint `ckpt` into directory `out`; returns their paths.

    Every file is written under a temporary name and renamed when complete; existing files are kept
    unless `force`. For K-quant types an F16 file is written to a temporary directory first.
    `mmproj_only` writes just the vision file (e.g. a `--cls` workaround beside an existing export).
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown GGUF type {file_type!r}; expected one of {list(FILE_TYPES)}")
    ckpt = as_path(ckpt, "--ckpt")  # local or gs://
    require_local(out, "--out")  # GGUF files are for llama.cpp, which reads local files
    name = name or ckpt.name
    tokenizer = as_path(tokenizer, "--tokenizer") if tokenizer else ckpt / TOKENIZER_FILE
    if not mmproj_only and not probe(tokenizer):
        raise FileNotFoundError(f"{tokenizer}: no SentencePiece model; the checkpoint carries none, pass --tokenizer")
    params, config = load_model(ckpt)
    if not isinstance(config, (LlamaConfig, VLMConfig)):
        raise ValueError(f"{ckpt}: a {type(config).__name__} checkpoint has no GGUF export (export the VLM that holds it)")
    vision = isinstance(config, VLMConfig)
    if vision:
        check_supported(config)
    elif mmproj_only:
        raise ValueError(f"{ckpt}: a text-only checkpoint has no mmproj (drop --mmproj-only)")
    paths = output_paths(out, name, file_type, vision, cls)
    if mmproj_only:
        paths = paths[1:]
    for path in paths:
        ensure_writable(path, force)
    params, config = merge_lora(params, config)
    llm_params, llm_config = (params["llm"], config.llm) if vision else (params, config)

    # Plan the mmproj before writing anything, so that a tensor it cannot name fails the export up front.
    mmproj_plan = mmproj_tensors(params, config, cls) if vision else []
    Path(out).mkdir(parents=True, exist_ok=True)
    if not mmproj_only:
        with local_file(tokenizer) as local_tokenizer:  # SentencePiece opens the file itself
            _write_llm(paths[0], name, file_type, llm_params, llm_config, local_tokenizer, force)
    if vision:
        write_gguf(paths[-1], "clip", mmproj_metadata(config, paths[-1].name.removesuffix("-f16.gguf")),
                   mmproj_plan, force=force)
    return paths


def _write_llm(path: Path, name: str, file_type: str, llm_params: dict, llm_config: LlamaConfig,
               tokenizer: Path, force: bool) -> None:
    """The LLM file; K-quants go through an F16 scratch file in a temporary directory beside it."""
    llama_type, matrices = FILE_TYPES[file_type]
    direct = file_type in ("f32", "f16", "q8_0")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        first = path if direct else Path(scratch) / "f16.gguf"
        written_type, written_matrices = (llama_type, matrices) if direct else FILE_TYPES["f16"]
        write_gguf(first, "llama", llm_metadata(llm_config, name, written_type, tokenizer),
                   llm_tensors(llm_params, llm_config, written_matrices), force=force)
        if not direct:
            with atomic_file(path, force=force) as partial:
                quantize(first, partial, llama_type)
