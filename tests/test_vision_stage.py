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


def classifier_config(head="map"):
    config = vision.get_config("tiny")
    config.model.classifier.head = head
    return model_config(config.model, tuple(config.data.classes))


def reference_logits(params, features):
    """numpy float64: attention pooling with one learned query over `features` [b, n, w], LayerNorm, logits."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    pool, heads = p["pool"], 4
    dense = lambda x, layer: x @ layer["kernel"] + layer["bias"]  # noqa: E731
    b, n, w = features.shape
    q = dense(pool["probe"], pool["query"]).reshape(heads, w // heads)
    k = dense(features, pool["key"]).reshape(b, n, heads, w // heads)
    v = dense(features, pool["value"]).reshape(b, n, heads, w // heads)
    scores = np.einsum("hd,bnhd->bhn", q, k) / np.sqrt(w // heads)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    pooled = dense(np.einsum("bhn,bnhd->bhd", weights, v).reshape(b, w), pool["out"])
    mean, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
    normed = (pooled - mean) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
    return dense(normed, p["classes"])


def test_attention_pool_head_and_sigmoid_loss_match_numpy():
    config = classifier_config()
    model = build_model(config)
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)  # bias != 0
    images = jax.random.normal(jax.random.key(2), (3, config.vision.image_size, config.vision.image_size, 3))
    logits = np.asarray(jax.jit(model.apply)({"params": params}, images))  # jit: one compile, not one per op
    assert logits.shape == (3, len(world.CLASSES))
    from mvlm_jax.models.projectors import Projector

    features = jax.jit(lambda p, x: Projector(config.projector, config.embed_dim).apply(
        {"params": p["projector"]}, build_model(config.vision).apply({"params": p["vision"]}, x)))(params, images)
    np.testing.assert_allclose(logits, reference_logits(params, np.asarray(features, np.float64)), atol=1e-4)

    labels = (np.arange(3 * logits.shape[1]).reshape(logits.shape) % 3 == 0).astype(np.float32)
    loss = label_loss(lambda p, batch, rng: model.apply({"params": p}, batch["images"]))
    weights = np.array([1.0, 0.0, 1.0], np.float32)  # the middle row pads a held-out batch: not counted
    total, count = jax.jit(loss)(params, {"images": images, "labels": labels, "weights": weights}, jax.random.key(0))
    x = logits.astype(np.float64)
    expected = np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x)))  # stable sigmoid cross-entropy
    assert count == 2 * labels.shape[1]
    np.testing.assert_allclose(float(total), expected[[0, 2]].sum(), rtol=1e-5)


def test_labels_name_the_scene(data):
    _, paths = data
    scenes = {s["id"]: s for s in json.loads((Path(paths["world"]) / "scenes_train.json").read_text())}
    records = json.loads(Path(paths["labels"]).read_text())
    assert len(records) == len(scenes)
    for record in records:
        objects = scenes[record["id"]]["objects"]
        expected = {o["shape"] for o in objects} | {f"{o['color']} {o['shape']}" for o in objects}
        assert set(record["labels"]) == expected and set(record["labels"]) <= set(world.CLASSES)


def stream_config(paths, **changes):
    settings = dict(files=(paths["labels"],), classes=world.CLASSES, image_size=64, batch_size=4,
                    image_root=paths["images"])
    return ImageLabelData(**{**settings, **changes})


def test_the_stream_reshuffles_each_epoch_and_resumes_at_its_batch(data):
    _, paths = data
    config = stream_config(paths)
    _, labels = read_examples(config)
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
    source = LabelledImages(config, *read_examples(config))
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
