"""Sweeps: a toy sweep of three one-step trials sharing their pretraining stage, run by the local runner,
killed mid-stage and resumed (one sweep, shared by the tests of this module); bad input refused before
anything runs; leases; the demo-scale Table 9 trials."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvlm_jax.sweep.__main__ import main as sweep_main
from mvlm_jax.sweep.plan import load_plan, make_plan
from mvlm_jax.sweep.spec import SweepError, load_trials
from mvlm_jax.sweep.state import DONE, FAILED, RUNNING, StatusStore

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "sweep_toy.py")


def run_in_process(*argv: str) -> tuple[int, str]:
    """`mvlm sweep` in this process (no second JAX start-up); its stages still run as subprocesses."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sweep_main(list(argv))
    return code, out.getvalue()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Dry run; a runner killed (with its trainer) while the first SFT stage runs; the same command again;
    a dry run after. Everything the tests below check, from one sweep (each stage costs a JAX start-up)."""
    workdir = tmp_path_factory.mktemp("toy")
    args = [TOY, "--workdir", str(workdir), "--lease-s", "30"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_PLATFORMS", "cpu")  # the stages' subprocesses inherit it
        dry_code, dry = run_in_process(*args, "--dry-run")
        assert not (workdir / "stages").exists()  # a dry run runs nothing
        runner = subprocess.Popen([sys.executable, "-m", "mvlm_jax.sweep", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=ROOT, start_new_session=True)
        try:
            wait_for(lambda: (workdir / "plan.json").is_file(), 60, "plan.json")
            plan, store = load_plan(workdir), StatusStore(workdir)
            ids = {name: t["stages"] for name, t in plan.trials.items()}
            killed = ids["a"]["sft"]  # the plan runs it right after the shared pretraining
            log = plan.stage_dir(killed) / "stage.log"
            wait_for(lambda: store.read(killed)["status"] == RUNNING and log.is_file() and "====" in log.read_text(),
                     120, f"{killed} to start")
            time.sleep(0.5)  # the trainer is starting up: mid-stage
        finally:
            os.killpg(runner.pid, signal.SIGKILL)  # the runner and its trainer
            runner.wait()
        before = {stage: store.read(stage) for stage in plan.stages}
        pretrain_metrics = (plan.stage_dir(ids["a"]["pretrain"]) / "run" / "metrics.jsonl").read_text()
        code, output = run_in_process(*args, "--devices", "0;1")  # both SFT stages at once, as on 2 GPUs
        after_code, after = run_in_process(*args, "--dry-run")
    return {"workdir": workdir, "plan": plan, "store": store, "ids": ids, "killed": killed, "dry": (dry_code, dry),
            "before": before, "pretrain_metrics": pretrain_metrics, "resumed": (code, output),
            "dry_after": (after_code, after)}


def test_the_dry_run_shows_the_shared_prefix(toy):
    code, dry = toy["dry"]
    assert code == 0
    assert "plan: 4 unique stages for 3 trials" in dry and "shared by 3 trials: a, lr, broken" in dry


def test_the_prefix_is_trained_once_and_not_again_after_the_kill(toy):
    ids, store = toy["ids"], toy["store"]
    pretrain = ids["a"]["pretrain"]
    assert ids["broken"]["pretrain"] == ids["lr"]["pretrain"] == pretrain  # one stage for the three trials
    assert toy["before"][pretrain]["status"] == DONE and toy["before"][toy["killed"]]["status"] == RUNNING
    assert store.read(pretrain) == toy["before"][pretrain]  # trained once, never again
    metrics = toy["workdir"] / "stages" / pretrain / "run" / "metrics.jsonl"
    assert metrics.read_text() == toy["pretrain_metrics"]
    assert "skip (done)" in toy["dry_after"][1] and "retry (failed before)" in toy["dry_after"][1]


def test_the_killed_stage_is_taken_over_and_finishes_and_the_broken_one_fails_alone(toy):
    ids, store = toy["ids"], toy["store"]
    code, output = toy["resumed"]
    assert code == 1, output  # the broken trial failed
    killed = store.read(toy["killed"])
    assert killed["status"] == DONE and killed["attempts"] == 2 and killed["previous"] == RUNNING
    broken = store.read(ids["broken"]["sft"])
    assert broken["status"] == FAILED and broken["log"].endswith("stage.log")
    assert "do not fit config.model" in Path(broken["log"]).read_text()
    assert f"not done: {ids['broken']['sft']}" in output


def test_the_report_has_a_row_per_trial_the_failed_log_and_figures(toy):
    workdir, ids = toy["workdir"], toy["ids"]
    results = json.loads((workdir / "results.json").read_text())
    rows = {r["trial"]: r for r in results["trials"]}
    assert list(rows) == ["a", "lr", "broken"] and rows["a"]["baseline"] and rows["a"]["overrides"] == {}
    assert rows["lr"]["status"] == "done" and rows["lr"]["overrides"] == {"sft:optim.learning_rate": 3e-3}
    assert rows["a"]["status"] == "done" and rows["a"]["trained_tokens"] > 0 and rows["a"]["parameters"] > 0
    assert rows["broken"]["overrides"] == {"sft:model.llm_overrides": {"num_layers": 3}}
    failed = rows["broken"]["stages"]["sft"]
    assert rows["broken"]["status"] == "failed" and failed["log"] == str(workdir / "stages" / ids["broken"]["sft"]
                                                                          / "stage.log")
    report = (workdir / "report.md").read_text()
    assert "**a** (baseline)" in report and "## Failed stages" in report and failed["log"] in report
    assert "Snapdragon 888" in report  # the edge-speed model's calibration table
    for name in results["figures"].values():
        assert (workdir / name).read_bytes()[:4] == b"\x89PNG"


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


@pytest.mark.parametrize("arg, rows", [("demo", 3), ("size=1.4b,alpaca=data/alpaca.json", 5)])
def test_table10_trials_pair_each_template_with_its_paper_row(tmp_path, arg, rows):
    from mvlm_jax.sweep.paper_tables import paper_row

    source = str(ROOT / "experiments" / "ablations" / "sft_paradigm.py") + ":" + arg
    plan = make_plan(source, load_trials(source), tmp_path, with_info=False)
    assert len(plan.trials) == rows
    for name, planned in plan.trials.items():
        template = "llava_llama_2" if name.endswith("llava_llama_2") else "vicuna_v1"
        assert planned["paper"][1].endswith(template) and paper_row(planned["paper"]) is not None
        stages = {stage: plan.stages[i] for stage, i in planned["stages"].items()}
        assert stages["vlm2"].config["data"]["template"] == template
        assert stages["vlm1"].config["data"]["template"] == "plain"
        assert stages["eval"].config.get("template", "vicuna_v1") == template
    # a template pair shares everything before VLM stage 2 and nothing after it
    base, llama_2 = plan.trials["base"]["stages"], plan.trials["base-llava_llama_2"]["stages"]
    assert base["vlm1"] == llama_2["vlm1"] and base["vlm2"] != llama_2["vlm2"] and base["eval"] != llama_2["eval"]
    assert paper_row(plan.trials["base-llava_llama_2"]["paper"])["MME-P"] == 1111.5
    if rows == 5:  # the Alpaca SFT is trained here, once for both templates, and is not the ShareGPT chain
        alpaca, sharegpt = plan.trials["alpaca"]["stages"], plan.trials["sharegpt"]["stages"]
        assert alpaca["sft"] == plan.trials["alpaca-llava_llama_2"]["stages"]["sft"] and "sft" not in sharegpt
        assert plan.stages[alpaca["sft"]].config["data"]["files"] == ["data/alpaca.json"]
        assert alpaca["vlm1"] != sharegpt["vlm1"]


def test_eval_template_setting_is_checked_and_only_present_when_given():
    from mvlm_jax.sweep.tasks import resolve_settings

    assert "template" not in resolve_settings("eval", {}, "trial 't', stage 'eval'")  # keys of old stages stay
    assert resolve_settings("eval", {"template": "llava_llama_2"}, "x")["template"] == "llava_llama_2"
    with pytest.raises(SweepError, match="trial 't', stage 'eval': template 'llama_2'"):
        resolve_settings("eval", {"template": "llama_2"}, "trial 't', stage 'eval'")

