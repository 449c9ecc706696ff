"""Labelled images for classification pretraining of a vision tower (config.data.kind = "image_labels").

A file is a JSON list (or JSON Lines, optionally .gz / .zst: data_pipelines.records) of records {"image": "relative/or/absolute.png", "labels": ["name", ...]};
several labels per image make it multi-label, as ImageNet-21k is trained with sigmoid losses. Labels are
names from config.data.classes, in that order in the multi-hot vector.

A head that classifies every token or every cell of a grid (config.model.classifier.head = "tokens" or
"cells") needs where things are: each record then also holds "regions": [{"box": [x0, y0, x1, y1],
"labels": [names]}, ...], boxes in pixels of the image as stored (x right, y down, as COCO's xyxy), taken
through the same pad-or-crop to a square as the image. A token's targets are the labels of every box that
holds its cell's centre (`token_labels`); a grid cell's, those of every box whose centre lies in the cell
(`cell_labels`).

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
from data_pipelines.images import load_image, preprocess, square_box
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
    token_grid: int = 0  # > 0: per-token targets on a token_grid x token_grid grid from the records' regions
    cell_grid: int = 0  # > 0: per-cell targets (the boxes centred in each cell) on a cell_grid x cell_grid grid


@dataclasses.dataclass(frozen=True)
class Examples:
    """Every record of the files, in file order: image paths, multi-hot labels [n, classes] float32 and,
    when the records have regions, each record's boxes [k, 4] float32 (pixels) and their multi-hot labels
    [k, classes] (empty tuple otherwise)."""
    paths: list[Path]
    labels: np.ndarray
    regions: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def _multi_hot(names: list, index: dict[str, int], where: str) -> np.ndarray:
    unknown = [name for name in names if name not in index]
    if unknown:
        raise BadInput(f"{where}: labels {unknown} are not in config.data.classes")
    row = np.zeros(len(index), np.float32)
    row[[index[name] for name in names]] = 1.0
    return row


def _regions(value, index: dict[str, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """A record's "regions" -> (boxes [k, 4], multi-hot labels [k, classes]); BadInput naming the region."""
    if not isinstance(value, list):
        raise BadInput(f"{where}: a tokens or cells head needs 'regions': "
                       "[{'box': [x0, y0, x1, y1], 'labels': [names]}]")
    boxes, labels = np.zeros((len(value), 4), np.float32), np.zeros((len(value), len(index)), np.float32)
    for k, region in enumerate(value):
        box = region.get("box") if isinstance(region, dict) else None
        if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
                or not (box[0] < box[2] and box[1] < box[3]) or not isinstance(region.get("labels"), list)):
            raise BadInput(f"{where}: regions[{k}] {region!r}: expected {{'box': [x0, y0, x1, y1] with x0 < x1 "
                           "and y0 < y1, 'labels': [names]}")
        boxes[k], labels[k] = box, _multi_hot(region["labels"], index, f"{where}: regions[{k}]")
    return boxes, labels


def read_examples(config: ImageLabelData) -> Examples:
    """Every record of config.files, in file order. Unreadable JSON, a record without an image or labels,
    an unknown label, a missing image file or (with a token or cell grid) missing or malformed regions is an
    error naming the file and line (data_pipelines.records)."""
    if not config.classes:
        raise BadInput("config.data.classes is empty: name the classes the labels refer to")
    index = {name: k for k, name in enumerate(config.classes)}
    paths, labels, regions = [], [], []
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
            labels.append(_multi_hot(record["labels"], index, where))
            if config.token_grid or config.cell_grid:
                regions.append(_regions(record.get("regions"), index, where))
            image = root / record["image"]
            if not image.is_file():
                raise MissingInput(f"{where}: image {image} not found")
            paths.append(image)
    if not paths:
        raise BadInput(f"{list(config.files)}: no labelled images")
    return Examples(paths, np.stack(labels), tuple(regions))


