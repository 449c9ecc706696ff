"""A batch iterator whose position is one number: how many batches it has produced.

Every pipeline here ends in a batched grain MapDataset, i.e. random access to batch k. Resuming is
therefore slicing from batch k (nothing is skipped or re-read), and the state is independent of how it
is read:
- worker processes: any count, before and after a restore (grain's own multiprocess state is tied to the
  worker count, so it is not what we save);
- processes: process p reads elements p, p + P, ... of the global stream, so global batch t is always
  elements [t * B, (t + 1) * B) whatever P is; a restore with another process count sees the same
  examples at each step (their order inside the global batch differs).
The state carries a fingerprint of everything that decides the order (sources, seed, sequence length,
global batch size, ...), and a restore under a different data configuration is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterator

import grain


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    worker_count: int = 0  # grain worker processes; 0 reads in this process
    worker_buffer_size: int = 2
    read_threads: int = 2
    prefetch: int = 2


def fingerprint(order_defining: Any) -> str:
    return hashlib.sha256(json.dumps(order_defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BatchStream:
    """Iterates a batched grain MapDataset from batch `batches_consumed` on; get_state / set_state make it
    a grain-checkpointable iterator (grain.checkpoint.CheckpointSave / CheckpointRestore)."""

    def __init__(self, batches: grain.MapDataset, read: ReadOptions, order_fingerprint: str,
                 finalize: Callable[[Any], dict] | None = None):
        # `finalize` runs in this process on each batch: cheap vectorised expansion (e.g. windows into the
        # batch contract) after the workers, so that less data crosses process boundaries.
        self.batches, self.read, self.order_fingerprint = batches, read, order_fingerprint
        self.finalize = finalize
        self.batches_consumed = 0
        self._iterator: Iterator | None = None

    def _open(self) -> Iterator:
        stream = self.batches[self.batches_consumed:].to_iter_dataset(
            grain.ReadOptions(num_threads=self.read.read_threads, prefetch_buffer_size=self.read.prefetch))
        if self.read.worker_count:
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.read.worker_count, per_worker_buffer_size=self.read.worker_buffer_size))
        return iter(stream)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self.batches_consumed += 1
        return self.finalize(batch) if self.finalize is not None else batch

    def get_state(self) -> bytes:
        """JSON bytes, the form grain's orbax handler stores for a non-dataset iterator."""
        return json.dumps({"batches_consumed": self.batches_consumed, "fingerprint": self.order_fingerprint}).encode()

    def set_state(self, state: bytes | str | dict) -> None:
        if not isinstance(state, dict):
            state = json.loads(state)
        if state.get("fingerprint") != self.order_fingerprint:
            raise ValueError(f"data iterator state was saved under another data configuration "
                             f"(fingerprint {state.get('fingerprint')} != {self.order_fingerprint}): the sources, "
                             "seed, sequence length or global batch size changed since the checkpoint")
        self.close()
        self.batches_consumed = int(state["batches_consumed"])

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore: start reading ahead."""
        if self._iterator is None:
            self._iterator = self._open()

    def close(self) -> None:
        """Stop worker processes (a new iterator starts on the next batch)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None
