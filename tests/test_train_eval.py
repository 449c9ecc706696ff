"""Validation loss during training (mvlm_jax.train.validation) and the loop's hooks: val_loss at the right
steps in metrics.jsonl and TensorBoard, equal to a plain numpy cross-entropy over the held-out windows,
without changing the training losses, the same after a resume; hook intervals; held-out conversation
batches."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.embedded.prepare import prepare
from mvlm_jax.checkpoint import load_model
from mvlm_jax.models import build_model
from mvlm_jax.train import setup
from mvlm_jax.train.hooks import Hook
from mvlm_jax.train.entry import train
from mvlm_jax.train.experiment import model_config as parse_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import pretrain, sft, vlm  # noqa: E402
from tests.test_train_resume import tensorboard_events  # noqa: E402

# SEQ: the tiny held-out corpus (1,030 tokens) makes 14 windows, between one and two batches of 8 and no
# multiple of 8 (test_val_loss_is_the_mean_token_loss_over_the_held_out_windows)
STEPS, EVERY, SEQ = 5, 2, 72


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return root, prepare(root, "tiny", 512, 64)


def pretrain_config(data, every):
    root, paths = data
    config = pretrain.get_config("tiny")
    with config.unlocked():
        config.data.shards = (paths["shards"],)
        config.data.tokenizer = paths["tokenizer"]
    config.data.embedded.root = str(root)
    config.data.seq_len = SEQ
    config.train.total_steps = STEPS
    config.checkpoint.every = 2
    config.eval.every = every
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """An uninterrupted run with validation every 2 steps, and one without validation stopped by a hook at
    step 3 (checkpoint at 2), then resumed with validation on. The runs compile the same programs, which
    the test session's persistent compilation cache (conftest.py) compiles once."""
    base = tmp_path_factory.mktemp("runs")
    reference = train(pretrain_config(data, EVERY), str(base / "reference"))
    calls = []

    def stop(context):
        calls.append(context.step)
        raise Interrupted

    with pytest.raises(Interrupted):
        train(pretrain_config(data, 0), str(base / "resumed"), hooks=[Hook("stop", 3, stop, at_last=False)])
    before = records(base / "resumed")
    resumed = train(pretrain_config(data, EVERY), str(base / "resumed"))
    return {"base": base, "reference": reference, "resumed": resumed, "stop_calls": calls, "before": before}


def records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_val_loss_is_logged_every_n_steps_and_at_the_last(runs):
    rows = records(runs["base"] / "reference")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 5]  # every 2, and the last step
    assert all(r.keys() >= {"val_loss", "val_tokens", "loss"} for r in rows if r["step"] in (2, 4, 5))
    assert rows[1]["val_loss"] > rows[3]["val_loss"] > rows[4]["val_loss"]  # it learns the world's language
    events = [e for path in (runs["base"] / "reference" / "tensorboard").glob("events.out.tfevents.*")
              for e in tensorboard_events(path)]
    logged = {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value}
    assert sorted(step for step, tag in logged if tag == "val_loss") == [2, 4, 5]
    for row in rows:
        if "val_loss" in row:
            assert logged[(row["step"], "val_loss")] == pytest.approx(row["val_loss"], rel=1e-6)
            assert logged[(row["step"], "val_tokens")] == row["val_tokens"]


