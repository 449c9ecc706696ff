"""SFT and image-text pipelines: conversations -> template tokens + loss mask -> (packed) rows -> batches.

Records are checked (data_pipelines.validate) and tokenized once, up front; skipped ones are counted and
reported. Each epoch orders the examples by a permutation of (seed, epoch) and, with packing, fills rows
in that order with the configured packer (data_pipelines.packing). Rows are random access (row r of epoch
e), so the batched stream resumes exactly (data_pipelines.stream).

Per example: ids with IMAGE_TOKEN widened to `num_visual_tokens` slots; inputs ids[:-1], targets ids[1:],
loss mask target[1:]. Truncation rule: an example longer than seq_len is cut on the right to seq_len
inputs when its image slots stay whole and at least one target token remains; otherwise it is skipped and
counted as too_long.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path

import grain
import numpy as np

from data_pipelines import example_cache
from data_pipelines.example_cache import CachedExamples
from data_pipelines.packing import PackingStats, pack_rows, packing_stats
from data_pipelines.records import Problem, Record
from data_pipelines.stream import BatchStream, ReadOptions, fingerprint
from data_pipelines.templates import IMAGE_TOKEN, segments_for, tokenize
from data_pipelines.tokenizer import Tokenizer, file_sha256
from data_pipelines.validate import TOO_LONG, SkipReport, iter_valid, normalized_turns


@dataclasses.dataclass(frozen=True)
class ConversationData:
    files: tuple[str, ...]
    format: str = "sharegpt"  # or "llava"
    template: str = "vicuna_v1"  # "plain" for VLM stage 1
    tokenizer: str = ""
    seq_len: int = 2048
    batch_size: int = 8  # global
    seed: int = 0
    image_root: str | None = None
    image_size: int = 336
    pad_images: bool = True  # image_aspect_ratio "pad" (stage 2); stage 1 resizes and crops
    num_visual_tokens: int = 0  # slots per image: 144 (LDP), 576 (MLP); 0 for text-only SFT
    images_per_row: int = 1
    pack: bool = True
    packer: str = "next_fit"  # or "best_fit" (data_pipelines.packing)
    truncate: bool = True
    cache: bool = True  # tokenize once: data_pipelines.example_cache
    cache_dir: str = ""  # "" = example_cache.default_root()
    num_epochs: int | None = None
    # Each answer's target tokens (the answer and the token that ends it) weigh len(answer) ** -power in the
    # loss: 0 weighs every target token the same (LLaVA's mean over target tokens), 0.5 is square averaging
    # per answer (after InternVL 2.5's per-sample rule), 1 weighs every answer the same, however long.
    answer_weight_power: float = 0.0
    verify_images: bool = False  # decode every image up front; by default only existence (and path
    # safety) is checked, and a corrupt file fails when its row is read, naming the file
    read: ReadOptions = ReadOptions()


@dataclasses.dataclass
class Examples:
    ids: list[np.ndarray]  # template ids, one IMAGE_TOKEN per image (widened when a row is built: a
    target: list[np.ndarray]  # widened copy of mix665k at 576 slots would be GBs in every worker)
    images: list[str | None]
    lengths: list[int]  # model inputs after widening: len(widened ids) - 1
    report: SkipReport
    truncated: int = 0  # kept, but cut to seq_len (the truncation rule)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_image(self) -> np.ndarray:
        return np.asarray([image is not None for image in self.images])


def tokenize_record(record: Record, tokenizer: Tokenizer, fmt: str, template: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(template ids with one IMAGE_TOKEN per image, target mask, image path or None) of a checked record."""
    image = record.data.get("image") if fmt == "llava" else None
    tokenized = tokenize(tokenizer, segments_for(template, normalized_turns(record), image is not None))
    return tokenized.ids, tokenized.target, image


def widened_length(ids: np.ndarray, num_visual_tokens: int) -> int:
    """Model inputs of an example once every image takes num_visual_tokens positions."""
    return len(ids) - 1 + int(np.sum(ids == IMAGE_TOKEN)) * (num_visual_tokens - 1)


