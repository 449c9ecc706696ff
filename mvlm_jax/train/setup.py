"""The data side of a run, from an experiment's ConfigDict at the entry point (mvlm_jax.train.entry): the
training stream, the epoch plan, the held-out batches, and the checks on data paths and the workdir.
(The rest of the config is parsed into typed parts by mvlm_jax.train.experiment.)
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import ml_collections
from etils import epath

from data_pipelines.conversations import (CachedExamples, ConversationData, Examples, PackedRows, build_conversation_dataset,
                                          prepare_examples)
from data_pipelines.image_labels import ImageLabelData, build_image_label_dataset, held_out_rows
from data_pipelines.pretrain_pipeline import MIXTURE_PRESETS, PretrainData, build_pretrain_dataset, mixture
from data_pipelines.shards import INDEX_FILE
from data_pipelines.stream import BatchStream, ReadOptions
from data_pipelines.token_source import read_index
from data_pipelines.tokenizer import Tokenizer
from mvlm_jax.atomic import write_bytes
from mvlm_jax.models.config import ClassifierConfig, ModelConfig, VLMConfig
from mvlm_jax.paths import as_path, is_url, probe, require_local
from mvlm_jax.train.validation import WindowRows, conversation_rows, fixed_batches


def data_stream(config: ml_collections.ConfigDict, model: ModelConfig, process_index: int,
                process_count: int, examples: Examples | CachedExamples | None = None) -> BatchStream:
    """This process's batches; `examples`: the conversation examples when already tokenized (epoch_plan)."""
    data = config.data
    read = ReadOptions(worker_count=data.workers)
    if data.kind == "pretrain":
        if data.mixture:
            if data.mixture not in MIXTURE_PRESETS:
                raise ValueError(f"config.data.mixture: unknown {data.mixture!r}; expected one of {sorted(MIXTURE_PRESETS)}")
            sources = mixture(data.mixture, dict(data.mixture_dirs), "--config.data.mixture_dirs")
        else:
            sources = tuple((directory, 1.0) for directory in data.shards)
        return build_pretrain_dataset(PretrainData(
            sources=sources, seq_len=data.seq_len, batch_size=config.train.batch_size, seed=data.seed,
            reset_attention_at_eos=data.reset_attention_at_eos, read=read), process_index, process_count)
    if data.kind == "conversation":
        return build_conversation_dataset(conversation_data(config, model, tuple(data.files), read), process_index,
                                          process_count, examples)
    if data.kind == "image_labels":
        return build_image_label_dataset(image_label_data(config, model, tuple(data.files), read), process_index,
                                         process_count)
    raise ValueError(f"config.data.kind: {data.kind!r}; expected pretrain, conversation or image_labels")


def image_label_data(config: ml_collections.ConfigDict, model: ModelConfig, files: tuple[str, ...],
                     read: ReadOptions = ReadOptions()) -> ImageLabelData:
    """The image-label pipeline's settings for `files` (training's or the held-out ones)."""
    if not isinstance(model, ClassifierConfig):
        raise ValueError("config.data.kind image_labels trains a classifier: set config.model.kind=classifier")
    data = config.data
    return ImageLabelData(files=files, classes=tuple(data.classes), image_size=model.vision.image_size,
                          batch_size=config.train.batch_size, image_root=data.image_root or None,
                          pad_images=data.pad_images, seed=data.seed, read=read,
                          token_grid=model.token_grid if model.head == "tokens" else 0,
                          cell_grid=model.head_cells if model.head == "cells" else 0)


def conversation_data(config: ml_collections.ConfigDict, model: ModelConfig, files: tuple[str, ...],
                      read: ReadOptions = ReadOptions(), held_out: bool = False) -> ConversationData:
    """The conversation pipeline's settings for `files` (training's or, `held_out`, the validation loss's:
    a plain mean over target tokens, whatever data.answer_weight_power trains with, so that it compares
    across recipes)."""
    data = config.data
    num_visual = model.num_visual_tokens if isinstance(model, VLMConfig) else 0
    image_size = model.vision.image_size if isinstance(model, VLMConfig) else 336
    return ConversationData(
        files=files, format=data.format, template=data.template, tokenizer=data.tokenizer,
        seq_len=data.seq_len, batch_size=config.train.batch_size, seed=data.seed, image_root=data.image_root or None,
        image_size=image_size, pad_images=data.pad_images, num_visual_tokens=num_visual,
        images_per_row=data.images_per_row, pack=data.pack, packer=data.packer, cache=data.cache,
        cache_dir=data.cache_dir, read=read, answer_weight_power=0.0 if held_out else data.answer_weight_power)


EPOCH_PLAN = "epoch_plan.json"