def test_val_loss_is_the_mean_token_loss_over_the_held_out_windows(runs, data):
    _, paths = data
    index = json.loads((Path(paths["shards_val"]) / "index.json").read_text())
    stream = np.concatenate([np.fromfile(Path(paths["shards_val"]) / f["name"], dtype=index["dtype"])
                             for f in index["files"]]).astype(np.int64)
    windows = np.stack([stream[i * SEQ:i * SEQ + SEQ + 1] for i in range((len(stream) - 1) // SEQ)])
    # More than one batch of 8 rows, fewer than eval.batches * batch_size: every window is held out, in
    # two batches of different target counts (a mean of batch means would differ from the token mean).
    assert 8 < len(windows) < 2 * 8
    params, model_config = load_model(runs["base"] / "reference" / "model")  # the state after the last step
    tokens = windows[:, :-1].astype(np.int32)
    segment_ids, positions = np.ones_like(tokens), np.broadcast_to(np.arange(SEQ, dtype=np.int32), tokens.shape)
    logits = np.asarray(build_model(model_config).apply({"params": params}, tokens, segment_ids, positions), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, windows[:, 1:, None], -1)[..., 0]
    last = records(runs["base"] / "reference")[-1]
    assert last["val_tokens"] == token_loss.size == len(windows) * SEQ
    assert last["val_loss"] == pytest.approx(token_loss.mean(), rel=2e-6)


def test_validation_changes_no_training_loss_and_resumes_to_the_same_val_loss(runs):
    reference = records(runs["base"] / "reference")
    assert [r["step"] for r in runs["before"]] == [1, 2]  # stopped at step 3 before it was logged
    resumed = records(runs["base"] / "resumed")
    # Steps 1-2 ran without validation, 3-5 after the resume with it: the same losses and batches, bitwise.
    assert [(r["step"], r["loss"], r["batch_hash"]) for r in resumed] == \
        [(r["step"], r["loss"], r["batch_hash"]) for r in reference]
    assert [r["step"] for r in runs["resumed"]] == [3, 4, 5]
    assert [(r["step"], r["val_loss"], r["val_tokens"]) for r in resumed if "val_loss" in r] == \
        [(r["step"], r["val_loss"], r["val_tokens"]) for r in reference if r["step"] > 2 and "val_loss" in r]


def test_a_hook_runs_at_its_interval(runs):
    assert runs["stop_calls"] == [3]
    saved = sorted(int(p.name) for p in (runs["base"] / "resumed" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2, 4, 5]
    hook = Hook("h", 3, lambda context: None)
    assert [t for t in range(1, 11) if hook.due(t, t == 10)] == [3, 6, 9, 10]
    assert [t for t in range(1, 11) if Hook("h", 3, hook.run, at_last=False).due(t, t == 10)] == [3, 6, 9]
    assert not any(Hook("off", 0, hook.run).due(t, t == 10) for t in range(1, 11))
    with pytest.raises(ValueError, match="every must be >= 0"):
        Hook("bad", -1, hook.run)


def conversation_config(experiment, arg, data):
    root, paths = data
    config = experiment.get_config(arg)
    config.data.embedded.root = str(root)
    with config.unlocked():
        config.data.tokenizer = paths["tokenizer"]
        config.data.image_root = paths["images"]
    return config


@pytest.mark.parametrize("experiment,arg,held_out", [(sft, "tiny", "sharegpt_val"),
                                                      (vlm, "size=tiny,stage=1", "llava_caption_val")])
def test_held_out_conversation_batches(experiment, arg, held_out, data, tmp_path):
    config = conversation_config(experiment, arg, data)
    model_config = parse_model(config.model)
    assert setup.held_out_sources(config, tmp_path) == ((data[1]["shards_val"],), (data[1][held_out],))
    batch_size = config.train.batch_size
    one = setup.held_out_batches(config, model_config, tmp_path, 0, 1)
    records_held_out = json.loads(Path(data[1][held_out]).read_text())
    assert 1 <= len(one) <= config.eval.batches
    # Every held-out answer token is a target once: the masks add up to the answers' target tokens, and
    # rows past the data are padding (no target, no image).
    targets = sum(float(b["loss_mask"].sum()) for b in one)
    assert targets > 0
    assert all(b["tokens"].shape == (batch_size, config.data.seq_len) for b in one)
    if "images" in one[0]:
        slots = np.concatenate([b["image_slots"] for b in one])
        assert (slots >= 0).sum() == min(len(records_held_out), len(one) * batch_size * config.data.images_per_row)
        assert one[0]["images"].shape[-3:] == (64, 64, 3)
    # The same batches every time, and two processes hold the same rows between them.
    again = setup.held_out_batches(config, model_config, tmp_path, 0, 1)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(one, again) for k in a)
    halves = [setup.held_out_batches(config, model_config, tmp_path, p, 2) for p in range(2)]
    for k, batch in enumerate(one):
        for key in batch:
            np.testing.assert_array_equal(batch[key][0::2], halves[0][k][key])
            np.testing.assert_array_equal(batch[key][1::2], halves[1][k][key])


def test_validation_without_held_out_data_is_refused(data, tmp_path):
    config = pretrain_config(data, 10)
    config.data.embedded.enabled = False
    with pytest.raises(ValueError, match="config.eval.shards"):
        setup.held_out_batches(config, parse_model(config.model), tmp_path, 0, 1)


def test_a_stage_trains_with_the_loss_its_config_chooses(runs, data, tmp_path):
    """config.loss.label_smoothing through the same trainer: step 1's loss is the label-smoothed
    cross-entropy of the initial parameters on the first batch, computed here independently (numpy, float64),
    and not the plain loss the reference run logged for that batch."""
    import jax

    from jit_init import init_params

    config = pretrain_config(data, 0)
    config.train.total_steps = 1
    config.checkpoint.every = 0
    config.loss.label_smoothing = 0.5
    (record,) = train(config, str(tmp_path / "smoothed"))
    model_config = parse_model(config.model)
    stream = setup.data_stream(config, model_config, 0, 1)
    batch = next(stream)
    stream.close()
    assert record["batch_hash"] == runs["reference"][0]["batch_hash"]  # the reference's first batch, too
    params = init_params(model_config, jax.random.key(config.train.seed))
    logits = np.asarray(build_model(model_config).apply({"params": params}, batch["tokens"], batch["segment_ids"],
                                                        batch["positions"]), np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    target = np.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0]
    token_loss = -(0.5 * target + 0.5 * log_p.mean(-1))  # targets (1 - e) * one-hot + e / vocab
    mask = batch["loss_mask"].astype(np.float64)
    expected = float((token_loss * mask).sum() / mask.sum())
    assert record["loss"] == pytest.approx(expected, rel=1e-5)
    # The plain loss of the same batch and parameters lies well outside that tolerance.
    assert abs(runs["reference"][0]["loss"] - expected) > 10 * 1e-5 * expected, (runs["reference"][0]["loss"], expected)
