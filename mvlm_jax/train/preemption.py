"""Preemption: spot GPUs and preemptible TPUs send SIGTERM and leave about 30 seconds.

The first SIGTERM only sets a flag. At the top of every step the trainer asks `requested(step)`; with several
processes the answer is agreed by all of them (an all-gather of the flags, plus JAX's own preemption notice
where `jax.distributed` runs its preemption service), so every process stops at the same step, writes one
checkpoint there and exits with status 0. Later SIGTERMs are ignored, so a second signal cannot interrupt
that save (orbax finalises a checkpoint by renaming it, so even a SIGKILL leaves the previous one intact).
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import jax
import numpy as np


class PreemptionWatch:
    """Context manager: installs the SIGTERM handler in the main thread; restores the previous one on exit
    unless a SIGTERM came."""

    def __init__(self) -> None:
        self.signalled = False
        self._previous = None
        self._jax_notice = jax.process_count() > 1  # off after the first call finds no preemption service

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signalled:
            print(f"signal {signum} again: already stopping at the next step; ignored", file=sys.stderr, flush=True)
            return
        self.signalled = True
        print(f"signal {signum}: stopping at the next step with a checkpoint", file=sys.stderr, flush=True)

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        # Once stopping, stay deaf to SIGTERM until the process ends: the final waits and closes still run.
        if self._previous is not None and not self.signalled:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self, step: int) -> bool:
        """Whether to stop before `step` + 1; the same answer on every process (a collective: every
        process calls it at every step)."""
        if jax.process_count() == 1:
            return self.signalled
        from jax.experimental import multihost_utils

        notice = False
        if self._jax_notice:
            try:
                notice = bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # no preemption service in this runtime
                self._jax_notice = False
        flags = multihost_utils.process_allgather(np.asarray(self.signalled or notice, np.int32))
        return bool(np.any(flags))
