"""The stages as configuration: pretrain -> SFT (init_from) -> VLM stage 1 / LoRA on the embedded data,
started the way users start them; configuration errors and non-finite losses stop a run clearly."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from console_checks import ABSL_INFO, assert_quiet, assert_user_error
from mvlm_jax.checkpoint import load_model
from mvlm_jax.train.entry import train
from mvlm_jax.train.experiment import parse
from mvlm_jax.train.loop import TrainingError
from mvlm_jax.train.run import validate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import pretrain as pretrain_experiment  # noqa: E402


def run(experiment, workdir, data_root, *overrides):
    done = subprocess.run([sys.executable, "-m", "mvlm_jax.train", "--config", f"{ROOT / 'experiments' / experiment}",
                           "--workdir", str(workdir), f"--config.data.embedded.root={data_root}", *overrides],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    if "--verbose" in overrides:  # the libraries' INFO logs (orbax saving checkpoints) only when asked for
        assert any("checkpoint" in line for line in ABSL_INFO.findall(done.stderr)), done.stderr[-3000:]
    else:
        assert_quiet(done.stdout + done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    # No validation in these stages (test_train_eval covers it, the demo test for the VLM stages): each
    # val_loss at the last step compiles one more program.
    run("pretrain.py:tiny", root / "pretrain", root / "data", "--config.train.total_steps=4", "--config.eval.every=0")
    run("sft.py:tiny", root / "sft", root / "data", "--config.train.total_steps=3", "--config.eval.every=0",
        f"--config.init_from=('={root / 'pretrain' / 'model'}',)")
    return root


def test_vlm_stage1_trains_only_the_projector_from_the_sft_llm(sft_model):
    root = sft_model
    out = run("vlm.py:size=tiny,stage=1", root / "vlm1", root / "data", "--config.train.total_steps=3",
              "--config.eval.every=0", f"--config.init_from=('llm={root / 'sft' / 'model'}',)")
    assert f"initialised llm from {root / 'sft' / 'model'}" in out
    vlm, vlm_config = load_model(root / "vlm1" / "model")
    projector = sum(x.size for x in jax.tree.leaves(vlm["projector"]))
    total = sum(x.size for x in jax.tree.leaves(vlm))
    assert f"trainable {projector:,} of {total:,} parameters" in out
    sft, _ = load_model(root / "sft" / "model")
    for a, b in zip(jax.tree.leaves(vlm["llm"]), jax.tree.leaves(sft)):  # frozen: exactly the SFT weights
        np.testing.assert_array_equal(a, b)


def test_lora_stage_trains_adapters_and_projector(sft_model):
    root = sft_model
    out = run("vlm.py:size=tiny,stage=lora", root / "lora", root / "data", "--config.train.total_steps=2",
              "--config.eval.every=0", f"--config.init_from=('llm={root / 'sft' / 'model'}',)")
    params, config = load_model(root / "lora" / "model")
    assert config.llm.lora is not None and config.llm.lora.rank == 8
    adapters = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params["llm"])
                   if "lora_" in jax.tree_util.keystr(path))
    projector = sum(x.size for x in jax.tree.leaves(params["projector"]))
    assert f"trainable {adapters + projector:,} of" in out
    sft, _ = load_model(root / "sft" / "model")
    frozen_kernel = params["llm"]["layers"]["attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(frozen_kernel, sft["layers"]["attn"]["q_proj"]["kernel"])  # base stays frozen
    # A LoRA model (adapters included) continues as init_from of the next run.
    run("vlm.py:size=tiny,stage=lora", root / "lora2", root / "data", "--config.train.total_steps=1",
        "--config.eval.every=0", "--verbose", f"--config.init_from=('={root / 'lora' / 'model'}',)")


def test_init_from_a_mismatched_checkpoint_is_refused(sft_model, tmp_path):
    config = pretrain_experiment.get_config("tiny")
    with config.unlocked():
        config.model.llm_overrides = {"num_layers": 3}
        config.init_from = (f"={sft_model / 'sft' / 'model'}",)
        config.data.shards = (str(sft_model / "data" / "shards512"),)
    config.eval.every = 0  # data paths set by hand, not from data.embedded.root: no held-out split here
    with pytest.raises(ValueError, match="do not fit config.model"):
        train(config, str(tmp_path / "run"))


def test_configuration_errors_before_anything_compiles(tmp_path):
    config = pretrain_experiment.get_config("tiny")
    with config.unlocked():
        config.mesh.data = 3
    with pytest.raises(ValueError, match="does not divide"):
        validate(parse(config), 8)
    config = pretrain_experiment.get_config("tiny")
    config.train.batch_size = 4
    with config.unlocked():
        config.mesh.update(data=8)
    with pytest.raises(ValueError, match="micro-batch 4 does not divide"):
        validate(parse(config), 8)
    done = subprocess.run([sys.executable, "-m", "mvlm_jax.train", "--config",
                           f"{ROOT / 'experiments' / 'pretrain.py'}:tiny", "--workdir", str(tmp_path),
                           "--config.train.totl_steps=3"], capture_output=True, text=True, timeout=120)
    assert_user_error(done.returncode, done.stderr, "totl_steps")
    assert not (tmp_path / "checkpoints").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(sft_model, tmp_path):
    config = pretrain_experiment.get_config("tiny")
    with config.unlocked():
        config.data.shards = (str(sft_model / "data" / "shards512"),)
    config.eval.every = 0  # data paths set by hand, not from data.embedded.root: no held-out split here
    config.train.total_steps = 12
    config.checkpoint.every = 2
    config.optim.update(learning_rate=1e9, warmup_steps=1, grad_clip_norm=1e9)
    with pytest.raises(TrainingError, match="not finite") as failure:
        train(config, str(tmp_path / "run"))
    failed_step = int(str(failure.value).split(":")[0].split()[-1])
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < failed_step
    assert not (tmp_path / "run" / "model").exists()


def test_resuming_a_workdir_under_another_model_is_refused(sft_model, tmp_path):
    config = pretrain_experiment.get_config("tiny")
    with config.unlocked():
        config.data.shards = (str(sft_model / "data" / "shards512"),)
    config.eval.every = 0  # data paths set by hand, not from data.embedded.root: no held-out split here
    config.train.total_steps = 2
    train(config, str(tmp_path / "run"))
    with config.unlocked():
        config.model.llm_overrides = {"num_layers": 3}
    with pytest.raises(ValueError, match="another model configuration"):
        train(config, str(tmp_path / "run"))
