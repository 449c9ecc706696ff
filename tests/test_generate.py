"""Generation engine: the KV-cache decode equals recomputing the full forward at every step, equals HF
transformers' greedy generate, is independent of batching and padding, stops at EOS per row, samples
reproducibly; image prompts equal the no-cache VLM forward; the CLI prints the continuation."""
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_builders
from data_pipelines.templates import IMAGE_TOKEN
from data_pipelines.tokenizer import train_tokenizer
from mvlm_jax import cli
from mvlm_jax.checkpoint import load_model, save_model
from mvlm_jax.convert.hf import import_hf
from mvlm_jax.generate import Generator, Request, SamplingConfig
from mvlm_jax.generate.cli import chat_main, generate_main
from mvlm_jax.generate.prompts import chat_prompt, raw_prompt
from mvlm_jax.generate.sampling import top_p_sample
from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.models.config import LlamaConfig, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig

PROMPTS = [np.array([1, 5, 9, 22, 7]), np.array([1, 3]), np.arange(1, 24) % 97]
GREEDY = SamplingConfig(max_new_tokens=12)


def jit_init(config, seed):
    return init_params(config, jax.random.key(seed))


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """A tiny random HF LlamaForCausalLM (GQA: 6 heads, 2 KV heads), imported through our converter."""
    root = tmp_path_factory.mktemp("llm")
    reference = hf_builders.llama(root / "hf", seed=5, num_attention_heads=6, num_key_value_heads=2)
    import_hf(root / "hf", root / "ckpt")
    params, config = load_model(root / "ckpt")
    return reference, config, params, Generator(config, params, eos_ids=())


def greedy_without_cache(config):
    """Greedy continuation by the plain forward over the whole sequence, recomputed at every step (no
    cache): a fixed [1, length] buffer, right-padded (causal, so padding never reaches earlier logits)."""
    forward = jax.jit(lambda params, buffer, **inputs: build_model(config).apply({"params": params}, buffer, **inputs))

    def run(params, tokens, steps, length=64, **inputs):
        seq = list(tokens)
        for _ in range(steps):
            buffer = np.zeros((1, length), np.int32)
            buffer[0, :len(seq)] = seq
            seq.append(int(jnp.argmax(forward(params, buffer, **inputs)[0, len(seq) - 1])))
        return seq[len(tokens):]
    return run


def test_cached_greedy_equals_full_forward_every_step(llm):
    _, config, params, generator = llm
    reference = greedy_without_cache(config)
    for prompt in PROMPTS:
        [completion] = generator.generate([Request(prompt)], GREEDY)
        assert completion.finish_reason == "length"
        assert completion.ids == reference(params, prompt, GREEDY.max_new_tokens)


def test_batch_of_different_lengths_equals_each_prompt_alone(llm):
    generator = llm[-1]
    alone = [generator.generate([Request(p)], GREEDY)[0] for p in PROMPTS]
    assert generator.generate([Request(p) for p in PROMPTS], GREEDY) == alone
    assert generator.generate([Request(p) for p in PROMPTS[::-1]], GREEDY) == alone[::-1]