def tokenize_examples(config: ConversationData, tokenizer: Tokenizer) -> Examples:
    """Check, tokenize and fit every record of config.files (no cache)."""
    examples = Examples([], [], [], [], SkipReport())
    image_root = Path(config.image_root) if config.image_root else None
    for path in config.files:
        for record in iter_valid(path, config.format, examples.report, image_root, verify_images=config.verify_images):
            ids, target, image = tokenize_record(record, tokenizer, config.format, config.template)
            if image is not None and config.num_visual_tokens <= 0:
                raise ValueError(f"{record.path}:{record.line}: a sample has an image but num_visual_tokens is 0")
            fitted = fit(ids, target, config.seq_len, config.num_visual_tokens, config.truncate)
            if fitted is None:
                examples.report.add(Problem(record.path, record.line, TOO_LONG, f"{widened_length(ids, config.num_visual_tokens)}"
                                            f" tokens with images widened > seq_len {config.seq_len}"))
                continue
            examples.truncated += len(fitted[0]) < len(ids)
            examples.ids.append(fitted[0])
            examples.target.append(fitted[1])
            examples.images.append(image)
            examples.lengths.append(widened_length(fitted[0], config.num_visual_tokens))
    if not len(examples):
        raise ValueError(f"no usable examples in {list(config.files)}" + (f":\n{examples.report.format()}"
                                                                          if examples.report.total else ""))
    return examples


def _report(examples: Examples | CachedExamples, report_text: str, seq_len: int) -> None:
    if examples.report.total:
        print(report_text, file=sys.stderr)
    if examples.truncated:
        print(f"truncated {examples.truncated} of {len(examples)} kept record(s) to seq_len {seq_len}",
              file=sys.stderr)


def prepare_examples(config: ConversationData, tokenizer: Tokenizer) -> Examples | CachedExamples:
    """The checked, tokenized examples of config.files: from the example cache when it holds them
    (data_pipelines.example_cache), else tokenized here and cached (unless config.cache is off).
    Skipped and truncated records are reported either way."""
    if not config.cache:
        examples = tokenize_examples(config, tokenizer)
        _report(examples, examples.report.format(len(examples)), config.seq_len)
        return examples
    inputs = {"files": [file_sha256(path) for path in config.files], "tokenizer": tokenizer.sha256,
              "image_root": str(Path(config.image_root).absolute()) if config.image_root else None,
              **{key: getattr(config, key) for key in ("format", "template", "seq_len", "num_visual_tokens",
                                                        "truncate", "verify_images")}}
    directory = Path(config.cache_dir or example_cache.default_root()) / example_cache.cache_key(inputs)

    def build():
        built = tokenize_examples(config, tokenizer)
        meta = {"examples": len(built), "truncated": built.truncated, "skipped": dict(built.report.counts),
                "report": built.report.format(len(built)), "inputs": inputs}
        return built.ids, built.target, built.images, built.lengths, meta

    examples = example_cache.cached(directory, build)
    _report(examples, examples.meta["report"], config.seq_len)
    return examples


