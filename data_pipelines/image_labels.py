"""Labelled images for classification pretraining of a vision tower (config.data.kind = "image_labels").

A file is a JSON list (or JSON Lines, optionally .gz / .zst: data_pipelines.records) of records {"image": "relative/or/absolute.png", "labels": ["name", ...]};
several labels per image make it multi-label, as ImageNet-21k is trained with sigmoid losses. Labels are
names from config.data.classes, in that order in the multi-hot vector.

The stream is grain MapDataset batches behind data_pipelines.stream.BatchStream, so a run resumes at its
exact batch: element i is epoch i // n's permutation (seed + epoch) at position i % n, every epoch
reshuffled and every process reading elements p, p + P, ... of the one global order.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import grain
import numpy as np

from data_pipelines.errors import BadInput, MissingInput
from data_pipelines.images import preprocess_file
from data_pipelines.records import Problem, iter_records
from data_pipelines.tokenizer import file_sha256
from data_pipelines.stream import BatchStream, ReadOptions, fingerprint

EPOCHS = 10_000  # the stream's length in epochs: more than any run reads


@dataclasses.dataclass(frozen=True)
class ImageLabelData:
    files: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int
    batch_size: int
    image_root: str | None = None  # relative image paths are under it (default: the file's directory)
    pad_images: bool = True
    seed: int = 0
    read: ReadOptions = ReadOptions()


def read_examples(config: ImageLabelData) -> tuple[list[Path], np.ndarray]:
    """(image paths, multi-hot labels [n, classes] float32) of every record of config.files, in file order.
    Unreadable JSON, a record without an image or labels, an unknown label or a missing image file is an
    error naming the file and line (data_pipelines.records)."""
    if not config.classes:
        raise BadInput("config.data.classes is empty: name the classes the labels refer to")
    index = {name: k for k, name in enumerate(config.classes)}
    paths, labels = [], []
    for file in config.files:
        if not Path(file).is_file():
            raise MissingInput(f"{file}: no such image-label file (config.data.files)")
        root = Path(config.image_root) if config.image_root else Path(file).parent
        for item in iter_records(file):
            if isinstance(item, Problem):
                raise BadInput(str(item))
            where, record = f"{item.path}:{item.line}", item.data
            if not isinstance(record.get("image"), str) or not isinstance(record.get("labels"), list):
                raise BadInput(f"{where}: expected {{'image': path, 'labels': [names]}}")
            unknown = [label for label in record["labels"] if label not in index]
            if unknown:
                raise BadInput(f"{where}: labels {unknown} are not in config.data.classes")
            image = root / record["image"]
            if not image.is_file():
                raise MissingInput(f"{where}: image {image} not found")
            row = np.zeros(len(config.classes), np.float32)
            row[[index[label] for label in record["labels"]]] = 1.0
            paths.append(image)
            labels.append(row)
    if not paths:
        raise BadInput(f"{list(config.files)}: no labelled images")
    return paths, np.stack(labels)


class LabelledImages:
    """grain source: element i = {"images": float32 [size, size, 3], "labels": float32 [classes],
    "weights": 1.0 (0 marks a padding row of the held-out batches)}, epoch i // n in the permutation of
    seed + epoch (or in file order with `shuffle=False`)."""

    def __init__(self, config: ImageLabelData, paths: list[Path], labels: np.ndarray, epochs: int = EPOCHS,
                 shuffle: bool = True):
        self.config, self.paths, self.labels, self.epochs, self.shuffle = config, paths, labels, epochs, shuffle
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths) * self.epochs

    def _index(self, i: int) -> int:
        epoch, position = divmod(i, len(self.paths))
        if not self.shuffle:
            return position
        order = self._order  # one read: grain's reader threads may replace it for another epoch meanwhile
        if order is None or order[0] != epoch:
            order = (epoch, np.random.default_rng([self.config.seed, epoch]).permutation(len(self.paths)))
            self._order = order
        return int(order[1][position])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k = self._index(i)
        return {"images": preprocess_file(self.paths[k], self.config.image_size, self.config.pad_images),
                "labels": self.labels[k], "weights": np.float32(1.0)}


def build_image_label_dataset(config: ImageLabelData, process_index: int = 0, process_count: int = 1) -> BatchStream:
    """The batched, resumable stream of this process: {"images": [b, size, size, 3], "labels": [b, classes],
    "weights": [b]}."""
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} does not divide over {process_count} processes")
    paths, labels = read_examples(config)
    elements = grain.MapDataset.source(LabelledImages(config, paths, labels))
    batches = elements[process_index::process_count].batch(config.batch_size // process_count, drop_remainder=True)
    order = {"files": [file_sha256(path) for path in config.files], "classes": list(config.classes),
             "batch_size": config.batch_size, "seed": config.seed}
    return BatchStream(batches, config.read, fingerprint(order))


def held_out_rows(config: ImageLabelData) -> LabelledImages:
    """One epoch of the held-out files in file order (the fixed validation batches)."""
    paths, labels = read_examples(config)
    return LabelledImages(config, paths, labels, epochs=1, shuffle=False)

