"""Sweeps on SLURM: the jobs a dry run renders (one job array per level of the stage graph, afterok on the
level before, srun over every task of a multi-node stage, only multi-process stages joining a cluster),
checked against tests/data/sweep_slurm/; and a toy sweep run through submitit's local executor.

Regenerate the expected files after a deliberate change: MVLM_UPDATE_EXPECTED=1 pytest tests/test_sweep_slurm.py
(then read the diff: it is what a cluster would be sent). They are submitit 1.5.4's sbatch scripts."""
import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

from mvlm_jax.sweep.__main__ import main as sweep_main
from mvlm_jax.sweep.plan import load_plan
from mvlm_jax.sweep.state import DONE, StatusStore

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "sweep_toy.py")
EXPECTED = ROOT / "tests" / "data" / "sweep_slurm"
STAGE_ID = re.compile(r"\b(pretrain|sft|vlm1|vlm2|eval|export|edge)-[0-9a-f]{10}\b")


def run_in_process(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sweep_main(list(argv))
    return code, out.getvalue()


def normalized(text: str, workdir: Path) -> str:
    """Paths of this machine and config hashes (which move with every experiment default) as placeholders."""
    text = text.replace(str(workdir), "SWEEP").replace(sys.executable, "PYTHON").replace(str(ROOT), "REPO")
    return STAGE_ID.sub(r"\1-KEY", text)


def test_the_dry_run_renders_one_array_per_level_with_afterok_and_srun(tmp_path):
    code, output = run_in_process(f"{TOY}:slurm", "--workdir", str(tmp_path), "--launcher", "slurm", "--dry-run",
                                  "--slurm-partition", "gpu", "--slurm-time-min", "30")
    assert code == 0, output
    dry = tmp_path / "slurm" / "dry_run"
    written = sorted(p.name for p in dry.iterdir())
    assert written == ["00-1001.sbatch", "01-1002.sbatch", "02-1003.sbatch", "commands.txt"]
    assert not (tmp_path / "stages").exists() and not list((tmp_path / "slurm").glob("*/*.pkl"))  # nothing submitted
    for name in written:
        actual = normalized((dry / name).read_text(), tmp_path)
        if os.environ.get("MVLM_UPDATE_EXPECTED"):
            (EXPECTED / name).write_text(actual)
        assert actual == (EXPECTED / name).read_text(), f"{name} differs from tests/data/sweep_slurm/{name}"
        if name.endswith(".sbatch"):
            assert normalized((dry / name).read_text(), tmp_path) in normalized(output, tmp_path)  # shown too
    # the facts the expected files hold, spelled out
    scripts = {name: (dry / name).read_text() for name in written}
    assert "#SBATCH --nodes=2" in scripts["00-1001.sbatch"] and "srun --unbuffered" in scripts["00-1001.sbatch"]
    assert "#SBATCH --array=0-1%2" in scripts["01-1002.sbatch"]  # both SFT trials in one array
    assert "#SBATCH --dependency=afterok:1001" in scripts["01-1002.sbatch"]
    assert "#SBATCH --dependency=afterok:1002" in scripts["02-1003.sbatch"]
    commands = scripts["commands.txt"].splitlines()
    assert commands[0].startswith("1001 pretrain-") and commands[0].endswith("--distributed")  # 2 nodes: one cluster
    assert [c.split()[0] for c in commands] == ["1001", "1002_0", "1002_1", "1003"]
    assert not any("--distributed" in c for c in commands[1:])  # single-process stages never join one


def test_the_local_executor_runs_the_chain_and_no_stage_joins_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    code, output = run_in_process(f"{TOY}:local", "--workdir", str(tmp_path), "--launcher", "submitit-local")
    assert code == 0, output
    plan, store = load_plan(tmp_path), StatusStore(tmp_path)
    assert [plan.stages[s].name for s in plan.stages] == ["pretrain", "sft"]
    assert all(store.status(s) == DONE for s in plan.stages)
    pretrain = next(s for s in plan.stages if s.startswith("pretrain-"))
    assert plan.stages[pretrain].resources["nodes"] == 2
    assert "--distributed" not in (plan.stage_dir(pretrain) / "stage.log").read_text()  # one local process
    assert (tmp_path / "report.md").is_file()


def test_a_job_whose_stage_another_runner_holds_waits_and_ends_as_that_stage_does(tmp_path):
    import socket
    import threading

    from mvlm_jax.sweep.plan import make_plan
    from mvlm_jax.sweep.slurm import job_entry
    from mvlm_jax.sweep.spec import load_trials

    source = f"{TOY}:local"
    plan = make_plan(source, load_trials(source), tmp_path, with_info=False)
    plan.save()
    pretrain = next(iter(plan.stages))
    store = StatusStore(tmp_path, lease_s=60)
    owner = f"{socket.gethostname()}:{os.getpid()}:other"  # a live runner of this host: this test
    assert store.claim(pretrain, owner) == "claimed"
    ended = []
    job = threading.Thread(target=lambda: ended.append(job_entry(str(tmp_path), pretrain, 60, False, 0.05)))
    job.start()
    time.sleep(0.5)
    assert job.is_alive() and not ended  # waiting, nothing run
    (plan.stage_dir(pretrain) / "run" / "model").mkdir(parents=True)
    store.finish(pretrain, owner, ok=True)
    job.join(10)
    assert ended == [DONE] and not (plan.stage_dir(pretrain) / "stage.log").exists()
