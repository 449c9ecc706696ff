"""Model checkpoints: parameters as an orbax checkpoint with the model config beside them.

Layout of CKPT_DIR:
  model_config.json   {"kind": "llm" | "vision" | "vlm", "config": {...}}  (models.config.to_dict)
  params/             orbax PyTree checkpoint of the unboxed float32 parameter tree
  tokenizer.model     optional: the SentencePiece model the LLM was trained with (GGUF export, chat)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import type_handlers

from data_pipelines.errors import BadInput, MissingInput
from mvlm_jax.atomic import atomic_directory
from mvlm_jax.models.config import ModelConfig, from_dict, to_dict
from mvlm_jax.paths import as_path, probe

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.model"
MAKE_ONE = ("a model checkpoint is the WORKDIR/model directory a finished training run writes (`make pretrain`, "
            "`python -m mvlm_jax.train`), or the --out of `mvlm convert import`")


def _checkpointer(restore_gb: int = 1) -> ocp.Checkpointer:
    """A synchronous checkpointer that writes host (numpy) arrays without copying them first.

    orbax deep-copies every numpy leaf before an (asynchronous) save by default, which doubles peak
    memory when converting a 2.7B model; a synchronous save needs no such guard.
    """
    registry = type_handlers.create_type_handler_registry(
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, type_handlers.ArrayHandler()),
        (np.number, type_handlers.ScalarHandler()), (int, type_handlers.ScalarHandler()),
        (float, type_handlers.ScalarHandler()))
    # No zstd: float weights barely compress, and compressed chunks are buffered (about 0.8x the data).
    # No OCDBT: it copies every array past 2 GiB (the 2.7B MLP stacks) while writing; plain zarr does not.
    # Each process writes or reads alone (host arrays, or the slices its own devices hold): no barriers with
    # the other processes of a multi-host job (a training run writes its final model from process 0 only).
    alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, restore_concurrent_gb=restore_gb,
                                          use_compression=False, use_ocdbt=False, type_handler_registry=registry,
                                          multiprocessing_options=alone)
    return ocp.Checkpointer(handler, multiprocessing_options=alone)


def save_model(directory: str | os.PathLike, params: Any, config: ModelConfig, force: bool = False,
               tokenizer: str | os.PathLike | None = None) -> epath.Path:
    """Write params (numpy or jax arrays), config and optionally a copy of the tokenizer atomically to
    `directory` (local or gs://; on gs:// the config goes up last: load_config refuses a directory without it)."""
    # Host copies of (addressable) device arrays: orbax's jax.Array handler caps one write at 1e9 bytes,
    # which a 1.4B model's MLP stacks exceed; on the CPU this makes no copy.
    params = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x, params)
    with atomic_directory(directory, force=force, last=(CONFIG_FILE,)) as partial:
        if tokenizer is not None:
            (partial / TOKENIZER_FILE).write_bytes(as_path(tokenizer, "tokenizer").read_bytes())
        with _checkpointer() as checkpointer:
            checkpointer.save(partial / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
        (partial / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    return as_path(directory)


def load_config(directory: str | os.PathLike) -> ModelConfig:
    path = as_path(directory, "model checkpoint") / CONFIG_FILE
    if not probe(path):
        raise MissingInput(f"{directory}: not a model checkpoint ({CONFIG_FILE} missing); {MAKE_ONE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    return from_dict(data, where=str(path))


def _params_path(directory: str | os.PathLike) -> epath.Path:
    path = as_path(directory, "model checkpoint") / PARAMS_DIR
    if not path.is_dir():
        raise MissingInput(f"{path}: missing parameter checkpoint; {MAKE_ONE}")
    return path


def param_shapes(directory: str | os.PathLike) -> Any:
    """The stored parameters as a tree of jax.ShapeDtypeStruct, read from the metadata alone."""
    load_config(directory)  # a model checkpoint at all?
    with _checkpointer() as checkpointer:
        metadata = checkpointer.metadata(_params_path(directory))
    tree = getattr(metadata, "item_metadata", metadata)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)


def load_model(directory: str | os.PathLike, target: Any | None = None) -> tuple[Any, ModelConfig]:
    """Restore (params, config). `target`: optional tree of jax.ShapeDtypeStruct with shardings (all of the
    stored parameters or a subtree of them), so that each process reads only the slices its devices hold,
    straight into their sharded layout."""
    config = load_config(directory)
    params_path = _params_path(directory)
    partial = target is not None  # the other stored parameters are left unread
    stored = param_shapes(directory)
    target = stored if target is None else target
    # A sharded read decodes whole stored chunks (save_model stores each array as one chunk), and orbax refuses
    # a read larger than its in-flight limit: the limit is at least the largest array (2.26 GB at 2.7B).
    largest = max((leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(stored)), default=0)
    with _checkpointer(restore_gb=max(1, math.ceil(largest / 1e9))) as checkpointer:
        params = checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=partial))
    return params, config
