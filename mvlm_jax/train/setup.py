"""From an experiment's ConfigDict to the pieces the loop runs: model config, data stream, optimizer.

Each component reads only its own sub-config (model, data, optim, train, mesh, checkpoint).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from data_pipelines.conversations import ConversationData, build_conversation_dataset
from data_pipelines.pretrain_pipeline import MIXTURE_PRESETS, PretrainData, build_pretrain_dataset, mixture
from data_pipelines.stream import BatchStream, ReadOptions
from mvlm_jax.models.config import (LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, LoraConfig, ModelConfig,
                                    VLMConfig)
from mvlm_jax.sharding import MeshConfig
from mvlm_jax.train.checkpoints import CheckpointConfig
from mvlm_jax.train.optimizer import OptimConfig


def _preset(presets: dict, name: str, what: str):
    if name not in presets:
        raise ValueError(f"config.model.{what}: unknown preset {name!r}; expected one of {sorted(presets)}")
    return presets[name]


def model_config(model: ml_collections.ConfigDict) -> ModelConfig:
    lora = LoraConfig(**model.lora) if model.lora.rank else None
    llm = dataclasses.replace(_preset(LLAMA_PRESETS, model.llm, "llm"), dtype=model.dtype, remat_policy=model.remat,
                              lora=lora, **dict(model.llm_overrides))
    if model.kind == "llm":
        return llm
    if model.kind != "vlm":
        raise ValueError(f"config.model.kind: {model.kind!r}; expected llm or vlm")
    vision = dataclasses.replace(_preset(VISION_PRESETS, model.vision, "vision"), dtype=model.dtype,
                                 **dict(model.vision_overrides))
    projector = dataclasses.replace(_preset(PROJECTOR_PRESETS, model.projector, "projector"), dtype=model.dtype)
    return VLMConfig(vision, projector, llm)


def optim_config(config: ml_collections.ConfigDict) -> OptimConfig:
    return OptimConfig(**dict(config.optim), total_steps=config.train.total_steps)


def mesh_config(config: ml_collections.ConfigDict) -> MeshConfig:
    return MeshConfig(**dict(config.mesh))


def checkpoint_config(config: ml_collections.ConfigDict) -> CheckpointConfig:
    return CheckpointConfig(**dict(config.checkpoint))


def data_stream(config: ml_collections.ConfigDict, model: ModelConfig, process_index: int,
                process_count: int) -> BatchStream:
    data = config.data
    read = ReadOptions(worker_count=data.workers)
    if data.kind == "pretrain":
        if data.mixture:
            if data.mixture not in MIXTURE_PRESETS:
                raise ValueError(f"config.data.mixture: unknown {data.mixture!r}; expected one of {sorted(MIXTURE_PRESETS)}")
            sources = mixture(data.mixture, dict(data.mixture_dirs))
        else:
            sources = tuple((directory, 1.0) for directory in data.shards)
        return build_pretrain_dataset(PretrainData(
            sources=sources, seq_len=data.seq_len, batch_size=config.train.batch_size, seed=data.seed,
            reset_attention_at_eos=data.reset_attention_at_eos, read=read), process_index, process_count)
    if data.kind == "conversation":
        num_visual = model.num_visual_tokens if isinstance(model, VLMConfig) else 0
        image_size = model.vision.image_size if isinstance(model, VLMConfig) else 336
        return build_conversation_dataset(ConversationData(
            files=tuple(data.files), format=data.format, template=data.template, tokenizer=data.tokenizer,
            seq_len=data.seq_len, batch_size=config.train.batch_size, seed=data.seed, image_root=data.image_root or None,
            image_size=image_size, pad_images=data.pad_images, num_visual_tokens=num_visual,
            images_per_row=data.images_per_row, pack=data.pack, read=read), process_index, process_count)
    raise ValueError(f"config.data.kind: {data.kind!r}; expected pretrain or conversation")


def workdir_path(workdir: str) -> Path:
    path = Path(workdir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path
