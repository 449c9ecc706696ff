"""Outputs that appear complete or not at all.

Each context manager yields a local path to write to, whatever `out` is. On a local file system that is a
hidden sibling of `out`, renamed over it at the end (one rename: a reader sees the old output or the new).
On an object store (gs://) there is no rename (gcsfs copies and deletes object by object), so the output is
written to a local temporary directory and uploaded when complete, one put per object: a put is atomic (a
reader sees the old object or the whole new one). A directory goes up object by object, with the files named
in `last` after the rest, so a reader that checks one of those first never takes a half-uploaded directory
for a complete one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from etils import epath

from mvlm_jax.paths import as_path, endpoint, is_url, probe


class OutputExistsError(FileExistsError):
    pass


def ensure_writable(out: str | os.PathLike, force: bool = False) -> None:
    """Fail early, before any expensive work, when `out` exists and `force` is not set (and, for an object
    store, when it cannot be reached)."""
    path = as_path(out)
    if probe(path) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _upload(local: Path, out: epath.Path, last: Sequence[str] = ()) -> None:
    """Put the file or directory tree `local` at `out` (an object-store URL), replacing what is there. On
    failure what was put is removed again as far as the store still answers; what stays lacks the `last`
    files, which go up only after everything else."""
    import fsspec

    filesystem, target = fsspec.core.url_to_fs(os.fspath(out))
    try:
        if filesystem.exists(target):
            filesystem.rm(target, recursive=True)  # no atomic swap exists on an object store
        if local.is_file():
            filesystem.put_file(os.fspath(local), target)
            return
        files = sorted(p for p in local.rglob("*") if p.is_file())
        for file in sorted(files, key=lambda p: p.relative_to(local).as_posix() in last):  # `last` at the end
            filesystem.put_file(os.fspath(file), f"{target}/{file.relative_to(local).as_posix()}")
    except Exception as error:
        with contextlib.suppress(Exception):
            filesystem.rm(target, recursive=True)
        raise OSError(f"{out}: writing to the object store at {endpoint(out)} failed "
                      f"({type(error).__name__}: {str(error)[:300]})") from error


@contextlib.contextmanager
def _uploaded(out: epath.Path, force: bool, directory: bool, last: Sequence[str] = ()) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=".mvlm-upload-") as scratch:
        partial = Path(scratch) / out.name
        if directory:
            partial.mkdir()
        yield partial
        ensure_writable(out, force)
        _upload(partial, out, last)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, force: bool = False, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `out`, on failure it is removed.

    An existing `out` is never touched unless `force` is set (checked again at the end, in case something
    appeared there meanwhile), and even then only once the new one is complete; if the final swap fails,
    the old output is put back (local file systems; on an object store the old objects are deleted before
    the upload, and `last`: file names uploaded after the others, see above).
    """
    ensure_writable(out, force)
    if is_url(out):
        with _uploaded(as_path(out), force, True, last) as partial:
            yield partial
        return
    out = Path(as_path(out))
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
    """Yield a temporary path for the file `out`; on success it replaces `out` (one rename or one put, so a
    reader sees the old file or the complete new one), on failure it is removed. Same `force` rules as above."""
    ensure_writable(out, force)
    if is_url(out):
        with _uploaded(as_path(out), force, False) as partial:
            yield partial
        return
    out = Path(as_path(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        yield partial
        ensure_writable(out, force)
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file `path` with `data` in one step: a rename of a complete temporary file locally, a
    single put (atomic per object) on an object store."""
    if is_url(path):
        as_path(path).write_bytes(data)
        return
    with atomic_file(path, force=True) as partial:
        partial.write_bytes(data)
