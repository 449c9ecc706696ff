"""RoPE linear position interpolation (issue 18): the config and its errors, HF import and export with
transformers' logits equal to ours at 4x the training length, generation up to (and refused past) the
extended length, the context=N fine-tune recipe. The llama.cpp parity test is in test_llamacpp_parity."""
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_builders
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import export_hf, import_hf
from mvlm_jax.convert.hf_config import llama_from_hf, llama_to_hf
from mvlm_jax.convert.mapping import ConversionError
from mvlm_jax.generate import Generator, Request, SamplingConfig
from mvlm_jax.models import build_model
from mvlm_jax.models.config import LlamaConfig, from_dict, to_dict, with_rope_scaling
from test_generate import greedy_without_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import pretrain  # noqa: E402
from mvlm_jax.train.experiment import model_config  # noqa: E402

TRAINED, FACTOR = 16, 4  # the tiny model's training length and the scaling: parity runs 64 positions
TOKENS = np.random.default_rng(1).integers(0, 97, size=(2, TRAINED * FACTOR))


def test_config_records_the_original_length_and_refuses_factors_below_1():
    base = LlamaConfig(vocab_size=97, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4,
                       intermediate_size=64, max_position_embeddings=2048)
    long = with_rope_scaling(base, 4.0)
    assert (long.rope_scaling_factor, long.max_position_embeddings, long.original_context) == (4.0, 8192, 2048)
    assert from_dict(json.loads(json.dumps(to_dict(long)))) == long
    assert with_rope_scaling(long, 2.0).max_position_embeddings == 4096  # from the original length, not 8192
    assert with_rope_scaling(long, 1.0) == base
    old = to_dict(base)  # a checkpoint written before the scaling keys existed
    for key in ("rope_scaling_factor", "original_max_position_embeddings"):
        del old["config"][key]
    assert from_dict(old) == base
    with pytest.raises(ValueError, match="rope_scaling_factor 0.5 is below 1"):
        with_rope_scaling(base, 0.5)
    with pytest.raises(ValueError, match="rope_scaling_factor 0.9 is below 1"):
        LlamaConfig(rope_scaling_factor=0.9)


