"""Record checks shared by the training pipelines and `python -m data_pipelines.check`.

A record that fails a check is skipped and counted in a SkipReport by reason, never dropped silently.

Decisions (the data formats leave these open):
- "id" is optional and not checked: LLaVA's loader never reads it, and file:line already names a record.
- Roles: "human"/"user" -> human, "gpt"/"assistant" -> gpt, exact lower case; anything else is bad_role.
  One leading "system" turn is accepted and skipped (the v1 template brings its own system prompt);
  a "system" turn anywhere else is bad_role.
- After that, turns must go human, gpt, human, gpt, ... and end with gpt: a dump that starts with a gpt
  turn, two turns in a row from one side, or a trailing question with no answer are all not_alternating.
- llava: an "image" needs exactly one "<image>", in the first human turn (LLaVA moves it to the front of
  that turn). More than one "<image>" in the record is placeholder_without_image; "<image>" with no
  "image" key is too. sharegpt records have no images: any "<image>" is placeholder_without_image, and an
  "image" key is ignored.
- With image_root None the image files are not looked at (structure only): the JSON files do not say
  where their images live.
- A record with several problems is counted once, under its first problem (so SkipReport counts are
  counts of skipped records); the CLI still prints all of them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePath
from typing import Callable, Iterator

from PIL import Image

from .records import (  # noqa: F401  (re-exported: the reason vocabulary is part of this module's API)
    BAD_ROLE, CORRUPT_IMAGE, EMPTY_CONVERSATION, IMAGE_OUTSIDE_ROOT, IMAGE_WITHOUT_PLACEHOLDER,
    MALFORMED_JSON, MISSING_FIELD, MISSING_IMAGE, NON_UTF8, NOT_A_RECORD, NOT_ALTERNATING,
    PLACEHOLDER_WITHOUT_IMAGE, REASONS, TOO_LONG, Problem, Record, iter_records,
)

IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("llava", "sharegpt", "text")
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _problem(record: Record, reason: str, detail: str) -> Problem:
    return Problem(record.path, record.line, reason, detail)


def normalized_turns(record: Record) -> list[dict]:
    """The turns as [{"from": "human"|"gpt", "value": str}, ...] with a leading system turn dropped.

    Only meaningful for a record that passed check_conversation.
    """
    turns = record.data["conversations"]
    if turns and turns[0].get("from") == "system":
        turns = turns[1:]
    return [{"from": ROLE_ALIASES[t["from"]], "value": t["value"]} for t in turns]


def check_conversation(record: Record, fmt: str, image_root: Path | None,
                       verify_images: bool = True) -> list[Problem]:
    """Problems of one llava/sharegpt record (empty list: usable)."""
    if fmt not in ("llava", "sharegpt"):
        raise ValueError(f"check_conversation: format must be llava or sharegpt, got {fmt!r}")
    data = record.data
    turns = data.get("conversations")
    if turns is None:
        return [_problem(record, MISSING_FIELD, "no 'conversations'")]
    if not isinstance(turns, list):
        return [_problem(record, MISSING_FIELD, f"'conversations' must be a list, got {type(turns).__name__}")]
    if not turns:
        return [_problem(record, EMPTY_CONVERSATION, "'conversations' is empty")]

    problems: list[Problem] = []
    roles: list[str] = []  # normalised role per turn; "" where unusable
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(_problem(record, MISSING_FIELD, f"{where} is a {type(turn).__name__}, not an object"))
            roles.append("")
            continue
        for key in ("from", "value"):
            if key not in turn:
                problems.append(_problem(record, MISSING_FIELD, f"{where} has no '{key}'"))
        value = turn.get("value")
        if value is not None and not isinstance(value, str):
            problems.append(_problem(record, MISSING_FIELD,
                                     f"{where}.value must be a string, got {type(value).__name__}"))
        role = turn.get("from")
        if role is None:
            roles.append("")
        elif role == "system" and i == 0:
            roles.append("system")
        elif role in ROLE_ALIASES:
            roles.append(ROLE_ALIASES[role])
        else:
            problems.append(_problem(record, BAD_ROLE, f"{where}.from is {role!r}"))
            roles.append("")
    if problems:
        return problems  # alternation and placeholders cannot be judged on a broken structure

    start = 1 if roles[0] == "system" else 0
    if start == len(turns):
        return [_problem(record, EMPTY_CONVERSATION, "only a system turn")]
    for i in range(start, len(turns)):
        expected = "human" if (i - start) % 2 == 0 else "gpt"
        if roles[i] != expected:
            problems.append(_problem(record, NOT_ALTERNATING,
                                     f"conversations[{i}] is from {turns[i]['from']!r}, expected {expected!r}"))
            break
    else:
        if roles[-1] != "gpt":
            problems.append(_problem(record, NOT_ALTERNATING,
                                     f"conversations[{len(turns) - 1}] is a human turn with no answer"))
    if problems:
        return problems

    counts = [t["value"].count(IMAGE_PLACEHOLDER) for t in turns]
    total = sum(counts)
    if fmt == "sharegpt":
        if total:
            first = next(i for i, c in enumerate(counts) if c)
            problems.append(_problem(record, PLACEHOLDER_WITHOUT_IMAGE,
                                     f"conversations[{first}] has '<image>' but sharegpt records have no images"))
        return problems
    if "image" not in data:
        if total:
            first = next(i for i, c in enumerate(counts) if c)
            problems.append(_problem(record, PLACEHOLDER_WITHOUT_IMAGE,
                                     f"conversations[{first}] has '<image>' but the record has no 'image'"))
        return problems
    if counts[start] == 0:
        problems.append(_problem(record, IMAGE_WITHOUT_PLACEHOLDER,
                                 f"'image' is set but conversations[{start}] (the first human turn) has no '<image>'"))
    elif total > 1:
        problems.append(_problem(record, PLACEHOLDER_WITHOUT_IMAGE,
                                 f"{total} '<image>' placeholders for one image"))
    image = data["image"]
    if not isinstance(image, str) or not image:
        problems.append(_problem(record, MISSING_FIELD,
                                 f"'image' must be a non-empty path string, got {image!r}"[:200]))
    elif image_root is not None:
        problem = check_image(record, image, image_root, verify_images)
        if problem:
            problems.append(problem)
    return problems


def check_image(record: Record, image: str, image_root: Path, verify: bool = True) -> Problem | None:
    """The image must lie inside image_root (after resolving symlinks), exist, and decode."""
    rel = PurePath(image)
    if rel.is_absolute() or image.startswith(("/", "\\")):
        return _problem(record, IMAGE_OUTSIDE_ROOT, f"absolute path {image!r}")
    if ".." in rel.parts or ".." in image.replace("\\", "/").split("/"):
        return _problem(record, IMAGE_OUTSIDE_ROOT, f"{image!r} has a '..' component")
    root = Path(image_root).resolve()
    try:
        target = (root / rel).resolve()  # follows symlinks, so a link pointing out of the root is caught
    except (OSError, RuntimeError) as e:  # 3.11 raises RuntimeError on a symlink loop
        return _problem(record, MISSING_IMAGE, f"{image!r} cannot be resolved: {e}")
    if not target.is_relative_to(root):
        return _problem(record, IMAGE_OUTSIDE_ROOT, f"{image!r} resolves to {target}, outside {root}")
    if not target.is_file():
        return _problem(record, MISSING_IMAGE, f"{image!r} not found under {root}")
    if not verify:
        return None
    try:
        # verify() catches truncated/garbled headers cheaply but leaves the image unusable, and misses
        # broken pixel data; a second open + load() decodes it the way training will.
        with Image.open(target) as im:
            im.verify()
        with Image.open(target) as im:
            im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return _problem(record, CORRUPT_IMAGE, f"{image!r}: {type(e).__name__}: {e}")
    return None


def check_text(record: Record) -> list[Problem]:
    """Problems of one text record: "text" must be a non-empty string."""
    if "text" not in record.data:
        return [_problem(record, MISSING_FIELD, "no 'text'")]
    text = record.data["text"]
    if not isinstance(text, str):
        return [_problem(record, MISSING_FIELD, f"'text' must be a string, got {type(text).__name__}")]
    if not text.strip():
        return [_problem(record, MISSING_FIELD, "'text' is empty")]
    return []


def check_length(record: Record, num_tokens: int, seq_len: int) -> Problem | None:
    """too_long when the tokenised record has more than seq_len tokens."""
    if num_tokens > seq_len:
        return _problem(record, TOO_LONG, f"{num_tokens} tokens > seq_len {seq_len}")
    return None


def check_record(record: Record, fmt: str, image_root: Path | None = None,
                 verify_images: bool = True) -> list[Problem]:
    """Dispatch to check_conversation or check_text by format."""
    if fmt == "text":
        return check_text(record)
    return check_conversation(record, fmt, image_root, verify_images)


class SkipReport:
    """Counts skipped records per reason and keeps the first `max_examples` of each, for the run log."""

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Problem]] = {}

    def add(self, problem: Problem) -> None:
        """Count one skipped record under problem.reason."""
        if problem.reason not in REASONS:
            raise ValueError(f"unknown reason {problem.reason!r}; expected one of {REASONS}")
        self.counts[problem.reason] += 1
        kept = self.examples.setdefault(problem.reason, [])
        if len(kept) < self.max_examples:
            kept.append(problem)

    def merge(self, other: "SkipReport") -> None:
        """Fold in another report (e.g. from another worker or file)."""
        self.counts.update(other.counts)
        for reason, problems in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(problems[: max(0, self.max_examples - len(kept))])

    @property
    def total(self) -> int:
        """Number of skipped records."""
        return sum(self.counts.values())

    def format(self, kept: int | None = None) -> str:
        """Readable multi-line summary: count per reason, then example file:line lines."""
        head = f"skipped {self.total} record(s)" + (f", kept {kept}" if kept is not None else "")
        lines = [head]
        for reason in sorted(self.counts, key=lambda r: (-self.counts[r], r)):
            lines.append(f"  {reason}: {self.counts[reason]}")
            lines.extend(f"    {p}" for p in self.examples.get(reason, []))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready form: total, counts per reason and example strings."""
        return {"total": self.total, "counts": dict(self.counts),
                "examples": {r: [str(p) for p in ps] for r, ps in self.examples.items()}}