def test_matches_hf_transformers_greedy_generate(llm):
    reference, config, params, _ = llm
    generator = Generator(config, params)  # the imported EOS (2) and pad (0)
    assert generator.eos_ids == (2,) and generator.pad_id == 0
    ours = generator.generate([Request(p) for p in PROMPTS], SamplingConfig(max_new_tokens=20))
    for prompt, completion in zip(PROMPTS, ours):
        with torch.no_grad():
            out = reference.generate(torch.from_numpy(prompt[None]).long(), do_sample=False, max_new_tokens=20,
                                     use_cache=True, eos_token_id=2, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        assert completion.ids + ([2] if completion.finish_reason == "eos" else []) == expected


def test_eos_stops_each_row(llm):
    _, config, params, generator = llm
    free = [c.ids for c in generator.generate([Request(p) for p in PROMPTS], GREEDY)]
    eos = next(t for t in free[0][2:] if t not in free[1] + free[2])
    stop = free[0].index(eos)
    stopping = Generator(config, params, eos_ids=[eos], pad_id=0)
    first, *others = stopping.generate([Request(p) for p in PROMPTS], GREEDY)
    assert (first.ids, first.finish_reason) == (free[0][:stop], "eos")
    assert [(c.ids, c.finish_reason) for c in others] == [(ids, "length") for ids in free[1:]]
    assert stopping.generate([Request(PROMPTS[0])], GREEDY)[0] == first
    streamed = np.stack(list(stopping.stream([Request(p) for p in PROMPTS], GREEDY)), axis=1)
    assert streamed[0].tolist() == free[0][:stop] + [eos] + [0] * (GREEDY.max_new_tokens - stop - 1)
    assert streamed[1:].tolist() == free[1:]


def test_sampling_top_p_zero_is_greedy_and_seeds_reproduce(llm):
    generator = llm[-1]
    requests = [Request(p) for p in PROMPTS]
    greedy = generator.generate(requests, GREEDY)
    assert generator.generate(requests, dataclasses.replace(GREEDY, temperature=1.0, top_p=0.0)) == greedy
    hot = dataclasses.replace(GREEDY, temperature=3.0)
    runs = {seed: generator.generate(requests, dataclasses.replace(hot, seed=seed)) for seed in (0, 1)}
    assert generator.generate(requests, dataclasses.replace(hot, seed=0)) == runs[0]
    assert runs[0] != runs[1] and runs[0] != greedy


def test_top_p_samples_only_from_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.3, 0.15]] * 256))
    keys = jax.random.split(jax.random.key(0), 256)
    drawn = np.asarray(top_p_sample(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    assert set(drawn.tolist()) == {1, 2}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert set(np.asarray(top_p_sample(logits, keys, jnp.float32(1.0), jnp.float32(1.0))).tolist()) == {0, 1, 2, 3}


def test_prompt_too_long_and_bad_requests_are_explained(llm):
    generator = llm[-1]
    with pytest.raises(ValueError, match="60 positions.*needs 71 of the 64 cache positions"):
        generator.generate([Request(np.ones(60, np.int32))], GREEDY)
    with pytest.raises(ValueError, match="text-only LLM"):
        generator.generate([Request(np.array([1, IMAGE_TOKEN, 4]), np.zeros((48, 48, 3)))], GREEDY)
    with pytest.raises(ValueError, match="image token but no image"):
        generator.generate([Request(np.array([1, IMAGE_TOKEN, 4]))], GREEDY)


@pytest.fixture(scope="module")
def vlm():
    llm = LlamaConfig(vocab_size=400, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=80,
                      max_position_embeddings=256, eos_token_id=None)  # room for the vicuna_v1 system prompt
    config = VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp"], llm)
    # larger weights: peaked, well-separated logits (no near-ties for float rounding to flip)
    return config, jax.tree.map(lambda p: p * 4 if p.ndim > 1 else p, jit_init(config, 3))


def test_image_prompt_equals_no_cache_vlm_forward(vlm):
    config, params = vlm
    n = config.num_visual_tokens
    image = np.asarray(jax.random.normal(jax.random.key(4), (48, 48, 3)))
    prompt = np.array([1, 30, IMAGE_TOKEN, 44, 12, 9])
    slot = 2
    widened = np.concatenate([prompt[:slot], np.zeros(n, np.int32), prompt[slot + 1:]])
    expected = greedy_without_cache(config)(params, widened, 10, images=jnp.asarray(image)[None, None],
                                            image_slots=jnp.asarray([[slot]]))
    generator = Generator(config, params)
    sampling = SamplingConfig(max_new_tokens=10)
    assert generator.generate([Request(prompt, image)], sampling)[0].ids == expected
    text_only = np.array([1, 200, 17])
    alone = generator.generate([Request(text_only)], sampling)[0]
    mixed = generator.generate([Request(text_only), Request(prompt, image)], sampling)
    assert [c.ids for c in mixed] == [alone.ids, expected]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, vlm):
    root = tmp_path_factory.mktemp("gen_ckpt")
    texts = [f"the cat number {i} sat on the mat and looked at a red ball" for i in range(200)]
    tokenizer = train_tokenizer(texts + ["USER: ASSISTANT: A chat between a curious user"], 400, root / "tok.model")
    config, params = vlm
    save_model(root / "ckpt", jax.tree.map(np.asarray, params), config)
    (root / "ckpt" / "tokenizer.model").write_bytes((root / "tok.model").read_bytes())
    save_model(root / "bare", jax.tree.map(np.asarray, params), config)
    image_path = root / "picture.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)).save(image_path)
    return root, tokenizer


def test_cli_generate_prints_the_continuation(checkpoint, capsys):
    root, tokenizer = checkpoint
    params, config = load_model(root / "ckpt")
    expected = Generator(config, params).generate([Request(raw_prompt(tokenizer, "the cat"))],
                                                  SamplingConfig(max_new_tokens=8))[0]
    assert cli.main(["generate", "--ckpt", str(root / "ckpt"), "--prompt", "the cat", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(expected.ids) + "\n"
    # The same through --tokenizer on a checkpoint without one, with an image.
    assert generate_main(["--ckpt", str(root / "bare"), "--tokenizer", str(root / "tok.model"), "--prompt", "a red",
                          "--image", str(root / "picture.png"), "--max-new-tokens", "5", "--temperature", "0.8",
                          "--top-p", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_chat_one_shot_and_stdin(checkpoint, capsys):
    root, tokenizer = checkpoint
    params, config = load_model(root / "ckpt")
    generator = Generator(config, params)
    turns = [{"from": "human", "value": "what is on the mat?"}]
    first = tokenizer.decode(generator.generate([Request(chat_prompt(tokenizer, turns))],
                                                SamplingConfig(max_new_tokens=6))[0].ids)
    assert chat_main(["--ckpt", str(root / "ckpt"), "--prompt", "what is on the mat?", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == first + "\n"
    turns += [{"from": "gpt", "value": first.strip()}, {"from": "human", "value": "and the cat?"}]
    second = tokenizer.decode(generator.generate([Request(chat_prompt(tokenizer, turns))],
                                                 SamplingConfig(max_new_tokens=6))[0].ids)
    stdin = io.StringIO("what is on the mat?\n\nand the cat?\n")
    assert chat_main(["--ckpt", str(root / "ckpt"), "--max-new-tokens", "6"], stdin=stdin) == 0
    assert capsys.readouterr().out == f"ASSISTANT: {first}\nASSISTANT: {second}\n"


def test_cli_errors_name_the_problem(checkpoint, capsys):
    root, _ = checkpoint
    ckpt = str(root / "ckpt")
    assert generate_main(["--ckpt", str(root / "bare"), "--prompt", "x"]) == 1
    assert f"{root / 'bare' / 'tokenizer.model'} does not exist; pass --tokenizer" in capsys.readouterr().err
    assert generate_main(["--ckpt", ckpt, "--prompt", "x", "--image", str(root / "nope.png")]) == 1
    assert f"{root / 'nope.png'}: image file not found" in capsys.readouterr().err
    assert generate_main(["--ckpt", ckpt, "--prompt", "the cat " * 20, "--max-new-tokens", "30", "--max-len", "64"]) == 1
    assert "cache positions (max_len)" in capsys.readouterr().err


def test_rows_split_over_devices_give_the_same_tokens(llm):
    """Data parallel generation: three rows padded to four over two devices, the padding row dropped."""
    _, config, params, single = llm
    split = Generator(config, params, eos_ids=(), devices=jax.devices()[:2])
    requests = [Request(p) for p in PROMPTS]
    assert [c.ids for c in split.generate(requests, GREEDY)] == [c.ids for c in single.generate(requests, GREEDY)]
    steps = list(split.stream(requests, SamplingConfig(max_new_tokens=3)))
    assert [s.shape for s in steps] == [(3,)] * 3
    assert np.stack(steps, 1).tolist() == [c.ids[:3] for c in single.generate(requests, GREEDY)]
