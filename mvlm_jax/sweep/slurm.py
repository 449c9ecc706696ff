"""SLURM through submitit: each unfinished stage is a job; the stages of one level (same depth in the
stage graph, same resources) are one job array; a level depends on the jobs of its inputs (`afterok`).

Inside a job, submitit's `srun` starts nodes x tasks_per_node tasks; each runs `job_entry`, which runs the
stage's command (the trainer with --distributed when there is more than one task, so jax.distributed
finds its peers from SLURM; a single-task stage never joins a cluster). Task 0 alone claims the stage and
writes its status, so the local runner's leases hold here too; a job whose stage another live runner
holds waits for that runner and ends as the stage does. (The other tasks of a multi-task job do not
claim: if task 0 found the stage busy, they wait for peers that never come until the job's time limit.)
An array's dependency is the union of its members' inputs: a failed input holds back the whole array of
the next level (rerun the sweep to submit what is left). Resubmitting submits only stages not done.

dry_run: nothing is submitted; the sbatch scripts, as submitit's SlurmExecutor renders them, are written to
SWEEP/slurm/dry_run/LEVEL-JOBID.sbatch with made-up job ids (from 1001), beside commands.txt (the command
each stage's tasks run inside the job). No srun or sbatch is needed for that.
executor "local": submitit's LocalExecutor (tests, a machine without SLURM): one process per stage, never
joining a cluster; it has no dependencies, so each level is waited for before the next is started.
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from data_pipelines.shard_slurm import render_sbatch  # one renderer for sweeps and corpus shards
from mvlm_jax.sweep.execute import command, run_stage
from mvlm_jax.sweep.plan import Plan, load_plan
from mvlm_jax.sweep.state import BUSY, DONE, FAILED, RUNNING, StatusStore, new_owner

DRY_RUN_DIR = "dry_run"
FIRST_DRY_RUN_ID = 1001


def job_entry(sweep_dir: str, stage_id: str, lease_s: float, cluster: bool = True, poll_s: float = 10.0) -> str:
    """What a SLURM task (or a local job) runs: the stage (task 0 claims it), then the refreshed report.
    `cluster`: inside a SLURM allocation, where a multi-process stage joins its peers."""
    plan = load_plan(sweep_dir)
    store = StatusStore(sweep_dir, lease_s)
    leader = int(os.environ.get("SLURM_PROCID", "0")) == 0
    missing = [source for _, source in plan.stages[stage_id].inputs if store.status(source) != DONE]
    if missing:
        raise RuntimeError(f"stage {stage_id}: its inputs {missing} are not done")
    outcome = run_stage(plan, stage_id, store, new_owner(), claim=leader, cluster=cluster)
    if outcome == BUSY:  # another live runner has it: its end is this job's end, so `afterok` still means done
        while (status := store.status(stage_id)) == RUNNING:
            time.sleep(poll_s)
        outcome = DONE if status == DONE else FAILED
    if leader:
        from mvlm_jax.sweep.report import write_report

        write_report(plan, store)
    if outcome == FAILED:  # a failed job, so that `afterok` holds back what needs it
        raise RuntimeError(f"stage {stage_id} failed; log: {plan.stage_dir(stage_id) / 'stage.log'}")
    return outcome


def levels(plan: Plan, todo: list[str]) -> list[list[str]]:
    """Stages to submit grouped by depth (a stage is one deeper than its deepest unfinished input)."""
    depth: dict[str, int] = {}
    for stage_id in plan.stages:  # the plan is in dependency order
        if stage_id in todo:
            inputs = [source for _, source in plan.stages[stage_id].inputs if source in depth]
            depth[stage_id] = 1 + max((depth[s] for s in inputs), default=-1)
    return [[s for s in todo if depth[s] == level] for level in range(max(depth.values(), default=-1) + 1)]


def slurm_parameters(resources: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of a stage's resources (nodes, tasks_per_node, gpus_per_node,
    cpus_per_task, time_min, partition, account, mem_gb), over the sweep's defaults (None = unset)."""
    merged = {**{k: v for k, v in defaults.items() if v is not None}, **resources}
    params = {"nodes": int(merged.get("nodes", 1)), "ntasks_per_node": int(merged.get("tasks_per_node", 1)),
              "time": int(merged.get("time_min", 60))}
    for key in ("gpus_per_node", "cpus_per_task", "partition", "account"):
        if merged.get(key) is not None:
            params[key] = merged[key]
    if merged.get("mem_gb"):
        params["mem"] = f"{merged['mem_gb']}GB"
    return params


