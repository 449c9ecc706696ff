"""Checkpoint -> GGUF for llama.cpp.

  python -m mvlm_jax.export --ckpt CKPT_DIR --out OUT_DIR --type f32|f16|q8_0|q4_k_s|q4_k_m [--force]
      [--tokenizer tokenizer.model] [--name NAME] [--cls keep|reorder|drop] [--mmproj-only]

Writes OUT_DIR/<name>-<type>.gguf (arch llama) and, for a VLM checkpoint, OUT_DIR/mmproj-<name>-f16.gguf
(arch clip; OUT_DIR/mmproj-<name>-cls-<mode>-f16.gguf with --cls reorder|drop, so the faithful file and a
workaround can sit side by side). LoRA adapters are merged first. The SentencePiece model comes from --tokenizer or
CKPT_DIR/tokenizer.model. `--cls` only matters for a tower with a class token (see docs/EXPORT.md).
Also `mvlm export ...`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mvlm_jax.checkpoint import load_config
from mvlm_jax.export.gguf_file import export_gguf
from mvlm_jax.export.gguf_io import FILE_TYPES
from mvlm_jax.export.mmproj_gguf import CLS_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="model checkpoint directory (LLM or VLM)")
    parser.add_argument("--out", required=True, help="directory for the .gguf files")
    parser.add_argument("--type", choices=list(FILE_TYPES), default="f16", help="the LLM's tensor type")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: CKPT_DIR/tokenizer.model)")
    parser.add_argument("--name", help="file name stem (default: the checkpoint directory's name)")
    parser.add_argument("--cls", choices=CLS_MODES, default="keep",
                        help="how to write a class token for llama.cpp's vision graph (docs/EXPORT.md)")
    parser.add_argument("--mmproj-only", action="store_true",
                        help="write only the mmproj (e.g. another --cls mode beside an existing export)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_config(args.ckpt)  # a checkpoint at all? (said before anything about its tokenizer)
        written = export_gguf(args.ckpt, args.out, args.type, tokenizer=args.tokenizer, name=args.name,
                              cls=args.cls, force=args.force, mmproj_only=args.mmproj_only)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({Path(path).stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