@pytest.mark.parametrize("scaling, message", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, "rope_scaling.rope_type 'yarn'"),
    ({"type": "dynamic", "factor": 2.0}, "rope_scaling.rope_type 'dynamic'"),
    ({"rope_type": "llama3", "factor": 8.0}, "rope_scaling.rope_type 'llama3'"),
    ({"rope_type": "linear", "factor": 0.5}, "rope_scaling.factor 0.5 must be a number >= 1"),
])
def test_hf_import_refuses_other_scalings_naming_the_type(scaling, message):
    config = {"model_type": "llama", "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 4, "intermediate_size": 64, "rope_scaling": scaling}
    with pytest.raises(ConversionError, match=message):
        llama_from_hf(config, Path("config.json"))
    # transformers 5's own key is read the same way
    parameters = {**{k: v for k, v in config.items() if k != "rope_scaling"}, "rope_parameters": scaling}
    with pytest.raises(ConversionError, match=message.replace("rope_scaling.", "rope_parameters.")):
        llama_from_hf(parameters, Path("config.json"))


def test_hf_import_reads_the_legacy_rope_scaling_key():
    config = {"model_type": "llama", "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 8192,
              "rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 4}}
    ours = llama_from_hf(config, Path("config.json"))
    assert (ours.rope_scaling_factor, ours.original_context, ours.max_position_embeddings, ours.rope_theta) == \
        (4.0, 2048, 8192, 500.0)


def test_mobilevlm_layout_writes_the_form_its_transformers_reads():
    """The official MobileVLM code pins transformers 4.33.1: rope_scaling with exactly `type` and `factor`."""
    config = with_rope_scaling(LlamaConfig(max_position_embeddings=2048), 4.0)
    written = llama_to_hf(config, legacy_rope_scaling=True)
    assert written["rope_scaling"] == {"type": "linear", "factor": 4.0} and "rope_parameters" not in written
    assert llama_from_hf(written, Path("config.json")) == config


def hf_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """A tiny random HF LLaMA (GQA) with linear scaling 4 from 16 positions, imported."""
    root = tmp_path_factory.mktemp("rope")
    reference = hf_builders.llama(root / "hf", seed=11, num_attention_heads=6, num_key_value_heads=2,
                                  max_position_embeddings=TRAINED * FACTOR,
                                  rope_scaling={"rope_type": "linear", "factor": float(FACTOR)})
    config = import_hf(root / "hf", root / "ckpt")
    params, _ = load_model(root / "ckpt")
    return root, reference, config, params


def test_transformers_logits_equal_ours_past_the_original_length(scaled):
    root, reference, config, params = scaled
    assert json.loads((root / "hf" / "config.json").read_text())["rope_parameters"]["rope_type"] == "linear"
    assert (config.rope_scaling_factor, config.original_context, config.max_position_embeddings) == (4.0, 16, 64)
    expected = hf_logits(reference, TOKENS)
    logits = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(TOKENS)))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # the scaling matters: the same weights with plain RoPE are far off past position 0
    plain = np.asarray(build_model(with_rope_scaling(config, 1.0)).apply({"params": params}, jnp.asarray(TOKENS)))
    assert np.abs(plain[:, TRAINED:] - expected[:, TRAINED:]).max() > 1e-2

    export_hf(root / "ckpt", root / "exported")
    written = json.loads((root / "exported" / "config.json").read_text())
    assert written["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert (written["max_position_embeddings"], written["original_max_position_embeddings"]) == (64, 16)
    again = transformers.LlamaForCausalLM.from_pretrained(root / "exported").eval()
    assert again.config.rope_parameters == reference.config.rope_parameters
    np.testing.assert_allclose(hf_logits(again, TOKENS), expected, atol=1e-5, rtol=0)
    assert import_hf(root / "exported", root / "again") == config


def test_generation_runs_to_the_extended_length_and_refuses_past_it(scaled):
    _, _, config, params = scaled
    generator = Generator(config, params, eos_ids=())
    assert generator.max_len == 64
    prompt = TOKENS[0, :20]  # already past the 16 trained positions
    got = generator.generate([Request(prompt)], SamplingConfig(max_new_tokens=12))[0].ids
    assert got == greedy_without_cache(config)(params, prompt, 12)
    limit = r"max_position_embeddings 64 \(rope_scaling_factor 4 x original_max_position_embeddings 16\)"
    with pytest.raises(ValueError, match=f"max_len 128 is past the model's extended context: {limit}"):
        Generator(config, params, max_len=128)
    with pytest.raises(ValueError, match=f"needs 71 of the 64 cache positions.*extended context: {limit}"):
        generator.generate([Request(TOKENS[0, :60])], SamplingConfig(max_new_tokens=12))


def test_context_recipe_fine_tunes_from_the_pretrained_model():
    c = pretrain.get_config("size=tiny,context=512")
    llm = model_config(c.model)
    assert (llm.rope_scaling_factor, llm.original_context, llm.max_position_embeddings) == (4.0, 128, 512)
    assert c.data.seq_len == 512 and c.data.pack and c.init_from == ("=runs/pretrain-tiny/model",)
    assert c.train.batch_size * 512 == 8 * 128  # the pretraining's tokens per step
    paper = pretrain.get_config("size=1.4b,context=8k")
    llm = model_config(paper.model)
    assert (llm.rope_scaling_factor, llm.original_context, llm.max_position_embeddings) == (4.0, 2048, 8192)
    assert (paper.data.seq_len, paper.train.total_steps, paper.optim.learning_rate) == (8192, 100, 2e-5)
    assert paper.train.batch_size * 8192 == 2560 * 2048
    with pytest.raises(ValueError, match="context=64: 64 tokens is below the pretraining length 128"):
        pretrain.get_config("size=tiny,context=64")