def epoch_plan(config: ml_collections.ConfigDict, model: ModelConfig, workdir: epath.Path,
               write: bool = True) -> Examples | CachedExamples | None:
    """With train.epochs > 0: set train.total_steps to the whole global batches in that many epochs of
    packed rows and report how full the rows are; returns the tokenized examples for the stream.

    The count is written to WORKDIR/epoch_plan.json (atomically; `write`: this process writes). A resumed run
    recomputes it from the data and must find the same count, or its learning-rate schedule and its last
    step would change under it."""
    epochs = config.train.epochs
    if epochs <= 0:
        return None
    if config.data.kind != "conversation":
        raise ValueError(f"config.train.epochs is {epochs}: epochs are counted for conversation data only; "
                         "pretraining runs by total_steps")
    data = conversation_data(config, model, tuple(config.data.files))
    examples = prepare_examples(data, Tokenizer(data.tokenizer))
    rows = PackedRows(data, examples)
    steps = rows.epoch_rows(epochs) // data.batch_size
    if steps < 1:
        raise ValueError(f"config.train.epochs {epochs}: {rows.epoch_rows(epochs)} packed rows make no global batch "
                         f"of {data.batch_size}")
    stats = rows.epoch_stats(0)
    plan = {"epochs": epochs, "rows": rows.epoch_rows(epochs), "batch_size": data.batch_size, "total_steps": steps,
            "epoch_0": {**dataclasses.asdict(stats), "real_share": stats.real_share,
                        "image_slot_share": stats.image_slot_share}}
    path = as_path(workdir) / EPOCH_PLAN
    if probe(path):
        before = json.loads(path.read_text())
        if before["total_steps"] != steps:
            raise ValueError(f"{path}: this run was planned at {before['total_steps']} steps for {before['epochs']} "
                             f"epoch(s), but its data now packs into {steps}; the data or its settings changed "
                             "since the run started. Resume with the same data, or start a new workdir")
    elif write:
        write_bytes(path, json.dumps(plan, indent=1).encode())
    config.train.total_steps = steps  # train.total_steps and the top-level total_steps share one reference
    print(f"epoch plan: {epochs} epoch(s) = {plan['rows']:,} packed rows = {steps:,} steps of {data.batch_size}; "
          f"epoch 0: {stats.describe()}")
    return examples


def embedded_root(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Where the embedded dataset of a run lives: data.embedded.root, else WORKDIR/data (a local directory:
    its token shards are memory-mapped)."""
    if config.data.embedded.root:
        require_local(config.data.embedded.root, "config.data.embedded.root")
        return Path(config.data.embedded.root)
    if is_url(workdir):
        raise ValueError(f"the embedded dataset goes to WORKDIR/data unless config.data.embedded.root is set, and "
                         f"--workdir {workdir} is an object store; its token shards are memory-mapped: set "
                         "--config.data.embedded.root to a local directory")
    return Path(workdir) / "data"


DATA_PATHS = ("data.shards", "data.mixture_dirs", "data.files", "data.tokenizer", "data.image_root", "data.cache_dir",
              "data.embedded.root", "eval.shards", "eval.files", "eval.data_root")


def check_data_paths(config: ml_collections.ConfigDict) -> None:
    """Data stays on local or mounted file systems (token shards are memory-mapped, images and tokenizers
    opened as files): refuse a gs:// or s3:// URL up front, before anything compiles."""
    for key in DATA_PATHS:
        group, *rest = key.split(".")
        value = config[group]
        for part in rest:
            value = value[part]
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            value = tuple(value.values())
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if item:
                require_local(item, f"config.{key}")


def held_out_sources(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(token shard directories, conversation files) of the held-out split: config.eval.shards / files, or
    with neither set and data.embedded.enabled, the embedded dataset's `val` split."""
    shards, files = tuple(config.eval.shards), tuple(config.eval.files)
    if shards or files or not config.data.embedded.enabled:
        return shards, files
    from data_pipelines.embedded.prepare import prepare

    embedded = config.data.embedded
    paths = prepare(embedded_root(config, workdir), embedded.size, embedded.vocab_size, embedded.image_size)
    return (paths["shards_val"],), tuple(paths[f"{name}_val"] for name in embedded.files)


def _training_tokenizers(config: ml_collections.ConfigDict) -> set[str]:
    directories = list(config.data.shards) + [d for d in dict(config.data.mixture_dirs).values() if d]
    return {read_index(directory)["tokenizer"]["sha256"] for directory in directories
            if (Path(directory) / INDEX_FILE).is_file()}


def held_out_batches(config: ml_collections.ConfigDict, model: ModelConfig, workdir: str | Path, process_index: int,
                     process_count: int) -> list[dict]:
    """This process's part of the fixed validation batches (mvlm_jax.train.validation) of the run."""
    shards, files = held_out_sources(config, workdir)
    count = config.eval.batches * config.train.batch_size
    if config.data.kind == "pretrain":
        if not shards:
            raise ValueError(f"config.eval.every is {config.eval.every} but there is no held-out data: set "
                             "config.eval.shards (token shard directories of a held-out corpus)")
        rows = WindowRows(shards, config.data.seq_len, config.data.reset_attention_at_eos, count)
        trained = _training_tokenizers(config)
        if trained and rows.tokenizer_sha256 != trained:
            hint = "" if config.eval.shards else (" (the val split of the embedded dataset in "
                                                  f"{embedded_root(config, workdir)}: set data.embedded.root to the "
                                                  "training data's root)")
            raise ValueError(f"held-out shards {list(shards)}{hint} were tokenized with another tokenizer than the "
                             f"training shards (sha256 {sorted(rows.tokenizer_sha256)} != {sorted(trained)})")
    else:
        if not files:
            raise ValueError(f"config.eval.every is {config.eval.every} but there is no held-out data: set "
                             "config.eval.files (held-out files read like config.data.files)")
        rows = (held_out_rows(image_label_data(config, model, files)) if config.data.kind == "image_labels"
                else conversation_rows(conversation_data(config, model, files, held_out=True)))
    return fixed_batches(rows, config.train.batch_size, config.eval.batches, process_index, process_count)


def workdir_path(workdir: str) -> epath.Path:
    """The run directory as an epath.Path (local: absolute and created; gs://: checked reachable, no
    directories to create on an object store)."""
    path = as_path(workdir, "--workdir")
    if is_url(path):
        probe(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
    return path
