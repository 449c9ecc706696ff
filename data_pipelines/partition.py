"""The work units of a corpus, and how N parts (hosts, SLURM array tasks) share them.

Units are fixed by the inputs alone: every input in the given (sorted) order, and an uncompressed JSON-lines
file larger than `unit_bytes` cut into byte ranges of `unit_bytes` (a line belongs to the range holding its
first byte). Each unit becomes its own shard files, so the merged dataset lists the same files in the same
order, and holds the same token stream, whatever N was. N only decides which contiguous run of units each
part tokenizes: part i of N takes the units whose middle byte falls in the i-th N-th of the corpus.
Compressed files and TFDS datasets cannot be cut (a range of a .zst stream cannot be found without
decompressing everything before it): they are one unit each.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Sequence

from data_pipelines.documents import TFDS_PREFIX
from data_pipelines.records import splittable

DEFAULT_UNIT_BYTES = 1 << 30  # RedPajama v1's book.jsonl (about 100 GB) becomes about 100 units


@dataclasses.dataclass(frozen=True)
class Unit:
    source: str  # an input file or tfds spec
    start: int  # byte range [start, end) of a cut file; (0, None) for a whole input
    end: int | None
    input_bytes: int | None  # size and mtime of the whole input when planned (None for tfds)
    input_mtime_ns: int | None

    @property
    def key(self) -> str:
        """The unit's file names: a whole input keeps the key of its path (outputs of earlier runs stay
        valid); a range adds its bounds."""
        return input_key(self.source) if self.end is None else input_key(f"{self.source}@{self.start}-{self.end}")

    @property
    def byte_range(self) -> tuple[int, int] | None:
        return None if self.end is None else (self.start, self.end)

    @property
    def weight(self) -> int:
        """Bytes to read, for balancing (a tfds dataset counts as one unit's worth)."""
        if self.end is not None:
            return self.end - self.start
        return self.input_bytes if self.input_bytes is not None else DEFAULT_UNIT_BYTES

    def describe(self) -> str:
        return self.source if self.end is None else f"{self.source} bytes {self.start}-{self.end}"


def input_key(source: str) -> str:
    """Stable name of an input: a hash of its absolute path (tfds specs as written)."""
    identity = source if source.startswith(TFDS_PREFIX) else str(Path(source).absolute())
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def plan_units(inputs: Sequence[str], unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[Unit]:
    """The canonical unit list of `inputs`. A file that cannot be opened is an error naming it."""
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be positive, got {unit_bytes}")
    units: list[Unit] = []
    for source in inputs:
        if source.startswith(TFDS_PREFIX):
            units.append(Unit(source, 0, None, None, None))
            continue
        try:
            with open(source, "rb"):  # readable at all: a part should not find out hours later
                stat = os.stat(source)
        except OSError as error:
            raise OSError(f"{source}: cannot be opened ({error.strerror or error})") from error
        if splittable(source) and stat.st_size > unit_bytes:
            units += [Unit(source, start, min(start + unit_bytes, stat.st_size), stat.st_size, stat.st_mtime_ns)
                      for start in range(0, stat.st_size, unit_bytes)]
        else:
            units.append(Unit(source, 0, None, stat.st_size, stat.st_mtime_ns))
    return units


def parse_part(text: str) -> tuple[int, int]:
    """"I/N" (1 <= I <= N) -> (I, N)."""
    index, _, count = text.partition("/")
    try:
        part, parts = int(index), int(count)
    except ValueError:
        raise ValueError(f"--part {text!r}: expected I/N, e.g. 2/8") from None
    if not 1 <= part <= parts:
        raise ValueError(f"--part {text!r}: I must be between 1 and N")
    return part, parts


def part_units(units: Sequence[Unit], part: int, parts: int) -> list[Unit]:
    """The contiguous run of `units` that part `part` (1-based) of `parts` tokenizes."""
    total = sum(u.weight for u in units) or 1
    chosen, before = [], 0
    for unit in units:
        middle = before + unit.weight / 2
        if (part - 1) * total <= middle * parts < part * total:
            chosen.append(unit)
        before += unit.weight
    return chosen


def part_name(part: int, parts: int) -> str:
    return f"{part}/{parts}"