def token_targets(boxes: np.ndarray, labels: np.ndarray, grid: int) -> np.ndarray:
    """boxes [k, 4] in [0, 1] square coordinates, labels [k, classes] -> float32 [grid * grid, classes],
    row-major tokens (the projector's order): each token gets the labels of every box holding its cell's
    centre (a cell touched only at its edge gets none)."""
    centres = (np.arange(grid) + 0.5) / grid
    in_x = (boxes[:, 0, None] <= centres) & (centres < boxes[:, 2, None])  # [k, grid]
    in_y = (boxes[:, 1, None] <= centres) & (centres < boxes[:, 3, None])
    covered = (in_y[:, :, None] & in_x[:, None, :]).reshape(len(boxes), grid * grid)
    return (covered.T.astype(np.float32) @ labels > 0).astype(np.float32)


def cell_targets(boxes: np.ndarray, labels: np.ndarray, grid: int) -> np.ndarray:
    """boxes [k, 4] in [0, 1] square coordinates, labels [k, classes] -> float32 [grid * grid, classes],
    row-major cells: each cell gets the labels of every box whose centre lies in it (as a YOLO grid cell
    answers for the objects centred in it)."""
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 * grid).astype(np.int64), 0, grid - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 * grid).astype(np.int64), 0, grid - 1)
    owner = np.zeros((grid * grid, len(boxes)), np.float32)
    owner[cy * grid + cx, np.arange(len(boxes))] = 1.0
    return (owner @ labels > 0).astype(np.float32)


class LabelledImages:
    """grain source: element i = {"images": float32 [size, size, 3], "labels": float32 [classes],
    "weights": 1.0 (0 marks a padding row of the held-out batches)} and, with config.token_grid = g,
    "token_labels": float32 [g * g, classes] (with config.cell_grid = c, "cell_labels" [c * c, classes]);
    epoch i // n in the permutation of seed + epoch (or in file
    order with `shuffle=False`)."""

    def __init__(self, config: ImageLabelData, examples: Examples, epochs: int = EPOCHS, shuffle: bool = True):
        self.config, self.examples, self.epochs, self.shuffle = config, examples, epochs, shuffle
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.examples.paths) * self.epochs

    def _index(self, i: int) -> int:
        epoch, position = divmod(i, len(self.examples.paths))
        if not self.shuffle:
            return position
        order = self._order  # one read: grain's reader threads may replace it for another epoch meanwhile
        if order is None or order[0] != epoch:
            order = (epoch, np.random.default_rng([self.config.seed, epoch]).permutation(len(self.examples.paths)))
            self._order = order
        return int(order[1][position])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k, config = self._index(i), self.config
        # as data_pipelines.images.preprocess_file reads it (transparency dropped, not composited)
        image = load_image(self.examples.paths[k], composite_alpha=False)
        element = {"images": preprocess(image, config.image_size, config.pad_images),
                   "labels": self.examples.labels[k], "weights": np.float32(1.0)}
        if config.token_grid or config.cell_grid:
            boxes, labels = self.examples.regions[k]
            square = np.array([square_box(box, image.width, image.height, config.pad_images) for box in boxes],
                              np.float32).reshape(-1, 4)
            if config.token_grid:
                element["token_labels"] = token_targets(square, labels, config.token_grid)
            if config.cell_grid:
                element["cell_labels"] = cell_targets(square, labels, config.cell_grid)
        return element


def build_image_label_dataset(config: ImageLabelData, process_index: int = 0, process_count: int = 1) -> BatchStream:
    """The batched, resumable stream of this process: {"images": [b, size, size, 3], "labels": [b, classes],
    "weights": [b]} (and "token_labels": [b, grid * grid, classes] with config.token_grid, "cell_labels":
    [b, cells * cells, classes] with config.cell_grid)."""
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} does not divide over {process_count} processes")
    elements = grain.MapDataset.source(LabelledImages(config, read_examples(config)))
    batches = elements[process_index::process_count].batch(config.batch_size // process_count, drop_remainder=True)
    order = {"files": [file_sha256(path) for path in config.files], "classes": list(config.classes),
             "batch_size": config.batch_size, "seed": config.seed}
    if config.token_grid:  # kept out otherwise: the fingerprints of earlier runs stay valid
        order["token_grid"] = config.token_grid
    if config.cell_grid:
        order["cell_grid"] = config.cell_grid
    return BatchStream(batches, config.read, fingerprint(order))


def held_out_rows(config: ImageLabelData) -> LabelledImages:
    """One epoch of the held-out files in file order (the fixed validation batches)."""
    return LabelledImages(config, read_examples(config), epochs=1, shuffle=False)

