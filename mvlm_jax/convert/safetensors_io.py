"""Reading and writing safetensors one tensor at a time (numpy only, never pickle)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class TensorSource(Protocol):
    def names(self) -> set[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> np.ndarray: ...


def _open(file: Path):
    try:
        return safe_open(file, framework="np")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: not a readable safetensors file ({error})") from error


class SafetensorsDir:
    """The tensors of a Hugging Face directory: model.safetensors, or shards listed by the index."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"{index}: not a safetensors index ({error})") from error
            self._file_of = {name: self.directory / file for name, file in weight_map.items()}
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                bins = sorted(p.name for p in self.directory.glob("*.bin"))
                hint = (f"; found {bins}: pickle files are not read, save them as safetensors first "
                        "(model.save_pretrained(dir, safe_serialization=True))") if bins else ""
                raise FileNotFoundError(f"{self.directory}: no {SINGLE_FILE} and no {INDEX_FILE}{hint}")
            self._file_of = {}
            for file in files:
                for name in _open(file).keys():
                    if name in self._file_of:
                        raise ValueError(f"{file}: tensor {name} is also in {self._file_of[name]}; "
                                         "remove the stray file or add a model.safetensors.index.json")
                    self._file_of[name] = file
        for file in set(self._file_of.values()):
            if not file.is_file():
                raise FileNotFoundError(f"{file}: listed in {INDEX_FILE} but missing")

    def names(self) -> set[str]:
        return set(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        with _open(self._file_of[name]) as handle:
            return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        # Open per tensor: a file mapping kept open would count every page read so far as resident
        # memory, i.e. a second copy of the checkpoint by the end of an import.
        with _open(self._file_of[name]) as handle:
            try:
                return handle.get_tensor(name)
            except SafetensorError as error:
                raise ValueError(f"{self._file_of[name]}: cannot read tensor {name} ({error})") from error


class DictSource:
    """A state dict held in memory (tests, or tensors gathered from several places)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors

    def names(self) -> set[str]:
        return set(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name])


class MergedSource:
    """Several sources seen as one (e.g. a MobileVLM checkpoint plus a separate CLIP tower)."""

    def __init__(self, *sources: TensorSource):
        self.sources = sources

    def names(self) -> set[str]:
        return set().union(*(s.names() for s in self.sources))

    def _owner(self, name: str) -> TensorSource:
        return next(s for s in self.sources if name in s.names())

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner(name).shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._owner(name).get(name)


def write_sharded(directory: Path, tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int = 2 << 30) -> list[str]:
    """Write (name, array) pairs to model-0000i-of-0000n.safetensors files of at most max_shard_bytes
    (a single model.safetensors when everything fits), plus the index. Holds one shard in memory."""
    written: list[Path] = []

    def flush(shard: dict[str, np.ndarray]) -> None:
        path = directory / f"shard-{len(written):05d}.tmp"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append(path)

    current: dict[str, np.ndarray] = {}
    size = 0
    weight_of: dict[str, int] = {}
    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if current and size + array.nbytes > max_shard_bytes:
            flush(current)
            current, size = {}, 0
        current[name] = array
        weight_of[name] = len(written)
        size += array.nbytes
    flush(current)
    total = len(written)
    names = [SINGLE_FILE] if total == 1 else [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    for path, name in zip(written, names):
        path.rename(directory / name)
    if total > 1:
        index = {"metadata": {}, "weight_map": {t: names[i] for t, i in weight_of.items()}}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names

