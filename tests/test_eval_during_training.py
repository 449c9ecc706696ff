"""Image benchmarks during training (mvlm_jax.eval.during_training): at the hook's steps the current
parameters answer the benchmark subset, the answers and scores land in WORKDIR/eval/step_N/, and the
headline scores are in that step's metrics.jsonl line; they equal `mvlm eval vlm` on the saved model."""
import json
import sys
from pathlib import Path

import pytest

from data_pipelines.embedded.prepare import prepare
from mvlm_jax.eval import cli as eval_cli, records
from mvlm_jax.train.entry import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import vlm  # noqa: E402


def test_benchmark_scores_are_logged_at_the_hook_steps(tmp_path):
    root = tmp_path / "embedded"
    paths = prepare(root, "tiny", 512, 64)
    config = vlm.get_config("size=tiny,stage=2")
    config.data.embedded.root = str(root)
    with config.unlocked():
        config.data.tokenizer = paths["tokenizer"]
        config.data.image_root = paths["images"]
        config.data.files = (paths["llava_instruct"],)
    config.train.total_steps = 3
    config.checkpoint.every = 3
    config.eval.update(every=0, benchmarks=("demo_world",), limit=3, benchmark_every=2, batch_size=4)
    workdir = tmp_path / "run"
    history = train(config, str(workdir))
    logged = {r["step"]: r for r in history}
    assert "eval/demo_world/accuracy" in logged[2] and "eval/demo_world/accuracy" in logged[3]  # every 2, and last
    assert "eval/demo_world/accuracy" not in logged[1]
    scores = json.loads((workdir / "eval" / "step_0000003" / "demo_world" / "scores.json").read_text())
    assert logged[3]["eval/demo_world/accuracy"] == scores["model"]["accuracy"]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval/demo_world/accuracy"] == scores["model"]["accuracy"]
    # the last step's parameters are the saved model: `mvlm eval vlm` on it gives the same answers
    out = tmp_path / "out"
    assert eval_cli.vlm_main(["--ckpt", str(workdir / "model"), "--benchmark", "demo_world", "--data-root", str(root),
                              "--out", str(out), "--limit", "3", "--no-blind", "--devices", "1",
                              "--batch-size", "4"]) == 0  # the hook's batch: its compiled programs serve
    during = records.read_records(workdir / "eval" / "step_0000003" / "demo_world" / "answers.jsonl")
    after = records.read_records(out / "demo_world" / "answers.jsonl")
    assert [r["metadata"]["ids"] for r in during] == [r["metadata"]["ids"] for r in after]


def test_benchmarks_without_their_files_are_refused_before_training(tmp_path):
    config = vlm.get_config("size=tiny,stage=2")
    config.eval.update(benchmarks=("pope",), data_root=str(tmp_path), benchmark_every=1)
    with pytest.raises(FileNotFoundError, match=r"pope/llava_pope_test.jsonl"):
        train(config, str(tmp_path / "run"))
