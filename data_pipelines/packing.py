"""Packing examples into fixed-length rows: which examples share a row, and how much of the row is real.

Two packers, both deterministic functions of (lengths, images, order), so an epoch's rows are known up
front and the stream stays random access (data_pipelines.conversations):
- `next_fit`: a row takes the next example while its tokens and images fit, else it is closed. Simple,
  and what the tiny recipes have always used; its waste is about half an example per row, so rows of a
  few long examples (LLaVA's mix665k in rows of 2,048) lose a large share.
- `best_fit`: up to `window` rows stay open; each example goes to the fullest open row it fits, and when
  it fits none, the fullest row is closed to make room. Rows leave in the order they close, so the epoch
  order is still the shuffled one, shifted by at most `window` rows.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PACKERS = ("next_fit", "best_fit")
BEST_FIT_WINDOW = 64


def next_fit(lengths: np.ndarray, has_image: np.ndarray, order: np.ndarray, seq_len: int,
             images_per_row: int) -> list[np.ndarray]:
    rows, current, used, images = [], [], 0, 0
    for index in order:
        length, image = int(lengths[index]), int(has_image[index])
        if current and (used + length > seq_len or images + image > images_per_row):
            rows.append(np.asarray(current))
            current, used, images = [], 0, 0
        current.append(index)
        used += length
        images += image
    if current:
        rows.append(np.asarray(current))
    return rows


def best_fit(lengths: np.ndarray, has_image: np.ndarray, order: np.ndarray, seq_len: int, images_per_row: int,
             window: int = BEST_FIT_WINDOW) -> list[np.ndarray]:
    rows: list[np.ndarray] = []
    members: list[list[int]] = []  # the open rows (plain lists: a 64-row scan is faster than numpy per item)
    used: list[int] = []
    images: list[int] = []
    for index in order.tolist():
        length, image = int(lengths[index]), int(has_image[index])
        slot, fullest = -1, -1
        for row, (tokens, count) in enumerate(zip(used, images)):
            if tokens + length <= seq_len and count + image <= images_per_row and tokens > fullest:
                slot, fullest = row, tokens
        if slot < 0:
            if len(members) == window:  # make room: the fullest row leaves
                full = max(range(len(used)), key=used.__getitem__)
                rows.append(np.asarray(members.pop(full)))
                used.pop(full)
                images.pop(full)
            members.append([])
            used.append(0)
            images.append(0)
            slot = len(members) - 1
        members[slot].append(index)
        used[slot] += length
        images[slot] += image
    rows.extend(np.asarray(m) for m in members)  # what is still open, in opening order
    return rows


def pack_rows(lengths: np.ndarray, has_image: np.ndarray, order: np.ndarray, seq_len: int, images_per_row: int,
              pack: bool, packer: str = "next_fit") -> list[np.ndarray]:
    """Example indices of each row, in `order` (one example per row without `pack`).

    lengths: [examples] model inputs per example (images widened); has_image: [examples] 0/1;
    order: a permutation of the examples."""
    if not pack:
        return [np.asarray([int(index)]) for index in order]
    if packer == "next_fit":
        return next_fit(lengths, has_image, order, seq_len, images_per_row)
    if packer == "best_fit":
        return best_fit(lengths, has_image, order, seq_len, images_per_row)
    raise ValueError(f"data.packer: unknown {packer!r}; expected one of {PACKERS}")


@dataclasses.dataclass(frozen=True)
class PackingStats:
    """How full an epoch's rows are (the whole rows, before batches drop a remainder)."""
    examples: int
    rows: int
    seq_len: int
    real_tokens: int  # tokens of examples, loss-bearing or context; the rest of the rows is padding
    images: int
    images_per_row: int

    @property
    def real_share(self) -> float:
        return self.real_tokens / max(self.rows * self.seq_len, 1)

    @property
    def image_slot_share(self) -> float:
        """Share of the rows' image slots that hold an image (the tower encodes empty slots too)."""
        return self.images / max(self.rows * self.images_per_row, 1)

    def describe(self) -> str:
        return (f"{self.examples:,} examples in {self.rows:,} rows of {self.seq_len}: "
                f"{100 * self.real_share:.1f} % real tokens, {100 * (1 - self.real_share):.1f} % padding"
                + (f"; {100 * self.image_slot_share:.1f} % of {self.images_per_row} image slots per row used"
                   if self.images else ""))


def packing_stats(rows: list[np.ndarray], lengths: np.ndarray, has_image: np.ndarray, seq_len: int,
                  images_per_row: int) -> PackingStats:
    members = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return PackingStats(len(members), len(rows), seq_len, int(lengths[members].sum()), int(has_image[members].sum()),
                        images_per_row)
