"""Read dataset records (JSON list, JSON Lines, plain text) together with the file:line where each one starts.

Every record a pipeline reads comes out of `iter_records`, so a bad example can always be named by
file:line. Unreadable input never raises mid-file: it becomes a `Problem` in the stream, and the caller
decides whether to stop or to count and skip it.

Layouts, chosen by the file name (a trailing .gz or .zst is decompressed first):
  *.json   a JSON list of records; loaded whole (the official LLaVA files are lists), walked element by
           element with raw_decode so each record gets the line of its opening brace.
  *.jsonl  one record per line; streamed, so a multi-GB RedPajama shard never sits in memory.
  *.txt    one document per file, yielded as a single record {"text": <whole file>} at line 1.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import zstandard

# The reason vocabulary lives here, next to Problem, because the reader itself emits three of them;
# validate.py re-exports all of them so users import them from one place.
MALFORMED_JSON = "malformed_json"
NON_UTF8 = "non_utf8"
MISSING_FIELD = "missing_field"
EMPTY_CONVERSATION = "empty_conversation"
NOT_ALTERNATING = "not_alternating"
IMAGE_WITHOUT_PLACEHOLDER = "image_without_placeholder"
PLACEHOLDER_WITHOUT_IMAGE = "placeholder_without_image"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_OUTSIDE_ROOT = "image_outside_root"
TOO_LONG = "too_long"
BAD_ROLE = "bad_role"
NOT_A_RECORD = "not_a_record"
REASONS: tuple[str, ...] = (
    MALFORMED_JSON, NON_UTF8, MISSING_FIELD, EMPTY_CONVERSATION, NOT_ALTERNATING,
    IMAGE_WITHOUT_PLACEHOLDER, PLACEHOLDER_WITHOUT_IMAGE, MISSING_IMAGE, CORRUPT_IMAGE,
    IMAGE_OUTSIDE_ROOT, TOO_LONG, BAD_ROLE, NOT_A_RECORD,
)

_COMPRESSIONS = (".gz", ".zst")
_LAYOUTS = {".json": "json", ".jsonl": "jsonl", ".txt": "txt"}
_WS = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace set; str.isspace() would accept more
# surrogateescape maps each undecodable byte to one of these code points, so a bad byte can be located
# after decoding without a second pass over the raw bytes.
_BAD_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Record:
    """One record and where it starts (1-based line of its first character)."""
    path: str
    line: int
    data: dict


@dataclass(frozen=True)
class Problem:
    """Why a record (or part of a file) cannot be used, and where."""
    path: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"


class UnsupportedFileError(ValueError):
    """The file name does not say which layout to read."""


def file_layout(path: str | Path) -> tuple[str, str | None]:
    """Return (layout, compression) for a file name, e.g. ("jsonl", ".zst"); raise UnsupportedFileError."""
    name = Path(path).name.lower()
    compression = next((c for c in _COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    for suffix, layout in _LAYOUTS.items():
        if name.endswith(suffix):
            return layout, compression
    known = ", ".join(s + c for s in _LAYOUTS for c in ("", *_COMPRESSIONS))
    raise UnsupportedFileError(f"{path}: cannot tell the layout from the file name (expected one of: {known})")


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdRaw(io.RawIOBase):
    """Read a (possibly multi-frame) .zst file as one stream, raising ZstdError if it is truncated.

    zstandard's stream_reader ends quietly at a cut-off frame, which would drop the tail of a shard
    without a word; decompressobj exposes `eof`, so truncation can be told from a clean end.
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._chunks = self._decompress()
        self._pending = memoryview(b"")

    def _decompress(self) -> Iterator[bytes]:
        dobj, fed = self._dctx.decompressobj(), False
        while chunk := self._fh.read(1 << 20):
            while chunk:
                fed = True
                out = dobj.decompress(chunk)
                if out:
                    yield out
                chunk = b""
                if dobj.eof:  # frame done; files written in several frames (pzstd, appends) go on
                    chunk, dobj, fed = dobj.unused_data, self._dctx.decompressobj(), False
        if fed and not dobj.eof:
            raise zstandard.ZstdError("file ends inside a zstd frame (truncated)")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            self._pending = memoryview(next(self._chunks, b""))
            if not self._pending:
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]  # a memoryview slice: no copy of a large decompressed chunk
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


# Errors a damaged or truncated compressed stream raises while being read.
_STREAM_ERRORS = (OSError, EOFError, zstandard.ZstdError)


def iter_records(path: str | Path, byte_range: tuple[int, int] | None = None) -> Iterator[Record | Problem]:
    """Yield each record of `path` as a Record, and each unreadable part as a Problem, in file order.

    byte_range (uncompressed JSON lines only): just the lines whose first byte lies in [start, end), so
    that ranges which tile a file read every line exactly once. Lines are then numbered from 1 at the
    range's first line (`line_base` turns them into the file's numbers).

    Raises FileNotFoundError / IsADirectoryError / UnsupportedFileError at call time (not at the first
    next()) so a CLI can report a bad argument before reading anything.
    """
    p = Path(path)
    layout, compression = file_layout(p)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not p.is_file():
        raise IsADirectoryError(f"{path}: not a regular file")
    if byte_range is not None and (layout, compression) != ("jsonl", None):
        raise UnsupportedFileError(f"{path}: only uncompressed JSON lines can be read by byte range")
    if layout == "jsonl":
        return _iter_jsonl(p, str(path), compression, byte_range)
    return _iter_whole(p, str(path), layout, compression)


def splittable(path: str | Path) -> bool:
    """Whether `path` can be read by byte range (uncompressed JSON lines: lines can be found by seeking)."""
    try:
        return file_layout(path) == ("jsonl", None)
    except UnsupportedFileError:
        return False


