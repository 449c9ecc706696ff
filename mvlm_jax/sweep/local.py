"""The local runner: the plan's stages in dependency order, one at a time or several at once on disjoint
device subsets (`device_groups`, e.g. ["0,1", "2,3"] sets CUDA_VISIBLE_DEVICES per running stage).

Done stages are skipped; a failed stage is rerun; a stage another live runner holds is waited for. When
a stage fails, the stages that need it are left pending (reported as blocked) and the rest go on.
"""
from __future__ import annotations

import concurrent.futures
import time
from typing import Callable, Sequence

from mvlm_jax.sweep.execute import run_stage
from mvlm_jax.sweep.plan import Plan
from mvlm_jax.sweep.state import BUSY, DONE, FAILED, RUNNING, StatusStore, new_owner

DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES",)  # TPU subsets: TPU_VISIBLE_CHIPS etc., not tested here


def device_env(group: str | None) -> dict[str, str]:
    return {name: group for name in DEVICE_VARIABLES} if group is not None else {}


def run_local(plan: Plan, store: StatusStore, device_groups: Sequence[str | None] = (None,),
              on_change: Callable[[], None] | None = None, log: Callable[[str], None] = print,
              poll_s: float = 0.5) -> dict[str, str]:
    """Run what is left; returns {stage id: done | failed | blocked} for the stages of this plan."""
    owner = new_owner()
    outcome: dict[str, str] = {}
    free_groups = list(device_groups)
    running: dict[concurrent.futures.Future, tuple[str, str | None]] = {}
    elsewhere: set[str] = set()  # stages seen running under another runner: their failure is final here
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(device_groups)) as pool:
        while True:
            for stage_id, stage in plan.stages.items():
                if stage_id in outcome or any(stage_id == s for s, _ in running.values()):
                    continue
                status = store.status(stage_id)
                if status == DONE or (status == FAILED and stage_id in elsewhere):
                    outcome[stage_id] = status
                    continue
                if status == RUNNING:
                    elsewhere.add(stage_id)
                inputs = [source for _, source in stage.inputs]
                if any(outcome.get(source) in (FAILED, "blocked") for source in inputs):
                    outcome[stage_id] = "blocked"
                    log(f"{stage_id}: blocked (an input failed)")
                    continue
                if status == RUNNING or not free_groups or any(outcome.get(s) != DONE for s in inputs):
                    continue  # another runner's, no free slot, or inputs not ready
                group = free_groups.pop(0)
                future = pool.submit(run_stage, plan, stage_id, store, owner, device_env(group), True, log)
                running[future] = (stage_id, group)
            if not running:
                if all(stage_id in outcome for stage_id in plan.stages):
                    break
                time.sleep(poll_s)  # waiting for stages that other runners hold
                continue
            finished, _ = concurrent.futures.wait(running, timeout=poll_s,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                stage_id, group = running.pop(future)
                free_groups.append(group)
                answer = future.result()
                if answer != BUSY:  # BUSY: claimed elsewhere meanwhile; look again on the next pass
                    outcome[stage_id] = answer
                if on_change:
                    on_change()
    return outcome
