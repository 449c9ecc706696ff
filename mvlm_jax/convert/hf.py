"""Hugging Face checkpoints <-> our orbax checkpoints.

  python -m mvlm_jax.convert.hf import --hf HF_DIR --out CKPT_DIR [--vision CLIP_DIR] [--force]
  python -m mvlm_jax.convert.hf export --ckpt CKPT_DIR --out HF_DIR [--dtype float32|float16|bfloat16] [--force]

Import reads a LlamaForCausalLM, a CLIPVisionModel / CLIPModel (the vision part) or a MobileVLM
checkpoint, deciding from config.json. Export writes a LlamaForCausalLM directory for an LLM checkpoint
and the MobileVLM layout for a VLM checkpoint (LoRA adapters merged first).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import ml_dtypes
import numpy as np

from mvlm_jax.atomic import atomic_directory, ensure_writable
from mvlm_jax.checkpoint import TOKENIZER_FILE, load_config, load_model, save_model
from mvlm_jax.convert import hf_config
from mvlm_jax.convert.families import clip_mapping, llama_mapping, projector_mapping
from mvlm_jax.convert.mapping import ConversionError, Mapping, export_tensors, import_params
from mvlm_jax.convert.safetensors_io import MergedSource, SafetensorsDir, TensorSource, write_sharded
from mvlm_jax.models import abstract_params
from mvlm_jax.models.config import LlamaConfig, ModelConfig, VisionConfig, VLMConfig
from mvlm_jax.models.lora import merge_lora

TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."  # the tower's names as MobileVLM releases spell them
# A MobileVLM re-saved with transformers 5 spells them without `vision_model.` (its CLIPVisionModel drops it).
TOWER_PREFIX_TRANSFORMERS5 = "model.vision_tower.vision_tower."
TOWER_DIR = "vision_tower"
# A CLIPModel also holds the text half; only the vision part is ever used.
CLIP_TEXT_PARTS = (r"text_model\..*", r"logit_scale", r"text_projection\.weight", r"visual_projection\.weight")
EXPORT_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _clip_prefix(source: TensorSource) -> str:
    """`vision_model.` in CLIPModel files and older CLIPVisionModel files; transformers 5 saves a
    CLIPVisionModel without it."""
    return "vision_model." if any(n.startswith("vision_model.") for n in source.names()) else ""


def _vlm_mapping(config: VLMConfig, tower_prefix: str) -> Mapping:
    return (llama_mapping(config.llm).prefixed(("llm",))
            + clip_mapping(config.vision, tower_prefix).prefixed(("vision",))
            + projector_mapping(config.projector).prefixed(("projector",)))


def _resolve_tower(config: dict, hf_dir: Path, vision_dir: Path | None) -> tuple[VisionConfig, Path | None]:
    """The tower config the way the official loader finds it: `mm_vision_tower` as a local CLIP directory
    (or --vision), else the known shape of the hub model it names."""
    where = hf_dir / "config.json"
    name = config.get("mm_vision_tower")
    select = dict(select_layer=config.get("mm_vision_select_layer", -1),  # the official code's default
                  select_feature=config.get("mm_vision_select_feature", "patch"))
    candidates = [vision_dir] if vision_dir else []
    if name:  # as given (the official code: relative to the working directory), then beside the checkpoint
        candidates += [Path(name), hf_dir / name, hf_dir / Path(name).name]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return hf_config.vision_from_hf(hf_config.read_json(candidate / "config.json"), candidate, **select), candidate
    if vision_dir:
        raise FileNotFoundError(f"{vision_dir / 'config.json'}: missing (given by --vision)")
    if name in hf_config.KNOWN_TOWERS:
        return hf_config.vision_from_hf(hf_config.KNOWN_TOWERS[name], where, **select), None
    raise ConversionError(f"{where}: mm_vision_tower {name!r} is neither a local CLIP directory nor a known hub "
                          f"model ({sorted(hf_config.KNOWN_TOWERS)}); pass --vision CLIP_DIR")


def plan_import(hf_dir: Path, vision_dir: Path | None = None) -> tuple[ModelConfig, Mapping, TensorSource]:
    """Decide what `hf_dir` holds: (our config, the tensor mapping, the tensor source)."""
    where = hf_dir / "config.json"
    config = hf_config.read_json(where)
    kind = hf_config.detect_kind(config, where)
    source: TensorSource = SafetensorsDir(hf_dir)
    if kind == "llm":
        llm = hf_config.llama_from_hf(config, where)
        return llm, llama_mapping(llm), source
    if kind == "vision":
        vision = hf_config.vision_from_hf(config, where)
        return vision, clip_mapping(vision, _clip_prefix(source)) + Mapping((), CLIP_TEXT_PARTS), source
    vision, tower_dir = _resolve_tower(config, hf_dir, vision_dir)
    mm_hidden = config.get("mm_hidden_size", vision.width)
    if mm_hidden != vision.width:
        raise ConversionError(f"{where}: mm_hidden_size {mm_hidden} differs from the tower width {vision.width}")
    vlm = VLMConfig(vision=vision, projector=hf_config.projector_from_hf(config, where),
                    llm=hf_config.llama_from_hf(config, where))
    for prefix in (TOWER_PREFIX, TOWER_PREFIX_TRANSFORMERS5):  # the longer one first: it contains the other
        if any(n.startswith(prefix) for n in source.names()):
            return vlm, _vlm_mapping(vlm, prefix), source
    # V1-style checkpoints without the tower: its weights come from the CLIP directory.
    if tower_dir is None:
        raise ConversionError(f"{hf_dir}: the checkpoint holds no {TOWER_PREFIX}* tensors and mm_vision_tower "
                              f"{config.get('mm_vision_tower')!r} is not a local directory; pass --vision CLIP_DIR")
    tower = SafetensorsDir(tower_dir)
    mapping = _vlm_mapping(vlm, _clip_prefix(tower)) + Mapping((), CLIP_TEXT_PARTS)
    return vlm, mapping, MergedSource(source, tower)


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, force: bool = False,
              vision_dir: str | os.PathLike | None = None) -> ModelConfig:
    """Convert a Hugging Face directory to a checkpoint at `out`; returns the model config."""
    hf_dir, out = Path(hf_dir), Path(out)
    ensure_writable(out, force)
    config, mapping, source = plan_import(hf_dir, Path(vision_dir) if vision_dir else None)
    params = import_params(source, mapping, nn.unbox(abstract_params(config)))
    tokenizer = hf_dir / TOKENIZER_FILE  # the SentencePiece model, kept for GGUF export and chat
    save_model(out, params, config, force=force, tokenizer=tokenizer if tokenizer.is_file() else None)
    return config


def _export_plan(config: ModelConfig, out: Path) -> tuple[Mapping, dict]:
    if isinstance(config, LlamaConfig):
        return llama_mapping(config), hf_config.llama_to_hf(config)
    if isinstance(config, VLMConfig):
        if not config.vision.class_token:
            raise ConversionError(
                "this VLM's vision tower has no class token (VisionConfig.class_token=False, e.g. the demo preset); "
                "a Hugging Face CLIPVisionModel always has one (num_patches + 1 position rows), so transformers and "
                "the official MobileVLM code cannot load it. Export it for llama.cpp instead (`mvlm export`, "
                "docs/EXPORT.md), which runs such a tower exactly")
        # The official loader builds the tower with CLIPVisionModel.from_pretrained(mm_vision_tower): a hub
        # id when the architecture is a known one, else the tower directory written beside the checkpoint.
        tower = hf_config.known_tower(config.vision) or str(out.absolute() / TOWER_DIR)
        hf = {**hf_config.llama_to_hf(config.llm, legacy_rope_scaling=True),  # the official code's transformers
              "architectures": ["MobileLlamaForCausalLM"],
              "model_type": "mobilevlm", **hf_config.projector_to_hf(config.projector),
              "mm_hidden_size": config.vision.width, "mm_vision_select_layer": config.vision.select_layer,
              "mm_vision_select_feature": config.vision.select_feature, "mm_vision_tower": tower,
              "vision_tower_type": "clip", "image_aspect_ratio": "pad",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False}
        return _vlm_mapping(config, TOWER_PREFIX), hf
    # A tower is never trained here: its source checkpoint is already the export.
    raise ConversionError("a vision-only checkpoint has no Hugging Face export (the tower is frozen, so the "
                          "CLIP checkpoint it was imported from is its export); export the VLM that holds it")


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, force: bool = False, dtype: str = "float32",
              max_shard_bytes: int = 2 << 30) -> ModelConfig:
    """Write `ckpt` as a Hugging Face directory (safetensors shards + config.json) at `out`."""
    out = Path(out)
    ensure_writable(out, force)
    _export_plan(load_config(ckpt), out)  # what has no Hugging Face form is refused before the weights load
    params, config = load_model(ckpt)
    params, config = merge_lora(params, config)
    mapping, hf = _export_plan(config, out)
    hf["torch_dtype"] = dtype
    with atomic_directory(out, force=force) as partial:
        write_sharded(partial, export_tensors(params, mapping, EXPORT_DTYPES[dtype]), max_shard_bytes)
        (partial / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        if isinstance(config, VLMConfig) and hf["mm_vision_tower"].endswith(TOWER_DIR):
            # A CLIPVisionModel directory with the blocks up to the selected layer (the later ones and
            # post_layernorm never reach the projector and are not kept; transformers initialises them).
            tower_dir = partial / TOWER_DIR
            tower_dir.mkdir()
            tower_mapping = clip_mapping(config.vision, "vision_model.").prefixed(("vision",))
            write_sharded(tower_dir, export_tensors(params, tower_mapping, EXPORT_DTYPES[dtype]), max_shard_bytes)
            (tower_dir / "config.json").write_text(json.dumps(hf_config.vision_to_hf(config.vision), indent=2) + "\n")
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m mvlm_jax.convert.hf", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="Hugging Face directory -> checkpoint")
    imp.add_argument("--hf", required=True, help="directory with config.json and safetensors")
    imp.add_argument("--out", required=True, help="checkpoint directory to create")
    imp.add_argument("--vision", help="CLIP directory for a MobileVLM tower (overrides mm_vision_tower)")
    imp.add_argument("--force", action="store_true", help="replace an existing --out")
    exp = commands.add_parser("export", help="checkpoint -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="float32")
    exp.add_argument("--max-shard-gb", type=float, default=2.0)
    exp.add_argument("--force", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "import":
            config = import_hf(args.hf, args.out, force=args.force, vision_dir=args.vision)
        else:
            config = export_hf(args.ckpt, args.out, force=args.force, dtype=args.dtype,
                               max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
    except (ValueError, OSError) as error:  # ConversionError, missing files, an existing --out
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({type(config).__name__}: {json.dumps(dataclasses.asdict(config))[:200]}...)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
