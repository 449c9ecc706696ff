"""Random access to fixed windows of a shard directory's token stream.

The shard files of a directory (`data_pipelines.shards`) are one virtual stream of documents separated by
EOS. Window i is tokens [i * seq_len, i * seq_len + seq_len + 1): `seq_len` inputs plus the next token as
the last target, running across document and file boundaries, as the paper packs its pretraining data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from data_pipelines.errors import BadInput, MissingInput
from data_pipelines.shards import FORMAT, INDEX_FILE

SHARD_COMMAND = "mvlm data shard --tokenizer TOKENIZER.model --input 'FILES.jsonl' --out {out}"


def read_index(shard_dir: str | os.PathLike) -> dict:
    if "://" in os.fspath(shard_dir):  # Path() would fold gs://b into gs:/b and report the index missing
        raise BadInput(f"{os.fspath(shard_dir)}: token shards are memory-mapped, so they must be on a local or "
                         "mounted file system: mount the bucket (gcsfuse for gs://, mountpoint-s3 for s3://) and "
                         "pass the mount path")
    if not os.fspath(shard_dir):
        raise BadInput("no token-shard directory given (an empty path); write the shards with "
                       f"`{SHARD_COMMAND.format(out='DIR')}` and pass DIR")
    path = Path(shard_dir) / INDEX_FILE
    if not path.is_file():
        raise MissingInput(f"{shard_dir}: no token shards there ({INDEX_FILE} missing); write them with "
                           f"`{SHARD_COMMAND.format(out=shard_dir)}`")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise BadInput(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}; write the shards again with "
                       f"`{SHARD_COMMAND.format(out=shard_dir)}`")
    return index


class TokenWindows:
    """grain random-access source: len() windows of `seq_len + 1` int32 tokens. Memory maps open lazily
    in each process (workers receive a pickled source without them)."""

    def __init__(self, shard_dir: str | os.PathLike, seq_len: int):
        self.shard_dir = Path(shard_dir)
        self.seq_len = seq_len
        self.index = read_index(shard_dir)
        self.dtype = np.dtype(self.index["dtype"])
        self.names = [f["name"] for f in self.index["files"]]
        sizes = np.asarray([f["tokens"] for f in self.index["files"]], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # file k holds stream [starts[k], starts[k+1])
        self.total_tokens = int(self.starts[-1])
        if self.total_tokens < seq_len + 1:
            raise ValueError(f"{self.shard_dir}: {self.total_tokens} tokens, fewer than one window of {seq_len + 1}")
        for name, size in zip(self.names, sizes):
            path = self.shard_dir / name
            if not path.is_file() or path.stat().st_size != size * self.dtype.itemsize:
                raise ValueError(f"{path}: missing or not {size} tokens long, as {INDEX_FILE} says")
        self._maps: list[np.memmap] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return (self.total_tokens - 1) // self.seq_len

    def _memmaps(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [np.memmap(self.shard_dir / name, dtype=self.dtype, mode="r") for name in self.names]
        return self._maps

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int32, across file boundaries."""
        maps = self._memmaps()
        out = np.empty(length, np.int32)
        file = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.starts[file])
            take = min(length - filled, int(self.starts[file + 1]) - (start + filled))
            out[filled:filled + take] = maps[file][offset:offset + take]
            filled += take
            file += 1
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} outside 0..{len(self) - 1}")
        return self.read(index * self.seq_len, self.seq_len + 1)

    def __repr__(self) -> str:
        return f"TokenWindows({self.shard_dir}, seq_len={self.seq_len}, windows={len(self)})"