def submit(plan: Plan, store: StatusStore, executor_kind: str = "slurm", dry_run: bool = False,
           defaults: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Submit every unfinished stage; returns {stage id: job id}. With the local executor, waits for all."""
    import submitit

    if executor_kind not in ("slurm", "local"):
        raise ValueError(f"executor {executor_kind!r}: expected 'slurm' or 'local'")
    todo = [s for s in plan.stages if store.status(s) != DONE]
    folder = plan.sweep_dir / "slurm"
    job_folder = folder / "%j"  # submitit fills in the job id (and array index)
    dry_dir = folder / DRY_RUN_DIR
    if dry_run:
        shutil.rmtree(dry_dir, ignore_errors=True)
        dry_dir.mkdir(parents=True)
    cluster = executor_kind == "slurm"
    jobs: dict[str, Any] = {}
    job_ids: dict[str, str] = {}
    fake_ids = itertools.count(FIRST_DRY_RUN_ID)
    commands: list[str] = []
    for level_index, level in enumerate(levels(plan, todo)):
        groups: dict[str, list[str]] = {}
        for stage_id in level:  # an array's tasks share one set of parameters
            groups.setdefault(json.dumps(slurm_parameters(plan.stages[stage_id].resources, defaults or {}),
                                         sort_keys=True), []).append(stage_id)
        for params_json, group in groups.items():
            deps = sorted({job_ids[source] for stage_id in group for _, source in plan.stages[stage_id].inputs
                           if source in job_ids}, key=int)
            names = "-".join(dict.fromkeys(plan.stages[s].name for s in group))
            params = {**json.loads(params_json), "job_name": f"mvlm-sweep-l{level_index}-{names}",
                      **({"dependency": "afterok:" + ":".join(deps)} if deps else {})}
            if dry_run:
                job_id = str(next(fake_ids))
                script = dry_dir / f"{level_index:02d}-{job_id}.sbatch"
                script.write_text(render_sbatch(job_folder, params, len(group)))
                job_ids.update({stage_id: job_id for stage_id in group})
            else:
                if executor_kind == "local":
                    executor = submitit.LocalExecutor(job_folder)
                    executor.update_parameters(timeout_min=params["time"])
                else:
                    executor = submitit.SlurmExecutor(job_folder)
                    executor.update_parameters(**params)
                with executor.batch():
                    submitted = [executor.submit(job_entry, str(plan.sweep_dir), stage_id, store.lease_s, cluster)
                                 for stage_id in group]
                for stage_id, job in zip(group, submitted):
                    jobs[stage_id], job_ids[stage_id] = job, str(job.job_id).split("_")[0]
            for index, stage_id in enumerate(group):
                task = f"{job_ids[stage_id]}_{index}" if len(group) > 1 else job_ids[stage_id]
                commands.append(f"{task} {stage_id}: {shlex.join(command(plan, plan.stages[stage_id], cluster))}")
            log(f"level {level_index}: {'array of ' + str(len(group)) if len(group) > 1 else 'job'} "
                f"{job_ids[group[0]]} ({', '.join(group)})" + (f" after {', '.join(deps)}" if deps else ""))
            if dry_run:
                log(script.read_text())
        if executor_kind == "local" and not dry_run:
            for stage_id in level:
                try:
                    jobs[stage_id].result()
                except Exception as error:  # noqa: BLE001 - the stage's failure is in its status and log
                    log(f"{stage_id}: job failed: {str(error).strip().splitlines()[-1] if str(error) else error!r}")
    if dry_run:
        (dry_dir / "commands.txt").write_text("".join(line + "\n" for line in commands))
        log(f"dry run: nothing submitted; scripts and commands.txt in {dry_dir}")
    return job_ids
