"""Validation loss on a held-out split, run by the trainer as a hook (config.eval.every).

The held-out set is a fixed list of `eval.batches` global batches of `train.batch_size` rows, built once
before training from held-out data in a fixed order (seed 0, whatever `data.seed` is, so that runs of a
seed sweep are compared on the same rows); it never touches the training iterator. Every evaluation runs
the same rows through `Run.eval_step` (the train step's loss, forward only, jitted over the mesh) and
reports val_loss = sum of token losses / number of target tokens over all of them, the per-target-token
mean the train step reports for one batch, and val_tokens, that number of target tokens.

Rows, as the training pipelines make them (the batch contract of data_pipelines):
- pretraining: windows of seq_len + 1 tokens of held-out token shards, `batches * batch_size` of them
  drawn without replacement (seed 0) from all windows of all directories;
- conversations: the held-out files through the training template, packing, truncation rule and image
  preprocessing, the rows of one epoch in the packing order of seed 0.
When the held-out data has fewer rows, there are fewer batches, and the last one is filled with padding
rows (loss_mask 0: they add nothing to the mean).

Sharding: global row k * batch_size + r of batch k goes to process r % process_count, as training gives
process p elements p, p + P, ... of its global stream; each process builds only its own rows.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, ContextManager, Protocol

import jax
import numpy as np
from tqdm import tqdm

from data_pipelines.conversations import ConversationData, PackedRows, prepare_examples
from data_pipelines.pretrain_pipeline import WindowsToBatch
from data_pipelines.token_source import TokenWindows
from data_pipelines.tokenizer import Tokenizer
from mvlm_jax.train.hooks import Hook, StepContext

HELD_OUT_SEED = 0
Batch = dict[str, np.ndarray]


class Rows(Protocol):
    """Random access to held-out rows: row i is one example of the batch contract (no batch axis)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Batch: ...


class WindowRows:
    """`count` windows of seq_len + 1 tokens drawn without replacement (seed 0) from all windows of the
    shard directories, in stream order, as pretraining rows."""

    def __init__(self, shard_dirs: tuple[str, ...], seq_len: int, reset_attention_at_eos: bool, count: int):
        if not shard_dirs:
            raise ValueError("no held-out token shards")
        self.sources = [TokenWindows(directory, seq_len) for directory in shard_dirs]
        eos_ids = {source.index["eos_id"] for source in self.sources}
        if len(eos_ids) > 1:
            raise ValueError(f"held-out shards {list(shard_dirs)} were tokenized with different tokenizers")
        self.starts = np.cumsum([0] + [len(source) for source in self.sources])
        total = int(self.starts[-1])
        # Generator.choice draws a small sample from a large population without a full permutation.
        self.chosen = np.sort(np.random.default_rng(HELD_OUT_SEED).choice(total, size=min(count, total), replace=False))
        self.to_batch = WindowsToBatch(eos_ids.pop(), reset_attention_at_eos)

    @property
    def tokenizer_sha256(self) -> set[str]:
        return {source.index["tokenizer"]["sha256"] for source in self.sources}

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> Batch:
        window = int(self.chosen[index])
        source = int(np.searchsorted(self.starts, window, side="right")) - 1
        row = self.to_batch(self.sources[source][window - int(self.starts[source])][None])
        return {key: np.ascontiguousarray(value[0]) for key, value in row.items()}


def conversation_rows(config: ConversationData) -> PackedRows:
    """The rows of one epoch of the held-out conversation files (config.files), packed in the order of
    seed 0 with the training template, truncation rule and image preprocessing."""
    config = dataclasses.replace(config, seed=HELD_OUT_SEED, num_epochs=1)
    return PackedRows(config, prepare_examples(config, Tokenizer(config.tokenizer)))


def _padding_row(like: Batch) -> Batch:
    """A row that adds nothing to the loss: all zeros (segment 0: padding), no image."""
    row = {key: np.zeros_like(value) for key, value in like.items()}
    if "image_slots" in row:
        row["image_slots"][:] = -1
    return row


def fixed_batches(rows: Rows, batch_size: int, batches: int, process_index: int = 0,
                  process_count: int = 1) -> list[Batch]:
    """This process's part of the first `batches` global batches of `rows` (fewer when there are not
    enough rows; the last one padded): each a dict of [batch_size / process_count, ...] arrays."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} does not divide over {process_count} processes")
    if not len(rows):
        raise ValueError("the held-out data has no rows")
    count = min(batches, math.ceil(len(rows) / batch_size))
    first = rows[0]
    out = []
    for k in range(count):
        indices = range(k * batch_size + process_index, (k + 1) * batch_size, process_count)
        picked = [rows[i] if i < len(rows) else _padding_row(first) for i in indices]
        out.append({key: np.stack([row[key] for row in picked]) for key in first})
    return out


class Validation:
    """The fixed held-out batches of this process and the jitted loss over them; `activate()`: the scope
    the step traces in (mvlm_jax.train.run.Run.activate: the mesh and the sharding rules)."""

    def __init__(self, batches: list[Batch], eval_step, batch_sharding, activate: Callable[[], ContextManager]):
        self.batches, self.eval_step, self.batch_sharding, self.activate = batches, eval_step, batch_sharding, activate

    def __call__(self, state: dict) -> tuple[float, int]:
        """(mean loss per target token, target tokens) of the parameters in `state` over every batch."""
        outputs = []
        with self.activate():
            for batch in self.batches:
                global_batch = jax.tree.map(
                    lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)
                outputs.append(self.eval_step(state, global_batch))
        outputs = jax.device_get(outputs)  # one wait for all of them
        total = sum(float(o["loss_sum"]) for o in outputs)
        tokens = sum(float(o["target_tokens"]) for o in outputs)
        if tokens == 0:
            raise ValueError("the held-out batches have no target tokens (loss_mask is 0 everywhere)")
        return total / tokens, int(tokens)


def validation_hook(every: int, validation: Validation, verbose: bool = True) -> Hook:
    """Adds val_loss and val_tokens to the record of every `every`-th step (and the last one)."""
    def run(context: StepContext) -> None:
        started = time.perf_counter()
        loss, tokens = validation(context.state)
        context.record.update(val_loss=loss, val_tokens=tokens)
        if verbose:
            tqdm.write(f"step {context.step}: val_loss {loss:.4f} over {tokens:,} targets "
                       f"({time.perf_counter() - started:.1f} s)")

    return Hook("validation", every, run, needs_state=True)
