"""Running one planned stage: the same for the local runner and a SLURM job.

A stage is a command in a subprocess (the trainer as users run it, or mvlm_jax.sweep.tasks), its output
appended to STAGE_DIR/stage.log. While it runs, the lease is renewed; if the lease is lost (this runner
stalled and another took the stage over), the command is stopped. Done means exit 0 and the stage's
output complete (the trainer's model/ directory, or a result.json).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from mvlm_jax.sweep import tasks
from mvlm_jax.sweep.plan import ROOT, Plan, PlannedStage
from mvlm_jax.sweep.state import BUSY, CLAIMED, DONE, FAILED, StatusStore, write_json

RESOLVED_EXPERIMENT = Path(__file__).with_name("resolved_config.py")
LOG_FILE = "stage.log"


def output_path(plan: Plan, stage_id: str) -> Path:
    """What a later stage reads: a training stage's model directory, or the stage directory."""
    stage = plan.stages[stage_id]
    return plan.stage_dir(stage_id) / "run" / "model" if stage.kind == "train" else plan.stage_dir(stage_id)


def runtime_config(plan: Plan, stage: PlannedStage) -> dict:
    """The stage's config with this sweep's paths filled in (init_from, the shared embedded data)."""
    sources = [f"{part}={output_path(plan, source)}" for part, source in stage.inputs] + list(stage.checkpoints)
    data_root = str(plan.sweep_dir / "data")
    if stage.kind == "train":
        config = {**stage.config, "init_from": sources}
        config["data"] = {**config["data"], "embedded": {**config["data"]["embedded"], "root": data_root}}
        return config
    inputs = {part: str(output_path(plan, source)) for part, source in stage.inputs}
    inputs.update(spec.split("=", 1) for spec in stage.checkpoints)
    return {"settings": stage.config, "inputs": inputs, "data_root": data_root}


def distributed(stage: PlannedStage) -> bool:
    """Multi-process stages join a jax.distributed cluster; single-process ones never try, even inside a
    SLURM allocation (where jax.distributed.initialize() would detect SLURM from SLURM_JOB_ID alone)."""
    resources = stage.resources
    return int(resources.get("nodes", 1)) * int(resources.get("tasks_per_node", 1)) > 1


def command(plan: Plan, stage: PlannedStage, cluster: bool = False) -> list[str]:
    """The stage's command line; `cluster`: inside a SLURM job, where a multi-process stage joins its peers."""
    stage_dir = plan.stage_dir(stage.id)
    if stage.kind == "train":
        line = [sys.executable, "-m", "mvlm_jax.train", "--config", f"{RESOLVED_EXPERIMENT}:{stage_dir / 'config.json'}",
                "--workdir", str(stage_dir / "run")]
        return line + (["--distributed"] if cluster and distributed(stage) else [])
    return [sys.executable, "-m", "mvlm_jax.sweep.tasks", stage.kind, "--stage-dir", str(stage_dir)]


def run_stage(plan: Plan, stage_id: str, store: StatusStore, owner: str, env: Mapping[str, str] | None = None,
              claim: bool = True, log: Callable[[str], None] = print, cluster: bool = False) -> str:
    """Claim and run one stage; returns DONE, FAILED or BUSY (another live runner has it; nothing done).
    claim=False: a non-leader task of a multi-process stage runs the command without touching the status."""
    stage = plan.stages[stage_id]
    stage_dir = plan.stage_dir(stage_id)
    log_path = stage_dir / LOG_FILE
    if claim:
        answer = store.claim(stage_id, owner, log=str(log_path))
        if answer != CLAIMED:
            return answer
        if tasks.is_complete(stage.kind, stage_dir):  # finished before its status was written
            store.finish(stage_id, owner, ok=True, seconds=0.0, log=str(log_path))
            return DONE
    write_json(stage_dir / "config.json", runtime_config(plan, stage))
    line = command(plan, stage, cluster)
    log(f"{stage_id}: {' '.join(line[1:])}")
    started = time.time()
    with open(log_path, "a") as handle:
        handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {owner}: {' '.join(line)}\n")
        handle.flush()
        process = subprocess.Popen(line, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **(env or {})})
        lost, renewed = False, time.time()
        while process.poll() is None:
            time.sleep(0.2)
            if claim and time.time() - renewed > store.lease_s / 3:
                renewed = time.time()
                if not store.renew(stage_id, owner):
                    lost = True
                    process.terminate()
                    process.wait()
    seconds = time.time() - started
    if lost:
        log(f"{stage_id}: lease lost to another runner; stopped")
        return BUSY
    ok = process.returncode == 0 and tasks.is_complete(stage.kind, stage_dir)
    if claim:
        error = None if ok else (f"exit {process.returncode}" if process.returncode else "exit 0 but output incomplete "
                                 "(stopped early with a checkpoint?)")
        store.finish(stage_id, owner, ok, seconds=seconds, returncode=process.returncode, error=error, log=str(log_path))
    log(f"{stage_id}: {'done' if ok else 'FAILED'} in {seconds:.0f} s" + ("" if ok else f" (log: {log_path})"))
    return DONE if ok else FAILED