def check_file(path: str | Path, fmt: str, image_root: Path | None = None, *, verify_images: bool = True,
               seq_len: int | None = None, count_tokens: Callable[[Record], int] | None = None,
               ) -> Iterator[tuple[Record | None, list[Problem]]]:
    """Yield (record, problems) for every item of a file; record is None where the file was unreadable.

    The length check runs only on records that passed the others (it needs a tokenisable record).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    for item in iter_records(path):
        if isinstance(item, Problem):
            yield None, [item]
            continue
        problems = check_record(item, fmt, image_root, verify_images)
        if not problems and seq_len is not None and count_tokens is not None:
            long = check_length(item, count_tokens(item), seq_len)
            if long:
                problems = [long]
        yield item, problems


def iter_valid(path: str | Path, fmt: str, report: SkipReport, image_root: Path | None = None, *,
               verify_images: bool = True, seq_len: int | None = None,
               count_tokens: Callable[[Record], int] | None = None) -> Iterator[Record]:
    """Stream the usable records; every skipped one is added to `report` under its first problem."""
    for record, problems in check_file(path, fmt, image_root, verify_images=verify_images,
                                       seq_len=seq_len, count_tokens=count_tokens):
        if problems:
            report.add(problems[0])
        elif record is not None:
            yield record


def validate_file(path: str | Path, fmt: str, image_root: Path | None = None, seq_len: int | None = None,
                  count_tokens: Callable[[Record], int] | None = None, *, verify_images: bool = True,
                  max_examples: int = 5) -> tuple[list[Record], SkipReport]:
    """All usable records of a file plus the report of the skipped ones."""
    report = SkipReport(max_examples)
    records = list(iter_valid(path, fmt, report, image_root, verify_images=verify_images,
                              seq_len=seq_len, count_tokens=count_tokens))
    return records, report
