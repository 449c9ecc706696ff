"""Files that appear complete or not at all: written under a hidden temporary name, then renamed."""
from __future__ import annotations

import os
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` in one rename (a reader sees the old file or the whole new one); the
    temporary file is removed if writing fails."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
