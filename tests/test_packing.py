"""Packing for the paper recipes: the packers keep every sample once and within the row's limits, best_fit
wastes less than next_fit, a packed image-text batch gives the loss and gradients of the same samples
unpacked, and `train.epochs` turns the packed row count of the data into total_steps."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.conversations import ConversationData, PackedRows, prepare_examples
from data_pipelines.embedded.prepare import prepare
from data_pipelines.packing import pack_rows, packing_stats
from data_pipelines.tokenizer import Tokenizer
from experiments import vlm as vlm_experiment
from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.train import setup
from mvlm_jax.train.optimizer import schedule
from mvlm_jax.train.experiment import model_config as parse_model, parse
from mvlm_jax.train.losses import batch_forward, next_token_loss


def random_samples(count=3000, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(300), 0.7, count).astype(np.int64) + 1, 1024)
    return lengths, (rng.random(count) < 0.8).astype(np.int64), rng.permutation(count)


@pytest.mark.parametrize("packer", ["next_fit", "best_fit"])
def test_packers_keep_every_sample_once_within_the_row_limits(packer):
    lengths, has_image, order = random_samples()
    rows = pack_rows(lengths, has_image, order, 1024, 3, True, packer)
    assert sorted(np.concatenate(rows).tolist()) == list(range(len(lengths)))
    assert all(lengths[row].sum() <= 1024 and has_image[row].sum() <= 3 for row in rows)
    again = pack_rows(lengths, has_image, order, 1024, 3, True, packer)  # deterministic
    assert [r.tolist() for r in rows] == [r.tolist() for r in again]
    single = pack_rows(lengths, has_image, order, 1024, 3, False, packer)
    assert [row.tolist() for row in single] == [[int(i)] for i in order]


def test_best_fit_wastes_less_than_next_fit_and_stats_count_the_padding():
    lengths, has_image, order = random_samples()
    stats = {packer: packing_stats(pack_rows(lengths, has_image, order, 1024, 3, True, packer), lengths, has_image,
                                   1024, 3) for packer in ("next_fit", "best_fit")}
    assert stats["best_fit"].rows < stats["next_fit"].rows
    assert 1 - stats["best_fit"].real_share < 0.05 < 1 - stats["next_fit"].real_share
    best = stats["best_fit"]
    assert best.real_tokens == lengths.sum() and best.images == has_image.sum()
    assert best.real_share == pytest.approx(lengths.sum() / (best.rows * 1024))
    with pytest.raises(ValueError, match="data.packer"):
        pack_rows(lengths, has_image, order, 1024, 3, True, "first_fit")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """The tiny VLM recipe on the embedded data: (config, model config, conversation settings, examples)."""
    root = tmp_path_factory.mktemp("packing")
    paths = prepare(root, "tiny", 512, 64)
    config = vlm_experiment.get_config("size=tiny,stage=2")
    config.data.update(tokenizer=paths["tokenizer"], files=(paths["llava_instruct"],), image_root=paths["images"])
    model_config = parse_model(config.model)
    data = setup.conversation_data(config, model_config, tuple(config.data.files))
    data = dataclasses.replace(data, seq_len=1024, images_per_row=3, packer="best_fit")
    return config, model_config, data, prepare_examples(data, Tokenizer(data.tokenizer))


def stack(rows):
    return {key: jnp.asarray(np.stack([row[key] for row in rows])) for key in rows[0]}


def test_packed_image_text_batch_gives_the_loss_and_gradients_of_the_same_samples_unpacked(tiny_vlm):
    _, model_config, data, examples = tiny_vlm
    packed_rows = PackedRows(data, examples)
    row = next(r for r in range(100) if len(packed_rows.locate(r)) >= 3
               and sum(examples.images[i] is not None for i in packed_rows.locate(r)) >= 2)
    members = packed_rows.locate(row)
    packed = stack([packed_rows[row]])
    assert packed["segment_ids"].max() == len(members) and int((packed["image_slots"] >= 0).sum()) >= 2

    single_rows = PackedRows(dataclasses.replace(data, pack=False, images_per_row=1), examples)
    position = {int(single_rows.locate(r)[0]): r for r in range(len(examples))}
    unpacked = stack([single_rows[position[int(i)]] for i in members])

    model, params = build_model(model_config), init_params(model_config, jax.random.key(0))
    loss_sum = next_token_loss(batch_forward(model, model_config))

    def mean_loss(params, batch):
        total, count = loss_sum(params, batch, jax.random.key(0))
        return total / count

    grad_fn = jax.jit(jax.value_and_grad(mean_loss))
    (loss_packed, grads_packed), (loss_unpacked, grads_unpacked) = grad_fn(params, packed), grad_fn(params, unpacked)
    # float32 sums over different row layouts: equal to rounding
    assert float(loss_packed) == pytest.approx(float(loss_unpacked), abs=1e-5)
    for a, b in zip(jax.tree.leaves(grads_packed), jax.tree.leaves(grads_unpacked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)



def test_epochs_set_total_steps_from_the_packed_rows_and_a_changed_dataset_is_refused(tiny_vlm, tmp_path, capsys):
    config, model_config, _, _ = tiny_vlm
    config = config.copy_and_resolve_references()
    config.data.update(seq_len=1024, images_per_row=3, packer="best_fit")
    config.train.update(epochs=2, total_steps=1, batch_size=4)
    config.optim.update(warmup_ratio=0.1)
    examples = setup.epoch_plan(config, model_config, tmp_path)
    data = setup.conversation_data(config, model_config, tuple(config.data.files))
    rows = PackedRows(data, examples)
    first, both = len(pack_rows(rows.lengths, rows.has_image, np.random.default_rng([data.seed, 0]).permutation(len(examples)),
                                1024, 3, True, "best_fit")), rows.epoch_rows(2)
    assert first < both < len(examples) * 2 and both - first == rows.epoch_rows(2) - rows.epoch_rows(1)
    assert config.train.total_steps == both // 4
    plan = json.loads((tmp_path / "epoch_plan.json").read_text())
    assert plan["total_steps"] == both // 4 and plan["rows"] == both
    assert 0 < plan["epoch_0"]["real_share"] <= 1
    assert "epoch plan: 2 epoch(s)" in capsys.readouterr().out
    optim = parse(config, model_config).optim  # the warmup follows the counted steps
    lr = schedule(optim)
    warmup = int(np.ceil(0.1 * config.train.total_steps))
    assert float(lr(warmup)) == pytest.approx(config.optim.learning_rate)
    assert float(lr(warmup - 1)) < config.optim.learning_rate

    config.data.images_per_row = 1  # the run's data now packs differently: its schedule would change under it
    with pytest.raises(ValueError, match="epoch_plan.json"):
        setup.epoch_plan(config, model_config, tmp_path)
    config.data.kind = "pretrain"
    with pytest.raises(ValueError, match="train.epochs"):
        setup.epoch_plan(config, model_config, tmp_path / "other")
