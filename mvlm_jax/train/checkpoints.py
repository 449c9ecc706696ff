"""Training checkpoints: one orbax CheckpointManager with named items
  state     {"trainable", "opt_state", "step", "rng"} (sharded arrays, saved asynchronously)
  data      the data stream's position (grain.checkpoint; the same on every process)
  metadata  the run's config, model config, tokenizer hash, and the checksum of the frozen parameters
The frozen parameters are written once per run, to their own directory (mvlm_jax.train.frozen_copy), and
joined to the state of whichever step is restored.
kept: the last `keep` plus every `keep_every`-th step. A restore walks back from the newest step and
skips damaged ones (truncated files), saying so.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, NoReturn

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mvlm_jax.paths import as_path

from mvlm_jax.train.frozen_copy import FrozenCopy, FrozenCopyError

FROZEN_CHECKSUM = "frozen_checksum"  # metadata key; absent from checkpoints that hold the frozen params themselves


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1000
    keep: int = 3
    keep_every: int | None = None  # also keep every k-th step forever
    async_save: bool = True


def _on_every_process(flag: bool) -> bool:
    """True when `flag` holds on every process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _without_frozen(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "frozen"}


class TrainCheckpoints:
    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig, frozen_directory: str | os.PathLike):
        options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, keep_period=config.keep_every,
                                               enable_async_checkpointing=config.async_save, create=True)
        self.manager = ocp.CheckpointManager(as_path(directory, "checkpoint directory"), options=options,
                                             item_names=("state", "data", "metadata"))
        self.frozen = FrozenCopy(frozen_directory)

    def save(self, step: int, state: Any, data_stream: Any, metadata: dict) -> None:
        frozen = self.frozen.write_once(state["frozen"])  # the run's first save only; before the step refers to it
        if step in self.manager.all_steps():  # a damaged checkpoint this run fell back from
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_without_frozen(state)), data=grain.checkpoint.CheckpointSave(data_stream),
            metadata=ocp.args.JsonSave({**metadata, FROZEN_CHECKSUM: frozen})), force=True)

    def _data_state(self, step: int) -> bytes:
        """The saved data position. grain's handler names its file after the process count at save time
        (process_I-of-P.json); the state is the same on every process, so any file serves when the run
        resumes with another process count."""
        directory = epath.Path(self.manager.directory) / str(step) / "data"
        index, count = jax.process_index(), jax.process_count()
        own = directory / f"process_{index}-of-{count}.json"
        files = [own] if own.is_file() else sorted(directory.glob("process_*-of-*.json"))
        if not files:
            raise FileNotFoundError(f"{directory}: no data iterator state")
        return files[0].read_bytes()

    def restore_latest(self, abstract_state: Any, data_stream: Any) -> tuple[int, Any, dict] | None:
        """(step, state, metadata) of the newest readable checkpoint, or None when there is none; the data
        stream is moved to the saved position."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            readable = True
            try:
                metadata = self.manager.restore(step, args=ocp.args.Composite(
                    metadata=ocp.args.JsonRestore())).metadata
                separate = FROZEN_CHECKSUM in metadata  # else an older checkpoint, frozen params included
                state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
                    _without_frozen(abstract_state) if separate else abstract_state))).state
                data_state = self._data_state(step)
                json.loads(data_state)  # grain's state is JSON: a truncated file fails here, not in set_state
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means: try the previous one
                print(f"checkpoint at step {step} is damaged ({type(error).__name__}: {str(error)[:200]}); "
                      "falling back to the previous one", file=sys.stderr)
                readable = False
            # Every process must resume from the same step: one that cannot read its part (its data file,
            # its shards) makes all of them fall back together.
            if not _on_every_process(readable):
                if readable:
                    print(f"checkpoint at step {step} is damaged for another process; falling back to the "
                          "previous one", file=sys.stderr)
                continue
            if separate:
                frozen = self._read_frozen(abstract_state["frozen"], metadata[FROZEN_CHECKSUM], step)
                state = {**state, "frozen": frozen}
            data_stream.set_state(data_state)
            return step, state, metadata
        if self.manager.all_steps():
            raise RuntimeError(f"{self.manager.directory}: none of the checkpoints {sorted(self.manager.all_steps())} "
                               "could be restored (see above); move them away to start over")
        return None

    def _read_frozen(self, abstract: Any, expected: str | None, step: int) -> Any:
        """The run's frozen parameters, checked against the checksum the checkpoint at `step` recorded. A
        damaged copy is not skipped like a damaged step: every step of the run needs the same one."""
        if expected is None:  # nothing was frozen
            if jax.tree.leaves(abstract):
                self._fail(step, "the checkpoint recorded no frozen parameters, but this run freezes some")
            return abstract  # the empty tree
        error, params, recorded = None, None, None
        try:
            params, recorded = self.frozen.read(abstract)
        except FrozenCopyError as failure:
            error = failure
        if not _on_every_process(error is None):
            self._fail(step, str(error) if error else f"{self.frozen.directory}: unreadable on another process")
        if recorded != expected:
            self._fail(step, f"{self.frozen.directory}: holds frozen parameters with checksum {recorded}, the "
                             f"checkpoint was trained with {expected} (a copy from another run?)")
        try:
            self.frozen.verify(params, recorded)
        except FrozenCopyError as failure:
            self._fail(step, str(failure))
        return params

    def _fail(self, step: int, reason: str) -> NoReturn:
        raise FrozenCopyError(f"{reason}. Every checkpoint in {self.manager.directory} (step {step} and older) "
                              f"needs the frozen parameters of {self.frozen.directory}: put that directory back "
                              "as it was written, or move the checkpoints away to start over")

    def check_compatible(self, metadata: dict) -> None:
        """Refuse to resume a workdir whose newest checkpoint was written for another model or another
        split of what trains; report other changed settings (learning rate, total steps, ...)."""
        steps = self.manager.all_steps()
        if not steps:
            return
        try:
            saved = self.manager.restore(max(steps), args=ocp.args.Composite(metadata=ocp.args.JsonRestore())).metadata
        except Exception:  # noqa: BLE001 - a damaged newest checkpoint is handled by restore_latest
            return
        metadata = json.loads(json.dumps(metadata))  # tuples -> lists, as the saved JSON has them
        if saved.get("model") != metadata["model"]:
            raise ValueError(f"{self.manager.directory} holds checkpoints of another model configuration; "
                             "use a new --workdir (or init_from to start from them)")
        old, new = saved.get("config", {}), metadata["config"]
        if old.get("train", {}).get("trainable") != new["train"]["trainable"] or \
                old.get("train", {}).get("frozen") != new["train"]["frozen"]:
            raise ValueError(f"{self.manager.directory}: the checkpoints train {old.get('train', {}).get('trainable')}, "
                             f"this run {new['train']['trainable']}; use a new --workdir")
        changed = sorted(f"{group}.{key}" for group in ("optim", "train", "data") for key in new.get(group, {})
                         if old.get(group, {}).get(key) != new[group][key])
        if changed:
            print(f"resuming with changed settings: {', '.join(changed)}", file=sys.stderr)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
