"""An experiment's ConfigDict parsed once into typed, frozen parts: model, optimizer, mesh (shape and
sharding rules), the step's shape and what trains, the loss, checkpointing, and where weights come from.

Everything below the entry point (mvlm_jax.train.entry) receives these parts, never the ConfigDict; the
ConfigDict itself survives only as `Experiment.record`, the JSON-ready copy checkpoints store (export,
eval and sweeps read it back).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from data_pipelines.errors import BadInput

from mvlm_jax.models import attention
from mvlm_jax.models.config import (LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, ClassifierConfig, LoraConfig,
                                    ModelConfig, VLMConfig)
from mvlm_jax.sharding import MeshConfig, rules_from_config
from mvlm_jax.train.checkpoints import CheckpointConfig
from mvlm_jax.train.losses import KINDS
from mvlm_jax.train.optimizer import OptimConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The step: its global batch [batch_size, seq_len] (images_per_row images per row for a VLM), split
    into accumulation_steps micro-batches; `trainable` / `frozen`: the path patterns that split the params."""

    total_steps: int
    batch_size: int
    accumulation_steps: int
    seed: int
    seq_len: int
    images_per_row: int
    trainable: tuple[str, ...]
    frozen: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The stage's token loss (mvlm_jax.train.losses): next-token cross-entropy over the loss mask, with
    `label_smoothing` of the targets (0: none, the paper's and the official code's setting)."""

    kind: str = "cross_entropy"
    label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class Experiment:
    model: ModelConfig  # as configured (attention "auto" unresolved): what checkpoints record
    optim: OptimConfig
    mesh: MeshConfig
    train: TrainConfig
    loss: LossConfig
    checkpoint: CheckpointConfig
    init_from: tuple[str, ...]  # "part=dir" sources of the first state (mvlm_jax.train.initial)
    tokenizer: str  # copied beside the final model ("" = none)
    record: dict[str, Any]  # the whole config as a dict: checkpoint metadata


def _preset(presets: dict, name: str, what: str):
    if name not in presets:
        raise BadInput(f"config.model.{what}: unknown preset {name!r}; expected one of {sorted(presets)}")
    return presets[name]


def model_config(model: ml_collections.ConfigDict, classes: tuple[str, ...] = ()) -> ModelConfig:
    """config.model -> the model's frozen config; `classes`: config.data.classes (a classifier's outputs)."""
    lora = LoraConfig(**model.lora) if model.lora.rank else None
    llm = dataclasses.replace(_preset(LLAMA_PRESETS, model.llm, "llm"), dtype=model.dtype, remat_policy=model.remat,
                              lora=lora, attention_impl=model.attention, **dict(model.llm_overrides))
    if model.kind == "llm":
        return llm
    if model.kind not in ("vlm", "classifier"):
        raise ValueError(f"config.model.kind: {model.kind!r}; expected llm, vlm or classifier")
    vision = dataclasses.replace(_preset(VISION_PRESETS, model.vision, "vision"), dtype=model.dtype,
                                 **dict(model.vision_overrides))
    projector = (dataclasses.replace(_preset(PROJECTOR_PRESETS, model.projector, "projector"), dtype=model.dtype)
                 if model.projector else None)
    if model.kind == "vlm":
        if projector is None:
            raise BadInput("config.model.projector: a VLM needs a projector; expected one of "
                           f"{sorted(PROJECTOR_PRESETS)}")
        return VLMConfig(vision, projector, llm)
    if not classes:
        raise BadInput("config.data.classes: a classifier (config.model.kind=classifier) needs the class names")
    head = dict(model.get("classifier") or {})
    return ClassifierConfig(vision, projector, num_classes=len(classes),
                            embed_dim=llm.hidden_size if projector is not None else 0, **head)


def for_platform(config: ModelConfig, platform: str) -> ModelConfig:
    """`config` with its LLM's attention kernel resolved for a compile target of `platform` ("auto" made
    concrete; a kernel that cannot run there is a ValueError naming config.model.attention)."""
    if isinstance(config, ClassifierConfig):  # no LLM, no attention kernel to choose
        return config
    llm = config.llm if isinstance(config, VLMConfig) else config
    llm = dataclasses.replace(llm, attention_impl=attention.resolve(llm.attention_impl, platform, llm.dtype))
    return dataclasses.replace(config, llm=llm) if isinstance(config, VLMConfig) else llm


def mesh_config(mesh: ml_collections.ConfigDict) -> MeshConfig:
    """config.mesh (data, fsdp, tensor, rules) -> MeshConfig."""
    settings = dict(mesh)
    rules = settings.pop("rules", None)
    return MeshConfig(**settings, **({"rules": rules_from_config(dict(rules))} if rules is not None else {}))


def loss_config(loss: ml_collections.ConfigDict) -> LossConfig:
    parsed = LossConfig(**dict(loss))
    if parsed.kind not in KINDS:
        raise ValueError(f"config.loss.kind: {parsed.kind!r}; expected one of {KINDS}")
    if not 0.0 <= parsed.label_smoothing < 1.0:
        raise ValueError(f"config.loss.label_smoothing: {parsed.label_smoothing}; expected 0 <= value < 1")
    return parsed


def parse(config: ml_collections.ConfigDict, model: ModelConfig | None = None) -> Experiment:
    """The typed parts of `config`; `model`: its model config when the caller already parsed it."""
    train = config.train
    return Experiment(
        model=model if model is not None else model_config(config.model, tuple(config.data.get("classes", ()))),
        optim=OptimConfig(**dict(config.optim), total_steps=train.total_steps),
        mesh=mesh_config(config.mesh),
        train=TrainConfig(total_steps=train.total_steps, batch_size=train.batch_size,
                          accumulation_steps=train.accumulation_steps, seed=train.seed, seq_len=config.data.seq_len,
                          images_per_row=config.data.images_per_row, trainable=tuple(train.trainable),
                          frozen=tuple(train.frozen)),
        loss=loss_config(config.get("loss") or ml_collections.ConfigDict()),  # configs recorded before config.loss
        checkpoint=CheckpointConfig(**dict(config.checkpoint)),
        init_from=tuple(config.init_from),
        tokenizer=config.data.get("tokenizer") or "",
        record=config.to_dict())
