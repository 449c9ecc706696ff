"""Outputs that appear complete or not at all: build in a hidden sibling directory, rename at the end."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    pass


def ensure_writable(out: str | os.PathLike, force: bool = False) -> None:
    """Fail early, before any expensive work, when `out` exists and `force` is not set."""
    if Path(out).exists() and not force:
        raise OutputExistsError(f"{Path(out).absolute()} exists; pass --force to overwrite it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out`, on failure it is removed.

    An existing `out` is never touched unless `force` is set (checked again at the end, in case something
    appeared there meanwhile), and even then only once the new one is complete; if the final swap fails,
    the old output is put back.
    """
    ensure_writable(out, force)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    if partial.exists():
        _remove(partial)
    partial.mkdir()
    try:
        yield partial
        ensure_writable(out, force)
        if out.exists() or out.is_symlink():
            retired = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(retired)
            try:
                partial.rename(out)
            except BaseException:
                retired.rename(out)
                raise
            _remove(retired)
        else:
            partial.rename(out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside the file `out`; on success it replaces `out` (one rename, so a reader
    sees the old file or the complete new one), on failure it is removed. Same `force` rules as above."""
    ensure_writable(out, force)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        yield partial
        ensure_writable(out, force)
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
