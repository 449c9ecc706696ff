"""Import tiny random HF LLaMA models of several shapes: JAX logits equal HF logits; export round trips."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_builders
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import export_hf, import_hf
from mvlm_jax.models import build_model

SHAPES = {
    "mha": dict(),
    "gqa": dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48),
    "mqa_tied_theta": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500.0,
                           rms_norm_eps=1e-5),
    "head_dim_override": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=3,
                              bos_token_id=5, eos_token_id=[6, 7], pad_token_id=None),
}
TOKENS = np.random.default_rng(0).integers(0, 97, size=(2, 24))


def hf_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_import_matches_hf_and_export_round_trips(tmp_path, name):
    reference = hf_builders.llama(tmp_path / "hf", seed=len(name), **SHAPES[name])
    expected = hf_logits(reference, TOKENS)

    config = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    params, restored = load_model(tmp_path / "ckpt")
    assert restored == config
    logits = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(TOKENS)))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

    export_hf(tmp_path / "ckpt", tmp_path / "exported")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "exported").eval()
    np.testing.assert_allclose(hf_logits(again, TOKENS), expected, atol=1e-5, rtol=0)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(again.config, key) == getattr(reference.config, key), key


def test_sharded_safetensors_with_index(tmp_path):
    reference = hf_builders.llama(tmp_path / "src", seed=3)
    reference.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    config = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    params, _ = load_model(tmp_path / "ckpt")
    logits = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(TOKENS)))
    np.testing.assert_allclose(logits, hf_logits(reference, TOKENS), atol=1e-4, rtol=0)
    # Export in small shards too: the index must be valid for transformers.
    export_hf(tmp_path / "ckpt", tmp_path / "exported", max_shard_bytes=30_000)
    assert len(list((tmp_path / "exported").glob("model-*-of-*.safetensors"))) > 1
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "exported").eval()
    np.testing.assert_allclose(hf_logits(again, TOKENS), hf_logits(reference, TOKENS), atol=1e-5, rtol=0)
