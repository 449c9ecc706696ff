"""Sweeps: a toy sweep of three tiny trials sharing their pretraining stage, run by the local runner,
killed mid-stage and resumed; bad input refused before anything runs; the demo-scale Table 9 trials."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvlm_jax.sweep.plan import load_plan, make_plan
from mvlm_jax.sweep.spec import SweepError, load_trials
from mvlm_jax.sweep.state import DONE, FAILED, RUNNING, StatusStore

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "sweep_toy.py")


def sweep_command(workdir, *extra):
    return [sys.executable, "-m", "mvlm_jax.sweep", f"{TOY}:{extra[0] if extra else ''}".rstrip(":"),
            "--workdir", str(workdir), "--lease-s", "30", *extra[1:]]


def test_the_toy_sweep_shares_its_prefix_resumes_after_a_kill_and_reports(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    dry = subprocess.run(sweep_command(tmp_path) + ["--dry-run"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    assert "plan: 4 unique stages for 3 trials" in dry.stdout and "shared by 3 trials: a, b, broken" in dry.stdout
    assert not (tmp_path / "stages").exists()  # a dry run runs nothing

    runner = subprocess.Popen(sweep_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              cwd=ROOT, start_new_session=True)
    plan = load_plan_when_written(tmp_path)
    store = StatusStore(tmp_path)
    pretrain = next(s for s in plan.stages if s.startswith("pretrain-"))
    sfts = [s for s in plan.stages if s.startswith("sft-")]
    deadline = time.time() + 120
    while not any(store.read(s)["status"] == RUNNING for s in sfts) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and its trainer, mid-stage
    runner.wait()
    first_pretrain = store.read(pretrain)
    assert first_pretrain["status"] == DONE
    metrics = (tmp_path / "stages" / pretrain / "run" / "metrics.jsonl").read_text()

    again = subprocess.run(sweep_command(tmp_path), capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert again.returncode == 1, again.stdout[-3000:]  # the broken trial failed
    assert store.read(pretrain) == first_pretrain  # trained once, never again
    assert (tmp_path / "stages" / pretrain / "run" / "metrics.jsonl").read_text() == metrics
    trials = json.loads((tmp_path / "plan.json").read_text())["trials"]
    assert len({t["stages"]["pretrain"] for t in trials.values()}) == 1
    statuses = {name: store.read(t["stages"]["sft"])["status"] for name, t in trials.items()}
    assert statuses == {"a": DONE, "b": DONE, "broken": FAILED}

    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["trial"]: r for r in results["trials"]}
    assert list(rows) == ["a", "b", "broken"] and rows["a"]["baseline"] and rows["a"]["overrides"] == {}
    assert rows["b"]["overrides"] == {"sft:optim.learning_rate": 3e-3}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["stages"]["sft"]["log"].endswith("stage.log")
    assert rows["a"]["trained_tokens"] > 0 and rows["a"]["parameters"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "**a** (baseline)" in report and "## Failed stages" in report and "do not fit" not in report
    assert "do not fit config.model" in Path(rows["broken"]["stages"]["sft"]["log"]).read_text()
    for name in results["figures"].values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"

    third = subprocess.run(sweep_command(tmp_path) + ["--dry-run"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "skip (done)" in third.stdout and "retry (failed before)" in third.stdout


def load_plan_when_written(workdir, timeout=60):
    deadline = time.time() + timeout
    while not (workdir / "plan.json").is_file():
        assert time.time() < deadline, "no plan.json"
        time.sleep(0.05)
    return load_plan(workdir)


@pytest.mark.parametrize("arg, words", [("bad_key", ["'typo'", "'sft'", "optim.learning_rat"]),
                                        ("bad_value", ["'words'", "train.total_steps", "'many'"])])
def test_bad_overrides_name_the_trial_and_key_before_anything_runs(tmp_path, arg, words):
    with pytest.raises(SweepError) as error:
        make_plan(f"{TOY}:{arg}", load_trials(f"{TOY}:{arg}"), tmp_path, with_info=False)
    for word in words:
        assert word in str(error.value)
    assert not any(tmp_path.iterdir())


def test_a_lease_held_by_a_live_runner_blocks_and_an_expired_one_does_not(tmp_path):
    first, second = StatusStore(tmp_path, lease_s=0.3), StatusStore(tmp_path, lease_s=0.3)
    assert first.claim("s", "otherhost:1:a") == "claimed"
    assert second.claim("s", "otherhost:2:b") == "busy"
    time.sleep(0.4)
    assert second.claim("s", "otherhost:2:b") == "claimed"
    assert not first.renew("s", "otherhost:1:a")  # taken over: the first runner stops its command
    second.finish("s", "otherhost:2:b", ok=True)
    assert first.claim("s", "otherhost:1:a") == "done"


def test_demo_table9_trials_build_the_five_projector_designs(tmp_path):
    source = str(ROOT / "experiments" / "ablations" / "projectors.py") + ":demo"
    plan = make_plan(source, load_trials(source), tmp_path)
    info = {name: t["info"] for name, t in plan.trials.items()}
    assert {n: i["visual_tokens"] for n, i in info.items()} == {
        "mlp": 576, "no_front_pw": 144, "ldp": 144, "3_blocks": 144, "downsample_first": 144}
    projector = {n: i["parameters_by_part"]["projector"] for n, i in info.items()}
    # demo tower width 64 -> LLM width 128; PW = Linear, DW = 3x3 depthwise conv (+ its block's PW, norms)
    assert projector["mlp"] == 64 * 128 + 128 + 128 * 128 + 128
    assert projector["no_front_pw"] < projector["ldp"] < projector["3_blocks"]
    assert projector["downsample_first"] == projector["ldp"]  # the same layers in another order
    assert len({i["parameters_by_part"]["llm"] for i in info.values()}) == 1
    assert len([s for s in plan.stages if s.startswith(("pretrain-", "sft-"))]) == 2  # shared by all five
