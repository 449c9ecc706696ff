"""Vision pretraining by classification (experiments/vision.py): the classifier's head and loss against
numpy, the image-label stream (order, resume, bad input), and the stage chain: a classifier trained by the
one trainer hands its tower and projector to a VLM stage through init_from."""
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from data_pipelines.embedded import world
from data_pipelines.embedded.prepare import prepare
from data_pipelines.errors import BadInput, MissingInput
from data_pipelines.image_labels import (ImageLabelData, LabelledImages, build_image_label_dataset, held_out_rows,
                                         read_examples)
from mvlm_jax.checkpoint import load_model
from mvlm_jax.models import build_model
from mvlm_jax.train.entry import train
from mvlm_jax.train.experiment import model_config
from mvlm_jax.train.losses import label_loss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import vision, vlm  # noqa: E402
from jit_init import init_params  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return root, prepare(root, "tiny", 512, 64)


def classifier_config(head="map", **classifier):
    config = vision.get_config("tiny")
    config.model.classifier.update(head=head, **classifier)
    return model_config(config.model, tuple(config.data.classes))


def reference_logits(params, features):
    """numpy float64: attention pooling with one learned query (or one per cell: the "cells" head's probes
    [cells, w]) over `features` [b, n, w], LayerNorm, logits [b, classes] (or [b, cells, classes])."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    pool, heads = p["pool"], 4
    dense = lambda x, layer: x @ layer["kernel"] + layer["bias"]  # noqa: E731
    b, n, w = features.shape
    q = dense(np.atleast_2d(pool["probe"]), pool["query"]).reshape(-1, heads, w // heads)
    k = dense(features, pool["key"]).reshape(b, n, heads, w // heads)
    v = dense(features, pool["value"]).reshape(b, n, heads, w // heads)
    scores = np.einsum("qhd,bnhd->bqhn", q, k) / np.sqrt(w // heads)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    pooled = dense(np.einsum("bqhn,bnhd->bqhd", weights, v).reshape(b, len(q), w), pool["out"])
    mean, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
    normed = (pooled - mean) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
    logits = dense(normed, p["classes"])
    return logits if pool["probe"].ndim == 2 else logits[:, 0]


def projector_features(config, params, images):
    """float64 [b, tokens, width]: the tower and projector of a classifier, applied on their own."""
    from mvlm_jax.models.projectors import Projector

    return np.asarray(jax.jit(lambda p, x: Projector(config.projector, config.embed_dim).apply(
        {"params": p["projector"]}, build_model(config.vision).apply({"params": p["vision"]}, x)))(params, images),
        np.float64)


def sigmoid_cross_entropy(x, labels):
    return np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x)))  # numerically stable


def test_attention_pool_head_position_read_out_and_loss_match_numpy():
    """The MAP head's logits, the position objective's read-out (position_weight: LayerNorm + linear on every
    projector token -> its row and column logits) and the loss: the mean sigmoid cross-entropy per class and
    image plus the weight times the rows' and columns' mean softmax cross-entropy (numpy, float64), here
    on a grid of 2 x 2 cells over the 4 x 4 projector tokens of the tiny tower."""
    config = classifier_config(position_weight=0.3, position_cells=2)
    model = build_model(config)
    params = init_params(config, jax.random.key(0))
    assert {"position_norm", "position"} <= set(params)
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)  # bias != 0
    images = jax.random.normal(jax.random.key(2), (3, config.vision.image_size, config.vision.image_size, 3))
    logits, positions = jax.jit(model.apply)({"params": params}, images)  # jit: one compile, not one per op
    side, tokens, cells = config.token_grid, config.num_output_tokens, 2
    assert (side, cells) == (4, config.position_grid)
    assert logits.shape == (3, len(world.CLASSES)) and positions.shape == (3, tokens, 2 * cells)
    features = projector_features(config, params, images)
    np.testing.assert_allclose(np.asarray(logits), reference_logits(params, features), atol=1e-4)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    normed = ((features - features.mean(-1, keepdims=True)) / np.sqrt(features.var(-1, keepdims=True) + 1e-5)
              * p["position_norm"]["scale"] + p["position_norm"]["bias"])
    expected_positions = normed @ p["position"]["kernel"] + p["position"]["bias"]
    np.testing.assert_allclose(np.asarray(positions), expected_positions, atol=1e-4)

    labels = (np.arange(3 * logits.shape[1]).reshape(logits.shape) % 3 == 0).astype(np.float32)
    weights = np.array([1.0, 0.0, 1.0], np.float32)  # the middle row pads a held-out batch: not counted
    batch = {"images": images, "labels": labels, "weights": weights}
    forward = lambda q, b, rng: model.apply({"params": q}, b["images"])  # noqa: E731
    x = np.asarray(logits, np.float64)
    sigmoid_ce = sigmoid_cross_entropy(x, labels)

    def softmax_ce(z, target):  # z [b, n, k], target [n]
        z = z - z.max(-1, keepdims=True)
        picked = np.take_along_axis(z, np.broadcast_to(target, z.shape[:2])[..., None], -1)[..., 0]
        return np.log(np.exp(z).sum(-1)) - picked

    row, col = np.divmod(np.arange(tokens), side)
    rows_cols = (softmax_ce(expected_positions[..., :cells], row // 2)
                 + softmax_ce(expected_positions[..., cells:], col // 2))
    total, count = jax.jit(label_loss(forward, position_weight=0.3))(params, batch, jax.random.key(0))
    assert count == 2 * labels.shape[1]
    np.testing.assert_allclose(float(total) / float(count),
                               sigmoid_ce[[0, 2]].mean() + 0.3 * rows_cols[[0, 2]].mean(), rtol=1e-5)


def test_cells_head_pools_one_query_per_cell_and_its_loss_matches_numpy():
    """head="cells": one learned query per cell of a 2 x 2 grid, each pooling every projector token (numpy
    float64 reference); the loss is the mean sigmoid cross-entropy per cell and class on the rows of weight 1."""
    config = classifier_config(head="cells", head_cells=2)
    model = build_model(config)
    params = init_params(config, jax.random.key(0))
    assert params["pool"]["probe"].shape == (4, config.embed_dim)
    assert (config.label_key, config.label_rows) == ("cell_labels", 4)  # the batch key the trainer's loss reads
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    images = jax.random.normal(jax.random.key(2), (3, config.vision.image_size, config.vision.image_size, 3))
    logits = np.asarray(jax.jit(model.apply)({"params": params}, images), np.float64)
    assert logits.shape == (3, 4, len(world.CLASSES))
    np.testing.assert_allclose(logits, reference_logits(params, projector_features(config, params, images)),
                               atol=1e-4)
    labels = (np.arange(logits.size).reshape(logits.shape) % 5 == 0).astype(np.float32)
    batch = {"images": images, "cell_labels": labels, "weights": np.array([1.0, 1.0, 0.0], np.float32)}
    forward = lambda q, b, rng: model.apply({"params": q}, b["images"])  # noqa: E731
    total, count = jax.jit(label_loss(forward, "cell_labels"))(params, batch, jax.random.key(0))
    assert count == 2 * 4 * labels.shape[-1]
    np.testing.assert_allclose(float(total) / float(count), sigmoid_cross_entropy(logits, labels)[:2].mean(),
                               rtol=1e-5)


def test_labels_name_the_scene(data):
    _, paths = data
    scenes = {s["id"]: s for s in json.loads((Path(paths["world"]) / "scenes_train.json").read_text())}
    records = json.loads(Path(paths["labels"]).read_text())
    assert len(records) == len(scenes)
    for record in records:
        objects = scenes[record["id"]]["objects"]
        expected = [{o["shape"], f"{o['color']} {o['shape']}", o["size"]} for o in objects]
        assert set(record["labels"]) == set().union(*expected) and set(record["labels"]) <= set(world.CLASSES)
        # one region per object: its box is its centre +- its radius, its labels its own classes
        assert len(record["regions"]) == len(objects)
        for region, o, names in zip(record["regions"], objects, expected):
            (cx, cy), r = o["center"], o["radius"]
            np.testing.assert_allclose(region["box"], [cx - r, cy - r, cx + r, cy + r], atol=0.02)
            assert set(region["labels"]) == names


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("size", [(90, 60), (60, 90), (70, 70)])
def test_boxes_follow_the_image_into_its_square(pad, size):
    """A box drawn into a non-square image lands where square_pixels puts its pixels (pad or crop), to
    within a pixel of the 64-pixel output."""
    from PIL import Image, ImageDraw

    from data_pipelines.images import square_box, square_pixels

    box = (30, 20, 50, 45)  # inside the centred square of every size above
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    lit = np.argwhere(square_pixels(image, 64, pad).mean(-1) > 127)  # (row, col) of the box's pixels
    x0, y0, x1, y1 = 64 * np.asarray(square_box(box, *size, pad))
    assert abs(lit[:, 1].min() - x0) <= 1 and abs(lit[:, 1].max() + 1 - x1) <= 1
    assert abs(lit[:, 0].min() - y0) <= 1 and abs(lit[:, 0].max() + 1 - y1) <= 1


def test_token_targets_are_the_labels_of_the_boxes_over_each_token_centre():
    from data_pipelines.image_labels import token_targets

    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 1.0, 0.6]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    targets = token_targets(boxes, labels, 4).reshape(4, 4, 3)  # cell centres 0.125, 0.375, 0.625, 0.875
    np.testing.assert_array_equal(targets[0, 0], [1, 0, 1])  # first box only
    np.testing.assert_array_equal(targets[1, 1], [1, 1, 1])  # (0.375, 0.375): both boxes
    np.testing.assert_array_equal(targets[1, 3], [0, 1, 1])  # second box only
    np.testing.assert_array_equal(targets[3, 3], [0, 0, 0])  # background
    np.testing.assert_array_equal(targets[2, 0], [0, 0, 0])  # y 0.625 is below the second box's 0.6
    assert token_targets(np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32), 4).shape == (16, 3)


def test_cell_targets_are_the_labels_of_the_boxes_centred_in_each_cell(data):
    from data_pipelines.image_labels import cell_targets

    boxes = np.array([[0.0, 0.0, 0.6, 0.6], [0.3, 0.5, 1.0, 0.9], [0.7, 0.6, 0.9, 0.8]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], np.float32)
    targets = cell_targets(boxes, labels, 2).reshape(2, 2, 3)  # centres (0.3, 0.3), (0.65, 0.7), (0.8, 0.7)
    np.testing.assert_array_equal(targets[0, 0], [1, 0, 1])  # the first box only: it reaches cell (0, 1) too
    np.testing.assert_array_equal(targets[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(targets[1, 1], [1, 1, 1])  # the two boxes centred there
    np.testing.assert_array_equal(targets[1, 0], [0, 0, 0])
    assert cell_targets(np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32), 3).shape == (9, 3)
    # The stream's cell labels: in the embedded world every object sits in its own cell of the 2 x 2 grid,
    # so the cells hold disjoint objects whose labels together are the image's.
    _, paths = data
    rows = held_out_rows(stream_config(paths, cell_grid=2))
    for i in range(8):
        row = rows[i]
        assert row["cell_labels"].shape == (4, len(world.CLASSES))
        np.testing.assert_array_equal(row["cell_labels"].max(0), row["labels"])
        assert set(row["cell_labels"].sum(1).tolist()) <= {0.0, 3.0}  # shape, colour-shape pair, size; or empty


def stream_config(paths, **changes):
    settings = dict(files=(paths["labels"],), classes=world.CLASSES, image_size=64, batch_size=4,
                    image_root=paths["images"])
    return ImageLabelData(**{**settings, **changes})


def test_the_stream_reshuffles_each_epoch_and_resumes_at_its_batch(data):
    _, paths = data
    config = stream_config(paths)
    labels = read_examples(config).labels
    n = len(labels)
    stream = build_image_label_dataset(config)
    first = [next(stream) for _ in range(3)]
    assert first[0]["images"].shape == (4, 64, 64, 3) and first[0]["labels"].shape == (4, len(world.CLASSES))
    assert (first[0]["weights"] == 1).all()
    state = stream.get_state()
    rest = [next(stream) for _ in range(2)]
    resumed = build_image_label_dataset(config)
    resumed.set_state(state)
    for expected in rest:
        got = next(resumed)
        np.testing.assert_array_equal(got["images"], expected["images"])
        np.testing.assert_array_equal(got["labels"], expected["labels"])
    source = LabelledImages(config, read_examples(config))
    orders = [[int(np.flatnonzero(np.all(labels == source[epoch * n + i]["labels"], axis=1))[0]) for i in range(8)]
              for epoch in (0, 1)]
    assert orders[0] != orders[1]  # the second epoch is another permutation
    first_labels = np.concatenate([batch["labels"] for batch in first])
    np.testing.assert_array_equal(first_labels, np.stack([source[i]["labels"] for i in range(12)]))


def test_bad_records_are_named(data, tmp_path):
    _, paths = data
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps([{"image": "train/000000.png", "labels": ["red circle"]},
                               {"image": "train/000001.png", "labels": ["mauve blob"]}], indent=1))
    with pytest.raises(BadInput, match=r"labels\.json:8: labels \['mauve blob'\]"):
        read_examples(stream_config(paths, files=(str(bad),)))
    bad.write_text(json.dumps([{"image": "train/nope.png", "labels": []}]))
    with pytest.raises(MissingInput, match=r"labels\.json:1: image .*nope\.png not found"):
        read_examples(stream_config(paths, files=(str(bad),)))
    bad.write_text('[{"image": "train/000000.png", "labels": [}]')
    with pytest.raises(BadInput, match=r"labels\.json:1"):
        read_examples(stream_config(paths, files=(str(bad),)))
    # a token head needs each record's regions, each a box and labels
    bad.write_text(json.dumps([{"image": "train/000000.png", "labels": ["red circle"]}]))
    with pytest.raises(BadInput, match=r"labels\.json:1: a tokens or cells head needs 'regions'"):
        read_examples(stream_config(paths, files=(str(bad),), token_grid=4))
    bad.write_text(json.dumps([{"image": "train/000000.png", "labels": [],
                                "regions": [{"box": [0, 0, 4, 4], "labels": []}, {"box": [5, 5, 2, 9], "labels": []}]}]))
    with pytest.raises(BadInput, match=r"labels\.json:1: regions\[1\]"):
        read_examples(stream_config(paths, files=(str(bad),), token_grid=4))
    bad.write_text(json.dumps([{"image": "train/000000.png", "labels": [],
                                "regions": [{"box": [0, 0, 4, 4], "labels": ["mauve blob"]}]}]))
    with pytest.raises(BadInput, match=r"labels\.json:1: regions\[0\]: labels \['mauve blob'\]"):
        read_examples(stream_config(paths, files=(str(bad),), token_grid=4))


def test_a_classifier_stage_hands_its_tower_and_projector_to_a_vlm_stage(data, tmp_path):
    root, paths = data
    config = vision.get_config("tiny")
    with config.unlocked():
        config.data.files, config.data.image_root = (paths["labels"],), paths["images"]
    config.data.embedded.root = str(root)
    config.train.total_steps, config.checkpoint.every, config.eval.every = 12, 12, 12
    config.optim.warmup_steps = 2
    history = train(config, str(tmp_path / "vision"))
    assert [r["step"] for r in history] == list(range(1, 13)) and "val_loss" in history[-1]
    assert all(r["images_per_s"] > 0 and np.isfinite(r["loss"]) for r in history)
    classifier, classifier_config = load_model(tmp_path / "vision" / "model")
    # val_loss is the mean per class over the held-out images only: 12 images fill two batches of 8 with
    # 4 padding rows, which must not count.
    held_out = held_out_rows(stream_config(paths, files=(paths["labels_val"],)))
    assert len(held_out) == 12
    images = np.stack([held_out[i]["images"] for i in range(len(held_out))])
    labels = np.stack([held_out[i]["labels"] for i in range(len(held_out))])
    x = np.asarray(build_model(classifier_config).apply({"params": classifier}, images), np.float64)
    expected = np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))
    np.testing.assert_allclose(history[-1]["val_loss"], expected, rtol=1e-4)

    stage1 = vlm.get_config("size=tiny,stage=1")
    with stage1.unlocked():
        stage1.data.files, stage1.data.image_root = (paths["llava_caption"],), paths["images"]
        stage1.data.tokenizer = paths["tokenizer"]
    stage1.data.embedded.root = str(root)
    stage1.train.total_steps, stage1.checkpoint.every, stage1.eval.every = 2, 2, 0
    source = str(tmp_path / "vision" / "model")
    stage1.init_from = (f"vision={source}", f"projector={source}")
    train(stage1, str(tmp_path / "vlm1"))
    started, _ = load_model(tmp_path / "vlm1" / "model")
    # The tower is frozen in stage 1: it is the classifier's, bit for bit; the projector started there.
    for a, b in zip(jax.tree.leaves(started["vision"]), jax.tree.leaves(classifier["vision"])):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(started["projector"]) == jax.tree.structure(classifier["projector"])


def test_a_loss_that_does_not_fit_the_model_is_refused(data, tmp_path):
    root, _ = data
    config = vision.get_config("tiny")
    config.data.embedded.root = str(root)
    config.loss.kind = "cross_entropy"
    with pytest.raises(BadInput, match="sigmoid_cross_entropy"):
        train(config, str(tmp_path / "run"))


def test_a_token_head_trains_each_token_against_the_boxes_it_lies_in(data, tmp_path):
    """head="tokens": every projector token gets logits; the stage's held-out loss is the mean sigmoid
    cross-entropy per token and class against the token targets of the regions, padding rows left out."""
    root, paths = data
    config = vision.get_config("tiny")
    with config.unlocked():
        config.data.files, config.data.image_root = (paths["labels"],), paths["images"]
    config.data.embedded.root = str(root)
    config.model.classifier.head = "tokens"
    config.train.total_steps, config.checkpoint.every, config.eval.every = 4, 4, 4
    config.optim.warmup_steps = 1
    history = train(config, str(tmp_path / "tokens"))
    params, trained_config = load_model(tmp_path / "tokens" / "model")
    grid = trained_config.token_grid  # 64-pixel images, patch 14 -> 4x4 tower tokens -> 2x2 after the LDP
    assert grid * grid == trained_config.num_output_tokens == trained_config.label_rows and "pool" not in params
    held_out = held_out_rows(stream_config(paths, files=(paths["labels_val"],), token_grid=grid))
    images = np.stack([held_out[i]["images"] for i in range(len(held_out))])
    targets = np.stack([held_out[i]["token_labels"] for i in range(len(held_out))])
    assert targets.shape == (12, grid * grid, len(world.CLASSES)) and 0 < targets.mean() < 0.5
    x = np.asarray(build_model(trained_config).apply({"params": params}, images), np.float64)
    assert x.shape == targets.shape
    expected = np.mean(np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x))))
    np.testing.assert_allclose(history[-1]["val_loss"], expected, rtol=1e-4)