def widen(ids: np.ndarray, target: np.ndarray, num_visual_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    repeats = np.where(ids == IMAGE_TOKEN, num_visual_tokens, 1)
    return np.repeat(ids, repeats), np.repeat(target, repeats)


def fit(ids: np.ndarray, target: np.ndarray, seq_len: int, num_visual_tokens: int,
        truncate: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """The truncation rule (module docstring) on template ids; None means skip as too_long."""
    if widened_length(ids, num_visual_tokens) <= seq_len:
        return ids, target
    if not truncate:
        return None
    ends = np.cumsum(np.where(ids == IMAGE_TOKEN, num_visual_tokens, 1))  # widened end of each id
    keep = int(np.searchsorted(ends, seq_len + 1, side="right"))  # ids wholly inside seq_len + 1
    ids_kept, target_kept = ids[:keep], target[:keep]
    images_whole = int(np.sum(ids_kept == IMAGE_TOKEN)) == int(np.sum(ids == IMAGE_TOKEN)) and ids_kept[-1] != IMAGE_TOKEN
    return (ids_kept, target_kept) if images_whole and target_kept[1:].any() else None


class PackedRows:
    """grain random-access source: row r of the epoch-ordered, packed stream as one example of the batch
    contract (with `images` / `image_slots` when num_visual_tokens > 0)."""

    def __init__(self, config: ConversationData, examples: Examples):
        self.config, self.examples = config, examples
        self.lengths = np.asarray(examples.lengths)
        self.has_image = np.asarray(examples.has_image)
        self._epochs: list[list[np.ndarray]] = []
        self._row_starts = [0]  # first global row of each computed epoch
        # grain reads rows from several threads: packing an epoch and recording where it starts must be
        # one step, or two threads that reach a new epoch together can record another epoch's length at
        # its place and map rows to the wrong examples from then on (a demo's stage 2 diverged at its
        # second epoch in one run of two).
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}  # grain pickles to workers

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _epoch_rows(self, epoch: int) -> list[np.ndarray]:
        if len(self._row_starts) > epoch + 1:  # computed: epochs and row starts are appended together
            return self._epochs[epoch]
        with self._lock:
            while len(self._epochs) <= epoch:
                e = len(self._epochs)
                order = np.random.default_rng([self.config.seed, e]).permutation(len(self.lengths))
                rows = pack_rows(self.lengths, self.has_image, order, self.config.seq_len,
                                 self.config.images_per_row, self.config.pack, self.config.packer)
                self._epochs.append(rows)
                self._row_starts.append(self._row_starts[-1] + len(rows))
            return self._epochs[epoch]

    def __len__(self) -> int:
        if self.config.num_epochs is None:
            return sys.maxsize
        self._epoch_rows(self.config.num_epochs - 1)
        return self._row_starts[self.config.num_epochs]

    def epoch_stats(self, epoch: int = 0) -> PackingStats:
        """How full the rows of `epoch` are."""
        return packing_stats(self._epoch_rows(epoch), self.lengths, self.has_image, self.config.seq_len,
                             self.config.images_per_row)

    def epoch_rows(self, epochs: int) -> int:
        """Rows in the first `epochs` epochs."""
        self._epoch_rows(epochs - 1)
        return self._row_starts[epochs]

    def locate(self, row: int) -> np.ndarray:
        """Example indices packed into global row `row`."""
        epoch = 0
        while True:
            rows = self._epoch_rows(epoch)
            if row < self._row_starts[epoch + 1]:
                return rows[row - self._row_starts[epoch]]
            epoch += 1

    def __getitem__(self, row: int) -> dict[str, np.ndarray]:
        from data_pipelines.images import preprocess_file  # PIL work stays in the worker processes

        cfg, seq = self.config, self.config.seq_len
        out = {"tokens": np.zeros(seq, np.int32), "targets": np.zeros(seq, np.int32),
               "loss_mask": np.zeros(seq, np.float32), "segment_ids": np.zeros(seq, np.int32),
               "positions": np.zeros(seq, np.int32)}
        if cfg.num_visual_tokens:
            out["images"] = np.zeros((cfg.images_per_row, cfg.image_size, cfg.image_size, 3), np.float32)
            out["image_slots"] = np.full(cfg.images_per_row, -1, np.int32)
        start, image_count = 0, 0
        for segment, index in enumerate(self.locate(row), start=1):
            ids, target = widen(self.examples.ids[index], self.examples.target[index], cfg.num_visual_tokens)
            end = start + len(ids) - 1
            inputs = ids[:-1]
            out["tokens"][start:end] = np.where(inputs == IMAGE_TOKEN, 0, inputs)  # slots: embeddings go here
            out["targets"][start:end] = np.maximum(ids[1:], 0)
            out["loss_mask"][start:end] = answer_weights(target[1:], cfg.answer_weight_power)
            out["segment_ids"][start:end] = segment
            out["positions"][start:end] = np.arange(end - start)
            if self.examples.images[index] is not None:
                out["image_slots"][image_count] = start + int(np.argmax(inputs == IMAGE_TOKEN))
                out["images"][image_count] = preprocess_file(Path(cfg.image_root or ".") / self.examples.images[index],
                                                             cfg.image_size, pad=cfg.pad_images)
                image_count += 1
            start = end
        return out


def answer_weights(target: np.ndarray, power: float) -> np.ndarray:
    """target [n] bool -> float32 [n] loss weights: 0 off target; on each run of consecutive target tokens
    (one answer and the token that ends it) len(run) ** -power."""
    weights = target.astype(np.float32)
    if power:
        edges = np.diff(np.concatenate([[0], target.astype(np.int8), [0]]))
        for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            weights[start:end] = float(end - start) ** -power
    return weights


def build_conversation_dataset(config: ConversationData, process_index: int = 0, process_count: int = 1,
                               examples: Examples | CachedExamples | None = None) -> BatchStream:
    """The batched, resumable stream of this process for SFT or image-text training."""
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} does not divide over {process_count} processes")
    tokenizer = Tokenizer(config.tokenizer)
    examples = examples or prepare_examples(config, tokenizer)
    rows = grain.MapDataset.source(PackedRows(config, examples))
    if config.num_epochs is not None:  # whole global batches only, so every process runs the same steps
        rows = rows[:len(rows) // config.batch_size * config.batch_size]
    batches = rows[process_index::process_count].batch(config.batch_size // process_count, drop_remainder=True)
    # What decides the order, by content (paths may move; image size and padding do not change it).
    order = {"files": [file_sha256(path) for path in config.files], "tokenizer": tokenizer.sha256,
             **{key: getattr(config, key) for key in ("format", "template", "seq_len", "batch_size", "seed",
                                                      "num_visual_tokens", "images_per_row", "pack", "truncate")},
             # a key only where it is not the default, so earlier runs keep their fingerprint
             **({"packer": config.packer} if config.packer != "next_fit" else {})}
    return BatchStream(batches, config.read, fingerprint(order))


__all__ = ["CachedExamples", "ConversationData", "Examples", "PackedRows", "Record", "build_conversation_dataset", "pack_rows",
           "prepare_examples"]
