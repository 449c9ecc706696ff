"""A tiny MobileVLM-layout checkpoint built here from HF pieces and the torch projector reference:
imported, the image embeddings land exactly at the <image> position, and the logits match a PyTorch
composition of the same pieces."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import hf_builders
import torch_refs
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import export_hf, import_hf, plan_import
from mvlm_jax.convert.mapping import ConversionError
from mvlm_jax.models.config import VISION_PRESETS
from mvlm_jax.models import build_model
from mvlm_jax.models.vlm import place_image_embeddings

PROJECTORS = {"ldpnet": torch_refs.LDP, "ldpnetv2": torch_refs.LDPv2, "mlp2x_gelu": torch_refs.MLP2xGELU}
SLOT, TEXT_AFTER = 3, 5


def build_mobilevlm(directory, projector_type: str, with_tower_tensors: bool = True):
    """MobileVLM layout: LLaMA names, model.vision_tower.vision_tower.vision_model.*, model.mm_projector.*"""
    llama = hf_builders.llama(directory / "llm", seed=11)
    clip = hf_builders.clip_vision(directory / "clip", seed=12)
    projector = torch_refs.randomize_(PROJECTORS[projector_type](32, 48).eval(), seed=13)
    state = hf_builders.numpy_state(llama)
    if with_tower_tensors:
        state.update(hf_builders.numpy_state(clip, "model.vision_tower.vision_tower.vision_model."))
    state.update(hf_builders.numpy_state(projector, "model.mm_projector."))
    (directory / "vlm").mkdir()
    save_file(state, str(directory / "vlm" / "model.safetensors"))
    config = json.loads((directory / "llm" / "config.json").read_text())
    config.update(model_type="mobilevlm", architectures=["MobileLlamaForCausalLM"], mm_projector_type=projector_type,
                  mm_vision_tower=str(directory / "clip"), mm_hidden_size=32, mm_vision_select_layer=-2,
                  mm_vision_select_feature="patch", image_aspect_ratio="pad")
    (directory / "vlm" / "config.json").write_text(json.dumps(config))
    return llama, clip, projector


def torch_logits(llama, clip, projector, prompt_ids, image):
    """The official composition: tower hidden_states[-2] minus CLS -> projector -> replaces the -200 token."""
    with torch.no_grad():
        features = clip(pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2)),
                        output_hidden_states=True).hidden_states[-2][:, 1:]
        image_embeddings = projector(features)
        text = llama.model.embed_tokens(torch.from_numpy(prompt_ids))
        merged = torch.cat([text[:, :SLOT], image_embeddings, text[:, SLOT + 1:]], dim=1)
        return llama(inputs_embeds=merged).logits.numpy(), image_embeddings.numpy()


@pytest.mark.parametrize("projector_type, with_tower", [("ldpnet", True), ("ldpnetv2", True),
                                                          ("mlp2x_gelu", True), ("ldpnet", False)])
def test_mobilevlm_import_places_images_and_matches_torch(tmp_path, projector_type, with_tower):
    llama, clip, projector = build_mobilevlm(tmp_path, projector_type, with_tower)
    config = import_hf(tmp_path / "vlm", tmp_path / "ckpt")
    params, _ = load_model(tmp_path / "ckpt")
    model = build_model(config)
    num_visual = config.num_visual_tokens
    assert num_visual == (36 if projector_type == "mlp2x_gelu" else 9)

    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 48, 48, 3)).astype(np.float32)
    prompt = rng.integers(3, 97, size=(1, SLOT + 1 + TEXT_AFTER))
    prompt[0, SLOT] = 0  # the -200 slot; its embedding is replaced
    expected, expected_images = torch_logits(llama, clip, projector, prompt, image)

    # Our batch: the slot widened to num_visual placeholder positions; row 1 carries no image.
    widened = np.concatenate([prompt[:, :SLOT], np.zeros((1, num_visual), prompt.dtype), prompt[:, SLOT + 1:]], 1)
    tokens = jnp.asarray(np.repeat(widened, 2, 0), jnp.int32)
    images = jnp.asarray(np.repeat(image[:, None], 2, 0))
    slots = jnp.array([[SLOT], [-1]], jnp.int32)
    logits = np.asarray(model.apply({"params": params}, tokens, images, slots))
    np.testing.assert_allclose(logits[0], expected[0], atol=1e-4, rtol=0)

    # The image rows sit exactly at SLOT .. SLOT + num_visual - 1, text everywhere else.
    encoded = model.apply({"params": params}, images, method=model.encode_images)
    np.testing.assert_allclose(np.asarray(encoded[0, 0]), expected_images[0], atol=1e-4, rtol=0)
    text = model.apply({"params": params}, tokens, method=lambda m, t: m.llm.embed(t))
    merged = np.asarray(place_image_embeddings(text, encoded, slots))
    np.testing.assert_array_equal(merged[0, SLOT:SLOT + num_visual], np.asarray(encoded[0, 0]))
    np.testing.assert_array_equal(merged[0, :SLOT], np.asarray(text[0, :SLOT]))
    np.testing.assert_array_equal(merged[0, SLOT + num_visual:], np.asarray(text[0, SLOT + num_visual:]))
    np.testing.assert_array_equal(merged[1], np.asarray(text[1]))

    # The image-free row is the plain LLM on its tokens.
    llm_logits = build_model(config.llm).apply({"params": params["llm"]}, tokens[1:])
    np.testing.assert_allclose(logits[1], np.asarray(llm_logits[0]), atol=1e-5, rtol=0)


def test_place_image_embeddings_is_jittable_and_drops_overflow():
    text = jnp.zeros((2, 6, 1))
    images = jnp.ones((2, 2, 3, 1)) * jnp.arange(1, 3)[None, :, None, None]
    slots = jnp.array([[0, 4], [-1, 2]])  # second image of row 0 runs past the end: rows 4, 5 kept
    out = np.asarray(jax.jit(place_image_embeddings)(text, images, slots))[..., 0]
    np.testing.assert_array_equal(out, [[1, 1, 1, 0, 2, 2], [0, 0, 2, 2, 2, 0]])


def test_vlm_export_to_mobilevlm_layout_round_trips(tmp_path):
    build_mobilevlm(tmp_path, "ldpnet")
    config = import_hf(tmp_path / "vlm", tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "exported")
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["model_type"] == "mobilevlm" and exported["mm_projector_type"] == "ldpnet"
    assert exported["mm_vision_tower"] == "vision_tower"  # not a known hub shape: its config is written beside
    again = import_hf(tmp_path / "exported", tmp_path / "ckpt_again")
    assert again == config
    first, _ = load_model(tmp_path / "ckpt")
    second, _ = load_model(tmp_path / "ckpt_again")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(a, b)


def test_tower_named_by_hub_id_gets_the_known_shape_and_missing_weights_are_explained(tmp_path):
    build_mobilevlm(tmp_path, "ldpnet", with_tower_tensors=False)
    config = json.loads((tmp_path / "vlm" / "config.json").read_text())
    config.update(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=1024)
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(config))
    # Without tower tensors and without a local tower directory there are no weights to load.
    with pytest.raises(ConversionError, match="--vision CLIP_DIR"):
        plan_import(tmp_path / "vlm")
    # With the tower's tensors in the checkpoint (as V2 releases ship them) the hub shape is used.
    state = load_file(str(tmp_path / "vlm" / "model.safetensors"))
    state["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"] = np.zeros(1024, np.float32)
    save_file(state, str(tmp_path / "vlm" / "model.safetensors"))
    planned, _, _ = plan_import(tmp_path / "vlm")
    assert planned.vision == VISION_PRESETS["l14_336"] and planned.num_visual_tokens == 144
    # --vision overrides mm_vision_tower.
    config["mm_hidden_size"] = 32
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(config))
    planned, _, _ = plan_import(tmp_path / "vlm", vision_dir=tmp_path / "clip")
    assert planned.vision.width == 32 and planned.vision.select_layer == -2
