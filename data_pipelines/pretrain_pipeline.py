"""The pretraining input pipeline (grain): windows over token shards, globally shuffled with a fixed seed
(reshuffled per epoch from seed and epoch), mixed across sources by weight, sharded per process, packed
into the batch contract, with worker processes and prefetch. Its iterator state restores exactly.

Batch (per process): tokens, targets [batch, seq] int32; loss_mask [batch, seq] float32 (all ones: every
token of pretraining is a target); segment_ids, positions [batch, seq] int32 (one segment per window, or
with `reset_attention_at_eos` a new segment after each EOS so that attention and RoPE positions restart
per document).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping

import grain
import numpy as np

from data_pipelines.errors import BadInput
from data_pipelines.shards import INDEX_FILE
from data_pipelines.stream import BatchStream, ReadOptions, fingerprint
from data_pipelines.token_source import SHARD_COMMAND, TokenWindows

# Paper Table 12: RedPajama v1 sampling ratios (%), "the same as LLaMA". They sum to 100.7 (LLaMA's
# CommonCrawl share is 67.0); weights are normalised when used.
REDPAJAMA_TABLE12 = {"arxiv": 2.5, "book": 4.5, "c4": 15.0, "common_crawl": 67.7, "github": 4.5,
                     "stackexchange": 2.0, "wikipedia": 4.5}
MIXTURE_PRESETS = {"redpajama_table12": REDPAJAMA_TABLE12}


@dataclasses.dataclass(frozen=True)
class PretrainData:
    sources: tuple[tuple[str, float], ...]  # (shard directory, sampling weight)
    seq_len: int
    batch_size: int  # global; each process gets batch_size / process_count
    seed: int = 0
    reset_attention_at_eos: bool = False
    num_epochs: int | None = None  # None: repeat forever (training length is set by steps)
    read: ReadOptions = ReadOptions()  # how it is read; not part of the order, free to change on resume


def mixture(preset: str, shard_dirs: Mapping[str, str],
            setting: str = "shard_dirs") -> tuple[tuple[str, float], ...]:
    """(shard dir, weight) pairs of a named mixture; every part of the preset needs a directory of token
    shards. `setting`: how the caller's user sets shard_dirs[SOURCE] (named in the error)."""
    if preset not in MIXTURE_PRESETS:
        raise BadInput(f"unknown mixture {preset!r}; expected one of {sorted(MIXTURE_PRESETS)}")
    weights = MIXTURE_PRESETS[preset]
    unset = [name for name in weights if not shard_dirs.get(name)]
    unsharded = [f"{name} ({shard_dirs[name]})" for name in weights
                 if name not in unset and not (Path(shard_dirs[name]) / INDEX_FILE).is_file()]
    if unset or unsharded:
        found = "; ".join(part for part in (f"no shard directory for {', '.join(unset)}" if unset else "",
                                           f"no {INDEX_FILE} in {', '.join(unsharded)}" if unsharded else "") if part)
        raise BadInput(f"mixture {preset} reads token shards of each of its sources ({', '.join(weights)}): {found}. "
                       f"Set {setting}.SOURCE=DIR for each, DIR written from that source's documents by "
                       f"`{SHARD_COMMAND.format(out='DIR')}`")
    return tuple((shard_dirs[name], weight) for name, weight in weights.items())


def segments_from_eos(tokens: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., seq] tokens -> (segment_ids, positions): a new segment starts after every EOS."""
    seq = tokens.shape[-1]
    after_eos = np.zeros(tokens.shape, bool)
    after_eos[..., 1:] = tokens[..., :-1] == eos_id
    segment_ids = (1 + np.cumsum(after_eos, axis=-1)).astype(np.int32)
    starts = np.maximum.accumulate(np.where(after_eos, np.arange(seq), 0), axis=-1)
    return segment_ids, (np.arange(seq) - starts).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class WindowsToBatch:
    """[batch, seq + 1] windows -> the batch contract. Runs in the main process after the workers, which
    only ship the windows (a fifth of the bytes)."""

    eos_id: int
    reset_attention_at_eos: bool

    def __call__(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        tokens, targets = windows[:, :-1], windows[:, 1:]
        if self.reset_attention_at_eos:
            segment_ids, positions = segments_from_eos(tokens, self.eos_id)
        else:
            segment_ids = np.ones(tokens.shape, np.int32)
            positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
        return {"tokens": tokens, "targets": targets, "loss_mask": np.ones(tokens.shape, np.float32),
                "segment_ids": segment_ids, "positions": positions}


def build_pretrain_dataset(config: PretrainData, process_index: int = 0, process_count: int = 1) -> BatchStream:
    """The batched, prefetched, resumable stream of this process."""
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} does not divide over {process_count} processes")
    if not config.sources:
        raise ValueError("no pretraining sources")
    if config.num_epochs is not None and len(config.sources) > 1:
        # grain's mixture ends when its relatively smallest source does: "epochs" would be ill-defined.
        raise ValueError("num_epochs applies to a single source; train a mixture by steps (num_epochs None)")
    windows = [TokenWindows(directory, config.seq_len) for directory, _ in config.sources]
    eos_ids = {w.index["eos_id"] for w in windows}
    tokenizers = {w.index["tokenizer"]["sha256"] for w in windows}
    if len(eos_ids) > 1 or len(tokenizers) > 1:
        raise ValueError(f"sources were tokenized with different tokenizers: {[str(w.shard_dir) for w in windows]}")
    # Hashed seeds: grain reshuffles epoch e with seed + e, so plain seeds would make (seed s, epoch 1)
    # replay (seed s + 1, epoch 0).
    parts = [grain.MapDataset.source(w).shuffle(seed=int(np.random.SeedSequence([config.seed, k]).generate_state(1)[0]))
             .repeat(config.num_epochs) for k, w in enumerate(windows)]
    dataset = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights=[w for _, w in config.sources])
    if config.num_epochs is not None:  # whole global batches only, so every process runs the same steps
        dataset = dataset[:len(dataset) // config.batch_size * config.batch_size]
    dataset = dataset[process_index::process_count]
    dataset = dataset.batch(config.batch_size // process_count, drop_remainder=True)
    # What decides the order, by content (moving a shard directory keeps a checkpoint valid).
    order = {"seq_len": config.seq_len, "batch_size": config.batch_size, "seed": config.seed,
             "sources": [(weight, w.index["tokenizer"]["sha256"], [f["tokens"] for f in w.index["files"]])
                         for (_, weight), w in zip(config.sources, windows)]}
    return BatchStream(dataset, config.read, fingerprint(order), WindowsToBatch(eos_ids.pop(), config.reset_attention_at_eos))


def batch_hash(batch: Mapping[str, Any]) -> str:
    """sha256 of a batch's token ids (metrics.jsonl `batch_hash`); of its labels and images when it has no
    tokens (a classifier's batch)."""
    if "tokens" in batch:
        return hashlib.sha256(np.ascontiguousarray(batch["tokens"], np.int32).tobytes()).hexdigest()
    digest = hashlib.sha256(np.ascontiguousarray(batch["labels"], np.float32).tobytes())
    digest.update(np.ascontiguousarray(batch["images"], np.float32).tobytes())
    return digest.hexdigest()
