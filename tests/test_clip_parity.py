"""CLIP vision tower: our selected features equal HF's hidden_states[-2] without the class token."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_builders
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import import_hf
from mvlm_jax.convert.hf_config import KNOWN_TOWERS, vision_from_hf
from mvlm_jax.models import build_model
from mvlm_jax.models.config import VISION_PRESETS


def pixels(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(5).normal(size=(batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_vision_model_features_match_hidden_states_minus_2(tmp_path, act):
    reference = hf_builders.clip_vision(tmp_path / "clip", hidden_act=act)
    images = pixels(2, 48)
    with torch.no_grad():
        out = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
    expected = out.hidden_states[-2][:, 1:].numpy()

    config = import_hf(tmp_path / "clip", tmp_path / "ckpt")
    assert config.num_layers_run == 2 and config.num_output_tokens == 36
    params, _ = load_model(tmp_path / "ckpt")
    assert "layers" in params and params["layers"]["fc1"]["kernel"].shape[0] == 2  # last block not built
    got = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(images)))
    assert got.shape == expected.shape == (2, 36, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_clip_model_vision_part(tmp_path):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=48, patch_size=8)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    config = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=8)
    torch.manual_seed(0)
    model = hf_builders.randomize_(transformers.CLIPModel(config), 2).eval()
    model.save_pretrained(tmp_path / "clip", safe_serialization=True)
    images = pixels(1, 48)
    with torch.no_grad():
        out = model.vision_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
    ours = import_hf(tmp_path / "clip", tmp_path / "ckpt")
    params, _ = load_model(tmp_path / "ckpt")
    got = np.asarray(build_model(ours).apply({"params": params}, jnp.asarray(images)))
    np.testing.assert_allclose(got, out.hidden_states[-2][:, 1:].numpy(), atol=1e-4, rtol=0)


def test_known_hub_tower_is_the_l14_336_preset():
    config = vision_from_hf(KNOWN_TOWERS["openai/clip-vit-large-patch14-336"], "hub")
    assert config == VISION_PRESETS["l14_336"]
    assert config.num_patches == 576 and config.num_layers_run == 23
