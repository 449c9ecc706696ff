"""`mvlm data shard --launcher slurm --parts N ...`: the N parts as one SLURM job array, and the merge as a
job that starts after all of them succeeded (`afterok`), submitted through submitit as the sweeps are.

Each array task runs `python -m data_pipelines.shards ... --part I/N` (its inputs given as absolute globs,
which every host expands to the same sorted list on a shared file system); the merge job runs
`python -m data_pipelines.shard_index --out OUT --parts N`. Resubmitting after a failure re-runs every
part, and each skips the units it finished.

--dry-run: nothing is submitted; the sbatch scripts, as submitit's SlurmExecutor renders them, are written
to OUT/slurm/dry_run/ (made-up job ids from 1001) beside commands.txt (what each task runs), and shown.
--launcher submitit-local: submitit's LocalExecutor (tests, a machine without SLURM): the parts run as
local processes at once, then the merge.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

DRY_RUN_DIR = "dry_run"
FIRST_DRY_RUN_ID = 1001
LAUNCHERS = ("none", "slurm", "submitit-local")


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("many hosts (SLURM)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="none",
                       help="slurm: submit --parts N parts as a job array and the merge after it")
    group.add_argument("--parts", type=int, help="number of parts (array tasks) for --launcher")
    group.add_argument("--dry-run", action="store_true", help="write and show the jobs, submit nothing")
    group.add_argument("--slurm-partition")
    group.add_argument("--slurm-account")
    group.add_argument("--slurm-time-min", type=int, default=24 * 60, help="per part")
    group.add_argument("--slurm-cpus-per-task", type=int, default=16, help="per part; its --workers is one less "
                       "(submitit-local: each part has --workers)")
    group.add_argument("--slurm-mem-gb", type=int, default=32, help="per part")


def part_argv(args: argparse.Namespace, workers: int) -> list[str]:
    """The shard command line of every part, without --part: absolute paths, so any host can run it."""
    patterns = [p if p.startswith("tfds:") else os.path.abspath(os.path.expanduser(p)) for p in args.input]
    argv = ["--tokenizer", os.path.abspath(args.tokenizer), "--input", *patterns, "--out", os.path.abspath(args.out),
            "--workers", str(workers), "--max-tokens-per-file", str(args.max_tokens_per_file),
            "--unit-bytes", str(args.unit_bytes)]
    return argv + (["--bos"] if args.bos else [])


def run_part(shard_main: Callable[[list[str]], int], argv: list[str], part: int, parts: int) -> None:
    """What an array task runs (`shard_main`: data_pipelines.shards.main, handed in by its caller so that this
    module does not import it back); raises on failure, so that `afterok` holds the merge back."""
    if shard_main([*argv, "--part", f"{part}/{parts}"]) != 0:
        raise RuntimeError(f"part {part}/{parts} failed (its error is above in this job's log)")


def run_merge(out: str, parts: int) -> None:
    from data_pipelines.shard_index import main

    if main(["--out", out, "--parts", str(parts)]) != 0:
        raise RuntimeError(f"merging {out} failed (its error is above in this job's log)")


def render_sbatch(folder: Path, params: dict[str, Any], array_size: int) -> str:
    """The sbatch script SlurmExecutor would submit for these parameters (an array when array_size > 1)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own renderer: the script is its script

    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **params,
                               **({"map_count": array_size} if array_size > 1 else {}))


