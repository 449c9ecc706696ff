"""Periodic work of the training loop as hooks: logging, validation, checkpointing (and benchmarks).

A hook runs after step t (t optimizer steps done) when t % every == 0, or at the run's last step; every = 0
turns it off. The loop runs the due hooks of a step in list order, once that step's metrics are read and
checked finite, so no hook ever sees the state of a non-finite step. Hooks add to the step's `record`
(validation writes val_loss there), and the logging hook writes the record, so list the logging hook after
every hook whose values belong in metrics.jsonl.

The state after step t lives only until step t + 1 is dispatched (it donates it). A hook that needs it says
`needs_state`; at a step where one is due, the loop reads step t's metrics before dispatching step t + 1.
At the other steps it dispatches step t + 1 first and reads step t's metrics while the device runs it, so
the state is gone by then (`StepContext.state` is None).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mvlm_jax.train.partition import merge


@dataclasses.dataclass
class StepContext:
    """What a hook sees after step `step`."""

    step: int  # optimizer steps done, 1-based
    last: bool  # the run's final step
    record: dict  # this step's metrics record (step, loss, ...); hooks add their values to it
    state: dict | None  # {"trainable", "frozen", "opt_state", "step", "rng"} after `step`, sharded;
    # None unless a due hook needs_state. Read it, never keep it: the next step donates its buffers.

    @property
    def params(self) -> Any:
        """The full parameter tree after this step (sharded arrays, trainable and frozen merged)."""
        if self.state is None:
            raise RuntimeError(f"step {self.step}: the state is not kept for this hook; give it needs_state=True")
        return merge(self.state["trainable"], self.state["frozen"])


@dataclasses.dataclass(frozen=True)
class Hook:
    name: str
    every: int  # run after step t when t % every == 0 (and at the last step, with at_last); 0: never
    run: Callable[[StepContext], None]
    needs_state: bool = False  # reads StepContext.state (the loop then waits for step t before t + 1)
    at_last: bool = True  # also run after the last step, whatever its number

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"hook {self.name}: every must be >= 0 (0 turns it off), got {self.every}")

    def due(self, step: int, last: bool) -> bool:
        return self.every > 0 and (step % self.every == 0 or (last and self.at_last))


def due_hooks(hooks: list[Hook], step: int, last: bool) -> list[Hook]:
    return [hook for hook in hooks if hook.due(step, last)]


def run_hooks(hooks: list[Hook], context: StepContext) -> None:
    """Run the hooks due at `context.step`, in list order."""
    for hook in due_hooks(hooks, context.step, context.last):
        hook.run(context)
