"""`mvlm sweep` / `make sweep EXP=... LAUNCHER=local|slurm`: run an experiment file's sweep(arg).

  python -m mvlm_jax.sweep experiments/ablations/projectors.py:demo [--workdir DIR] [--dry-run]
      [--launcher local|slurm|submitit-local] [--devices "0,1;2,3"] [--lease-s 120] [--report-only]
      [--slurm-partition P] [--slurm-time-min N] [--slurm-gpus-per-node N]

Every trial's every stage is resolved and checked first (an unknown key or a bad value names the trial,
the stage and the key; nothing runs). Then the plan: stages keyed by config hash, shared between trials
that have the same prefix, skipped when done. The report (SWEEP/report.md, results.json, PNGs) is
rewritten whenever a stage finishes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

DEMO_TOKENS_PER_S = 4500.0  # training tokens/s of the demo stages on the 2-core CPU (README's demo table)


def default_workdir(source: str) -> Path:
    path, _, arg = source.partition(":")
    return Path("runs") / "sweeps" / "-".join(filter(None, [Path(path).stem, arg.replace(",", "-").replace("=", "")]))


def plan_lines(plan, store) -> list[str]:
    """The dry-run plan: per stage what happens (run / skip / retry / running elsewhere) and who shares it."""
    from mvlm_jax.sweep.state import DONE, FAILED, RUNNING

    lines, counts, estimate = [], {}, 0.0
    for stage_id, stage in plan.stages.items():
        status = store.status(stage_id)
        action = {DONE: "skip (done)", FAILED: "retry (failed before)", RUNNING: "wait (running elsewhere)"}.get(status, "run")
        counts[action] = counts.get(action, 0) + 1
        shared = f"shared by {len(stage.trials)} trials: {', '.join(stage.trials)}" if len(stage.trials) > 1 else \
            f"trial {stage.trials[0]}"
        detail = ""
        if stage.kind == "train":
            train, data = stage.config["train"], stage.config["data"]
            tokens = train["total_steps"] * train["batch_size"] * data["seq_len"]
            detail = f"{train['total_steps']} steps x {train['batch_size']} x {data['seq_len']} = {tokens:,} row tokens"
            if action != "skip (done)":
                estimate += tokens / DEMO_TOKENS_PER_S
        lines.append(f"  {action:<24} {stage_id:<20} {shared}{'; ' + detail if detail else ''}")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return [f"plan: {len(plan.stages)} unique stages for {len(plan.trials)} trials ({summary})", *lines,
            f"training time to go at {DEMO_TOKENS_PER_S:,.0f} row tokens/s (the demo stages on a 2-core CPU): "
            f"about {estimate / 60:.0f} min, plus about 1 min per trial for eval, export and edge latency"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvlm sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="FILE.py:ARG whose sweep(ARG) returns the trials")
    parser.add_argument("--workdir", help="sweep directory (default runs/sweeps/FILE-ARG)")
    parser.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit-local"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan (and with slurm, write the scripts)")
    parser.add_argument("--devices", default="", help='parallel local stages on device subsets, e.g. "0,1;2,3"')
    parser.add_argument("--lease-s", type=float, default=120.0, help="a running stage's lease, renewed while it runs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from what is there")
    parser.add_argument("--slurm-partition")
    parser.add_argument("--slurm-account")
    parser.add_argument("--slurm-time-min", type=int, default=240)
    parser.add_argument("--slurm-gpus-per-node", type=int)
    args = parser.parse_args(argv)

    from mvlm_jax.sweep.plan import load_plan, make_plan
    from mvlm_jax.sweep.report import write_report
    from mvlm_jax.sweep.spec import SweepError, load_trials
    from mvlm_jax.sweep.state import DONE, StatusStore

    workdir = Path(args.workdir or default_workdir(args.experiment)).absolute()
    store = StatusStore(workdir, args.lease_s)
    try:
        if args.report_only:
            write_report(load_plan(workdir), store)
            print(f"wrote {workdir / 'report.md'}")
            return 0
        plan = make_plan(args.experiment, load_trials(args.experiment), workdir)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(plan_lines(plan, store)))
    if args.dry_run and args.launcher == "local":
        return 0
    plan.save()
    started = time.time()
    reported = False  # the local runner rewrites the report after every stage: no final rewrite then

    def report() -> None:
        nonlocal reported
        write_report(plan, store)
        reported = True

    if args.launcher == "local":
        from mvlm_jax.sweep.local import run_local

        groups = [g.strip() for g in args.devices.split(";") if g.strip()] or [None]
        outcome = run_local(plan, store, groups, on_change=report)
        failed = sorted(s for s, o in outcome.items() if o != "done")
    else:
        from mvlm_jax.sweep.slurm import submit

        defaults = {"partition": args.slurm_partition, "account": args.slurm_account, "time_min": args.slurm_time_min,
                    "gpus_per_node": args.slurm_gpus_per_node}
        local = args.launcher == "submitit-local"
        submit(plan, store, "local" if local else "slurm", args.dry_run, defaults)
        # SLURM jobs are queued, not finished: nothing has failed yet; local jobs have all ended here
        failed = sorted(s for s in plan.stages if store.status(s) != DONE) if local and not args.dry_run else []
    if args.dry_run:  # nothing ran: no report to point to
        return 0
    if not reported:
        write_report(plan, store)
    print(f"sweep {workdir}: {time.time() - started:.0f} s; report {workdir / 'report.md'}"
          + (f"; not done: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
