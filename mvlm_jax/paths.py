"""One path type for run directories and checkpoints: etils.epath.Path, local or gs:// (docs/TRAINING.md,
"Object stores").

Local paths are made absolute; gs:// URLs stay as they are (epath reaches them through gcsfs, orbax's arrays
through tensorstore's gcs driver). Other URL schemes are refused: orbax-checkpoint builds a cloud kvstore
spec for gs:// only (its tensorstore_utils._use_gcs_driver), so an s3:// checkpoint would fail halfway.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from etils import epath

from data_pipelines.errors import BadInput

OBJECT_STORES = ("gs",)
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
MOUNT_HINT = ("mount the bucket (gcsfuse for gs://, mountpoint-s3 for s3://) and pass the mount path, "
              "e.g. /mnt/bucket/...")


def scheme(value: str | os.PathLike) -> str | None:
    """'gs', 's3', ... for a URL, None for a local path."""
    match = _URL.match(os.fspath(value))
    return match.group(1).lower() if match else None


def is_url(value: str | os.PathLike) -> bool:
    return scheme(value) is not None


def as_path(value: str | os.PathLike, what: str = "path") -> epath.Path:
    """`value` (a user's string or a path) as an epath.Path: local ones absolute, gs:// URLs unchanged.
    `what` names the value in the error for an unsupported scheme (e.g. "--workdir")."""
    kind = scheme(value)
    if kind is None:
        return epath.Path(value).expanduser().absolute()
    if kind not in OBJECT_STORES:
        raise BadInput(f"{what} {os.fspath(value)}: {kind}:// is not supported for run directories and "
                         "checkpoints (orbax-checkpoint writes arrays to an object store through tensorstore's gcs "
                         "driver only); use gs:// or a local or shared file system")
    return epath.Path(os.fspath(value))


def require_local(value: str | os.PathLike, what: str) -> None:
    """Refuse a URL where the data is memory-mapped or opened as a local file (token shards, images,
    tokenizers, conversation files): those are read through the operating system, not an object store."""
    if is_url(value):
        raise BadInput(f"{what} {os.fspath(value)} is an object-store URL, but this data is memory-mapped or "
                         f"read as local files: {MOUNT_HINT}")


def endpoint(path: epath.Path) -> str:
    """The server that `path` is read from: the emulator named in the environment, or the public one."""
    if scheme(path) == "gs":
        return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    return "the local file system"


def probe(path: epath.Path) -> bool:
    """Whether `path` exists; for an object store, an error naming the URL and the server when that cannot
    be told (fsspec's exists() answers False on any error, which would read as "missing")."""
    if not is_url(path):
        return path.exists()
    import fsspec

    filesystem, location = fsspec.core.url_to_fs(os.fspath(path))
    try:
        filesystem.info(location)
    except FileNotFoundError:
        return False
    except Exception as error:  # noqa: BLE001 - anything else: the store cannot be reached or read
        raise OSError(f"{path}: cannot reach the object store at {endpoint(path)} "
                      f"({type(error).__name__}: {str(error)[:300]})") from error
    return True


@contextlib.contextmanager
def local_file(path: epath.Path) -> Iterator[Path]:
    """`path` as a local file for libraries that open files themselves (SentencePiece): itself when local,
    else a temporary copy that is removed afterwards."""
    if not is_url(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=".mvlm-download-") as scratch:
        copy = Path(scratch) / path.name
        copy.write_bytes(path.read_bytes())
        yield copy