def line_base(path: str | Path, start: int) -> int:
    """The file's number of the first line starting at or after byte `start`, minus one: what to add to
    a byte-range line number. Reads the file up to `start`, so callers compute it only when needed."""
    if start == 0:
        return 0
    count, left = 0, start - 1  # the line holding byte start - 1 ends before the range's first line
    with open(path, "rb") as fh:
        while left > 0 and (block := fh.read(min(left, 1 << 24))):
            count += block.count(b"\n")
            left -= len(block)
    return count + 1


def _range_lines(fh: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """The lines of `fh` whose first byte lies in [start, end)."""
    pos = 0
    if start > 0:
        fh.seek(start - 1)
        pos = start - 1 + len(fh.readline())  # the rest of a line that began before the range
    for raw in fh:
        if pos >= end:
            return
        pos += len(raw)
        yield raw


def _iter_jsonl(p: Path, name: str, compression: str | None,
                byte_range: tuple[int, int] | None = None) -> Iterator[Record | Problem]:
    lineno = 0
    try:
        with _open_binary(p, compression) as fh:
            lines = fh if byte_range is None else _range_lines(fh, *byte_range)
            first = byte_range is None or byte_range[0] == 0
            for lineno, raw in enumerate(lines, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Problem(name, lineno, NON_UTF8, f"byte 0x{raw[e.start]:02x} at column {e.start + 1}")
                    continue
                if lineno == 1 and first:
                    text = text.removeprefix("\ufeff")  # a BOM is not part of the first record
                if not text.strip():
                    continue  # blank lines (often a trailing one) are not records
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    yield Problem(name, lineno, MALFORMED_JSON, f"{e.msg} at column {e.colno}")
                    continue
                except RecursionError:
                    yield Problem(name, lineno, MALFORMED_JSON, "nested too deeply")
                    continue
                yield _as_record(name, lineno, obj)
    except _STREAM_ERRORS as e:
        # The lines already yielded are fine; what follows cannot be read at all.
        yield Problem(name, lineno + 1, MALFORMED_JSON,
                      f"compressed stream unreadable from here on ({type(e).__name__}: {e})")


def _as_record(name: str, line: int, obj: object) -> Record | Problem:
    if isinstance(obj, dict):
        return Record(name, line, obj)
    return Problem(name, line, NOT_A_RECORD, f"expected a JSON object, got {type(obj).__name__}")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_whole(p: Path, name: str, layout: str, compression: str | None) -> Iterator[Record | Problem]:
    try:
        with _open_binary(p, compression) as fh:
            data = fh.read()
    except _STREAM_ERRORS as e:
        yield Problem(name, 1, MALFORMED_JSON, f"compressed file unreadable ({type(e).__name__}: {e})")
        return
    # Decode leniently so one bad byte costs one record, not the whole file; records that contain an
    # escaped byte are reported as non_utf8 below.
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if layout == "txt":
        bad = _BAD_BYTE.search(text)
        if bad:
            yield Problem(name, _line_of(text, bad.start()), NON_UTF8, _bad_byte_detail(text, bad.start()))
        else:
            yield Record(name, 1, {"text": text})
        return
    yield from _walk_json_list(text, name)


def _bad_byte_detail(text: str, pos: int) -> str:
    column = pos - text.rfind("\n", 0, pos)
    return f"byte 0x{ord(text[pos]) - 0xDC00:02x} at column {column}"


def _walk_json_list(text: str, name: str) -> Iterator[Record | Problem]:
    """Walk a top-level JSON array one element at a time, tracking the line of each element's start."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    line = _line_of(text, pos)  # kept incrementally: counting from 0 per record would be quadratic

    def fail(at: int, msg: str) -> Problem:
        # A bad byte before the failure point is the likelier cause; name it rather than the symptom.
        bad = _BAD_BYTE.search(text, min(pos, at), at + 1)
        if bad:
            return Problem(name, _line_of(text, bad.start()), NON_UTF8, _bad_byte_detail(text, bad.start()))
        return Problem(name, _line_of(text, at), MALFORMED_JSON, msg + "; the rest of the file is unreadable")

    if pos >= len(text):
        yield Problem(name, line, MALFORMED_JSON, "empty file, expected a JSON list of records")
        return
    if text[pos] != "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield fail(e.pos, f"{e.msg} at column {e.colno}")
            return
        yield Problem(name, line, NOT_A_RECORD, f"top level is a {type(obj).__name__}, expected a list of records")
        return
    prev, pos = pos, _WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos_close = pos  # an empty list is a valid (if useless) file
    else:
        while True:
            line += text.count("\n", prev, pos)
            prev = pos
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                yield fail(e.pos, f"{e.msg} at column {e.colno}")
                return
            except RecursionError:
                yield fail(pos, "nested too deeply")
                return
            bad = _BAD_BYTE.search(text, pos, end)
            if bad:
                yield Problem(name, _line_of(text, bad.start()), NON_UTF8, _bad_byte_detail(text, bad.start()))
            else:
                yield _as_record(name, line, obj)
            pos = _WS.match(text, end).end()
            if pos >= len(text):
                yield fail(len(text) - 1, "unexpected end of file inside the list")
                return
            if text[pos] == "]":
                pos_close = pos
                break
            if text[pos] != ",":
                yield fail(pos, "expected ',' or ']' between records")
                return
            pos = _WS.match(text, pos + 1).end()
    tail = _WS.match(text, pos_close + 1).end()
    if tail < len(text):
        yield fail(tail, "extra data after the closing ']'")