def _parameters(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """submitit SlurmExecutor parameters of a part and of the merge."""
    common = {k: v for k, v in (("partition", args.slurm_partition), ("account", args.slurm_account)) if v}
    part = {**common, "job_name": "mvlm-shard-part", "nodes": 1, "ntasks_per_node": 1,
            "cpus_per_task": args.slurm_cpus_per_task, "time": args.slurm_time_min, "mem": f"{args.slurm_mem_gb}GB"}
    merge = {**common, "job_name": "mvlm-shard-merge", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
             "time": 30, "mem": "4GB"}
    return part, merge


def launch(args: argparse.Namespace, shard_main: Callable[[list[str]], int], log: Callable[[str], None] = print) -> int:
    """Submit (or, with --dry-run, write) the parts, each running `shard_main` on its command line, and the
    merge; returns an exit status."""
    import submitit

    from data_pipelines.documents import expand_inputs

    if not args.parts or args.parts < 1:
        raise ValueError(f"--launcher {args.launcher} needs --parts N (N >= 1)")
    if args.part != "1/1":
        raise ValueError("--part is chosen by the launcher: pass --parts N instead")
    expand_inputs(args.input)  # a typo fails here, not in N jobs hours later
    out = os.path.abspath(args.out)
    folder = Path(out) / "slurm"
    job_folder = folder / "%j"  # submitit fills in the job id (and array index)
    # a SLURM part has its own CPUs; local parts share this machine's (--workers each)
    argv = part_argv(args, args.workers if args.launcher == "submitit-local" else max(1, args.slurm_cpus_per_task - 1))
    part_params, merge_params = _parameters(args)
    module = f"{shlex.quote(sys.executable)} -m"
    commands = [f"{{ID}}_{i - 1} {module} data_pipelines.shards {shlex.join([*argv, '--part', f'{i}/{args.parts}'])}"
                for i in range(1, args.parts + 1)]
    merge_command = f"{{ID}} {module} data_pipelines.shard_index --out {shlex.quote(out)} --parts {args.parts}"
    if args.dry_run:
        dry = folder / DRY_RUN_DIR
        shutil.rmtree(dry, ignore_errors=True)
        dry.mkdir(parents=True)
        parts_id, merge_id = str(FIRST_DRY_RUN_ID), str(FIRST_DRY_RUN_ID + 1)
        scripts = {f"00-{parts_id}.sbatch": render_sbatch(job_folder, part_params, args.parts),
                   f"01-{merge_id}.sbatch": render_sbatch(job_folder, {**merge_params,
                                                                       "dependency": f"afterok:{parts_id}"}, 1)}
        for name, text in scripts.items():
            (dry / name).write_text(text)
            log(f"{name}:\n{text}")
        listing = [c.replace("{ID}", parts_id) for c in commands] + [merge_command.replace("{ID}", merge_id)]
        (dry / "commands.txt").write_text("".join(line + "\n" for line in listing))
        log(f"dry run: nothing submitted; scripts and commands.txt in {dry}")
        return 0
    if args.launcher == "submitit-local":
        executor = submitit.LocalExecutor(job_folder)
        executor.update_parameters(timeout_min=args.slurm_time_min)
    else:
        executor = submitit.SlurmExecutor(job_folder)
        executor.update_parameters(**part_params)
    with executor.batch():
        jobs = [executor.submit(run_part, shard_main, argv, i, args.parts) for i in range(1, args.parts + 1)]
    parts_id = str(jobs[0].job_id).split("_")[0]
    log(f"parts: {'array of ' + str(args.parts) if args.parts > 1 else 'job'} {parts_id}")
    if args.launcher == "submitit-local":  # no dependencies locally: wait, then merge
        failed = 0
        for i, job in enumerate(jobs, 1):
            try:
                job.result()
            except Exception as error:  # noqa: BLE001 - reported with its part; the merge is not started
                failed += 1
                log(f"part {i}/{args.parts}: job failed: {str(error).strip().splitlines()[-1] if str(error) else error!r}")
        if failed:
            return 1
        run_merge(out, args.parts)  # here: a local job would only add a process start
        return 0
    merge_executor = submitit.SlurmExecutor(job_folder)
    merge_executor.update_parameters(**merge_params, dependency=f"afterok:{parts_id}")
    merge = merge_executor.submit(run_merge, out, args.parts)
    log(f"merge: job {merge.job_id} after {parts_id}; logs in {folder}")
    return 0
