"""SLURM through submitit: each unfinished stage is a job; the stages of one level (same depth in the
stage graph, same resources) are one job array; a level depends on the jobs of its inputs (`afterok`).

Inside a job, submitit's `srun` starts nodes x tasks_per_node tasks; each runs `job_entry`, which runs the
stage's command (the trainer with --distributed when there is more than one task, so jax.distributed
finds its peers from SLURM; a single-task stage never joins a cluster). Task 0 alone claims the stage and
writes its status, so the local runner's leases hold here too. An array's dependency is the union of its
members' inputs: a failed input holds back the whole array of the next level (rerun the sweep to submit
what is left). Resubmitting submits only stages that are not done.

dry_run: nothing is submitted; the sbatch scripts submitit renders are written to SWEEP/slurm/dry_run/.
executor "local": submitit's LocalExecutor (tests, a machine without SLURM); it has no dependencies, so
each level is waited for before the next is started.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from mvlm_jax.sweep.execute import command, run_stage
from mvlm_jax.sweep.plan import Plan, load_plan
from mvlm_jax.sweep.state import DONE, FAILED, StatusStore, new_owner

DRY_RUN_DIR = "dry_run"


def job_entry(sweep_dir: str, stage_id: str, lease_s: float) -> str:
    """What a SLURM task runs: the stage (task 0 claims it), then the refreshed report."""
    plan = load_plan(sweep_dir)
    store = StatusStore(sweep_dir, lease_s)
    leader = int(os.environ.get("SLURM_PROCID", "0")) == 0
    missing = [source for _, source in plan.stages[stage_id].inputs if store.status(source) != DONE]
    if missing:
        raise RuntimeError(f"stage {stage_id}: its inputs {missing} are not done")
    outcome = run_stage(plan, stage_id, store, new_owner(), claim=leader, cluster=True)
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
    cpus_per_task, time_min, partition, account, mem_gb), over the sweep's defaults."""
    merged = {**defaults, **resources}
    params = {"nodes": int(merged.get("nodes", 1)), "ntasks_per_node": int(merged.get("tasks_per_node", 1)),
              "time": int(merged.get("time_min", 60))}
    for key in ("gpus_per_node", "cpus_per_task", "partition", "account"):
        if merged.get(key) is not None:
            params[key] = merged[key]
    if merged.get("mem_gb"):
        params["mem"] = f"{merged['mem_gb']}GB"
    return params


def _executor(kind: str, folder: Path, dry_run: bool, ids: itertools.count):
    import submitit

    if kind == "local":
        return submitit.LocalExecutor(folder)

    class DryRunExecutor(submitit.SlurmExecutor):
        """Renders the sbatch script as a real submission would, answers with a made-up job id."""

        def _make_submission_command(self, submission_file_path: Path) -> list[str]:
            return ["echo", f"Submitted batch job {next(ids)}"]

    return (DryRunExecutor if dry_run else submitit.SlurmExecutor)(folder)


def submit(plan: Plan, store: StatusStore, executor_kind: str = "slurm", dry_run: bool = False,
           defaults: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Submit every unfinished stage; returns {stage id: job id}. With the local executor, waits for all."""
    todo = [s for s in plan.stages if store.status(s) != DONE]
    folder = plan.sweep_dir / "slurm"
    dry_dir = folder / DRY_RUN_DIR
    if dry_run:
        shutil.rmtree(dry_dir, ignore_errors=True)
        dry_dir.mkdir(parents=True)
    jobs: dict[str, Any] = {}
    job_ids: dict[str, str] = {}
    fake_ids = itertools.count(1001)
    commands: dict[str, list[str]] = {}
    for level_index, level in enumerate(levels(plan, todo)):
        groups: dict[str, list[str]] = {}
        for stage_id in level:  # an array's tasks share one set of parameters
            groups.setdefault(json.dumps(slurm_parameters(plan.stages[stage_id].resources, defaults or {}),
                                         sort_keys=True), []).append(stage_id)
        for params_json, group in groups.items():
            executor = _executor(executor_kind, folder / "%j", dry_run, fake_ids)
            deps = sorted({job_ids[source] for stage_id in group for _, source in plan.stages[stage_id].inputs
                           if source in job_ids}, key=str)
            if executor_kind == "local":
                executor.update_parameters(timeout_min=json.loads(params_json)["time"])
            else:
                executor.update_parameters(**json.loads(params_json), job_name=f"mvlm-sweep-l{level_index}",
                                           **({"dependency": "afterok:" + ":".join(deps)} if deps else {}))
            with executor.batch():
                submitted = [executor.submit(job_entry, str(plan.sweep_dir), stage_id, store.lease_s)
                             for stage_id in group]
            for stage_id, job in zip(group, submitted):
                jobs[stage_id], job_ids[stage_id] = job, str(job.job_id).split("_")[0]
                commands[stage_id] = command(plan, plan.stages[stage_id], cluster=True)
            log(f"level {level_index}: {'array of ' + str(len(group)) if len(group) > 1 else 'job'} "
                f"{job_ids[group[0]]} ({', '.join(group)})" + (f" after {', '.join(deps)}" if deps else ""))
            if dry_run:
                scripts = sorted(folder.glob("*/.submission_file_*.sh"), key=lambda p: p.stat().st_mtime_ns)
                target = dry_dir / f"{level_index:02d}-{job_ids[group[0]]}.sbatch"
                scripts[-1].rename(target)
                log(target.read_text())
        if executor_kind == "local":
            for stage_id in level:
                try:
                    jobs[stage_id].result()
                except Exception as error:  # noqa: BLE001 - the stage's failure is in its status and log
                    log(f"{stage_id}: job failed: {str(error).splitlines()[0] if str(error) else error!r}")
    if dry_run:
        (dry_dir / "commands.json").write_text(json.dumps(commands, indent=1) + "\n")
    return job_ids
