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

import transformers

import hf_builders
import torch_refs
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import export_hf, import_hf, plan_import
from mvlm_jax.convert.mapping import ConversionError
from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig
from mvlm_jax.checkpoint import save_model
from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.models.vlm import place_image_embeddings

# The official LDPv2 pools to 12x12 whatever the grid; on this tiny 6x6 grid that means 144 tokens.
PROJECTORS = {"ldpnet": torch_refs.LDP, "ldpnetv2": lambda w, d: torch_refs.LDPv2(w, d, out_shape=(12, 12)),
              "mlp2x_gelu": torch_refs.MLP2xGELU}
SLOT, TEXT_AFTER = 3, 5


def build_mobilevlm(directory, projector_type: str, tower: str | None = "released", llama_shape: dict | None = None,
                    clip_shape: dict | None = None):
    """MobileVLM layout: LLaMA names, the tower, model.mm_projector.*. tower: "released" (the names of the
    official releases, model.vision_tower.vision_tower.vision_model.*), "transformers5" (a MobileVLM re-saved
    with transformers 5: model.vision_tower.vision_tower.* + the names transformers 5 saves a CLIPVisionModel
    under, read back from the file it wrote), None (no tower tensors: V1 releases load the CLIP directory)."""
    llama = hf_builders.llama(directory / "llm", seed=11, **(llama_shape or {}))
    clip = hf_builders.clip_vision(directory / "clip", seed=12, **(clip_shape or {}))
    projector = torch_refs.randomize_(PROJECTORS[projector_type](clip.config.hidden_size,
                                                                 llama.config.hidden_size).eval(), seed=13)
    state = hf_builders.numpy_state(llama)
    if tower == "released":
        saved = load_file(str(directory / "clip" / "model.safetensors"))
        unprefixed = {name.removeprefix("vision_model."): value for name, value in saved.items()}
        state.update({f"model.vision_tower.vision_tower.vision_model.{n}": v for n, v in unprefixed.items()})
    elif tower == "transformers5":
        saved = load_file(str(directory / "clip" / "model.safetensors"))
        assert not any(n.startswith("vision_model.") for n in saved), "transformers 5 writes no vision_model. prefix"
        state.update({f"model.vision_tower.vision_tower.{n}": v for n, v in saved.items()})
    state.update(hf_builders.numpy_state(projector, "model.mm_projector."))
    (directory / "vlm").mkdir()
    save_file(state, str(directory / "vlm" / "model.safetensors"))
    config = json.loads((directory / "llm" / "config.json").read_text())
    config.update(model_type="mobilevlm", architectures=["MobileLlamaForCausalLM"], mm_projector_type=projector_type,
                  mm_vision_tower=str(directory / "clip"), mm_hidden_size=clip.config.hidden_size, mm_vision_select_layer=-2,
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


@pytest.mark.parametrize("projector_type, tower", [("ldpnet", "released"), ("ldpnetv2", "released"),
                                                    ("mlp2x_gelu", "transformers5"), ("ldpnet", None)])
def test_mobilevlm_import_places_images_and_matches_torch(tmp_path, projector_type, tower):
    """Every projector; the tower's tensors as released, as transformers 5 re-saves them, or from the CLIP
    directory."""
    llama, clip, projector = build_mobilevlm(tmp_path, projector_type, tower)
    config = import_hf(tmp_path / "vlm", tmp_path / "ckpt")
    params, _ = load_model(tmp_path / "ckpt")
    model = build_model(config)
    num_visual = config.num_visual_tokens
    assert num_visual == {"mlp2x_gelu": 36, "ldpnet": 9, "ldpnetv2": 144}[projector_type]

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
    _, clip, _ = build_mobilevlm(tmp_path, "ldpnet")
    config = import_hf(tmp_path / "vlm", tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "exported")
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    # What the official loader reads: model type, projector, and a tower it can from_pretrained.
    assert exported["model_type"] == "mobilevlm" and exported["mm_projector_type"] == "ldpnet"
    assert exported["vision_tower_type"] == "clip" and exported["mm_vision_select_layer"] == -2
    tower_dir = tmp_path / "exported" / "vision_tower"
    assert exported["mm_vision_tower"] == str(tower_dir)  # not a known hub architecture
    tower = transformers.CLIPVisionModel.from_pretrained(tower_dir).eval()
    pixels = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 3, 48, 48)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].numpy(),
                                   clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].numpy(),
                                   atol=1e-5)
    # Every exported tensor equals the source tensor of the same name.
    source = load_file(str(tmp_path / "vlm" / "model.safetensors"))
    written = load_file(str(tmp_path / "exported" / "model.safetensors"))
    unused = {n for n in source if ".encoder.layers.2." in n or "post_layernorm" in n}  # past select_layer
    assert set(written) == set(source) - unused
    for name, value in written.items():
        np.testing.assert_array_equal(value, source[name], err_msg=name)
    again = import_hf(tmp_path / "exported", tmp_path / "ckpt_again")
    assert again == config
    first, _ = load_model(tmp_path / "ckpt")
    second, _ = load_model(tmp_path / "ckpt_again")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(a, b)


def test_tower_named_by_hub_id_gets_the_known_shape_and_missing_weights_are_explained(tmp_path):
    build_mobilevlm(tmp_path, "ldpnet", tower=None)
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


def test_table9_variant_round_trips_through_the_mobilevlm_layout(tmp_path):
    config = VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp_3_blocks"], LLAMA_PRESETS["tiny"])
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    save_model(tmp_path / "ckpt", params, config)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["mm_projector_type"] == "ldpnet" and exported["mm_ldp_block_strides"] == [1, 1, 1, 2]
    assert import_hf(tmp_path / "hf", tmp_path / "again") == config
    again, _ = load_model(tmp_path / "again")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_vlm_stays_close_to_float32():
    import dataclasses
    f32 = VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp"], LLAMA_PRESETS["tiny"])
    bf16 = VLMConfig(dataclasses.replace(f32.vision, dtype="bfloat16"),
                     dataclasses.replace(f32.projector, dtype="bfloat16"), dataclasses.replace(f32.llm, dtype="bfloat16"))
    params = init_params(f32, jax.random.key(1))
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 512, (2, f32.num_visual_tokens + 8)), jnp.int32)
    images = jnp.asarray(rng.normal(size=(2, 1, 48, 48, 3)), jnp.float32)
    slots = jnp.asarray([[1], [-1]], jnp.int32)
    # jitted: one compile per model instead of one per operation
    reference = np.asarray(jax.jit(build_model(f32).apply)({"params": params}, tokens, images, slots))
    low = jax.jit(build_model(bf16).apply)({"params": params}, tokens, images, slots)
    assert low.dtype == jnp.float32
    # Stated tolerance, as for the LLM: within 2 % of the largest float32 logit.
    assert np.abs(np.asarray(low) - reference).max() < 0.02 * np.abs(reference).max()
