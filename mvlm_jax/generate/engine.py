"""The generation engine: KV-cache prefill and decode under jax.jit, for MobileLLaMA and MobileVLM.

The cache has a static shape, [layers, batch, kv_heads, max_len, head_dim] for keys and for values, so
decoding compiles once per (batch, max_len). A batch of prompts of different lengths is left-padded to a
common bucket length (powers of two, so prefill compiles once per bucket): every row then writes its
next token to the same cache slot, padded slots are never attended to (`valid`), and each row's RoPE
positions start at 0 at its first real token (slot - offset), so a row's result equals running its
prompt alone. Generation stops per row at an EOS id (later tokens of that row are `pad_id`) and for the
whole batch when every row has stopped or max_new_tokens are out.

    generator = Generator(config, params)                      # or Generator.from_checkpoint(path)
    [completion] = generator.generate([Request(ids)], SamplingConfig(max_new_tokens=64))
    completion.ids, completion.finish_reason                   # new ids without the EOS; "eos" | "length"
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.templates import IMAGE_TOKEN  # one per image in a prompt's ids
from mvlm_jax.generate.sampling import SamplingConfig, choose_tokens, step_keys
from mvlm_jax.models.config import LlamaConfig, VLMConfig
from mvlm_jax.models.layers import DTYPES
from mvlm_jax.models.llama import KVCache, MobileLLaMA
from mvlm_jax.models.vlm import MobileVLM, place_image_embeddings

MIN_BUCKET = 16
MAX_EOS_IDS = 8  # EOS ids travel as a fixed-size array (padded with -1), so they never cause a recompile


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt. ids: [length] int32 template ids (BOS first), with one IMAGE_TOKEN where the image
    goes; image: [H, W, 3] float32 preprocessed pixels (data_pipelines.images.preprocess_file)."""

    ids: np.ndarray | Sequence[int]
    image: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
    ids: list[int]  # generated ids, the stopping EOS excluded
    finish_reason: str  # "eos" or "length"


class DecodeState(NamedTuple):
    """Everything decoding carries from step to step (a pytree; donated to the jitted loop)."""

    cache: KVCache  # (key, value), each [layers, batch, kv_heads, max_len, head_dim]
    valid: jax.Array  # [batch, max_len] bool: the slot holds a real (not padding, not yet empty) token
    offsets: jax.Array  # [batch] int32 left padding per row; RoPE position = slot - offset
    index: jax.Array  # int32 scalar: the cache slot the next fed token goes to
    last: jax.Array  # [batch] int32: the latest generated token (fed at the next step)
    done: jax.Array  # [batch] bool: the row has produced an EOS
    tokens: jax.Array  # [batch, max_len] int32 generated tokens, column t = step t; pad_id after EOS
    step: jax.Array  # int32 scalar: tokens generated so far
    rng: jax.Array  # the base PRNG key of this run (sampling.step_keys)


def _eos_tuple(eos: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, (int, np.integer)) else tuple(int(e) for e in eos)


def bucket_length(length: int, limit: int) -> int:
    """Padded prompt length: the next power of two (at least MIN_BUCKET), capped at `limit` (>= length)."""
    bucket = max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length())
    return max(length, min(bucket, limit))


class Knobs(NamedTuple):
    """Per-call settings passed as arrays: changing them never recompiles."""

    temperature: jax.Array  # float32 scalar; 0 = greedy
    top_p: jax.Array  # float32 scalar
    eos_ids: jax.Array  # [MAX_EOS_IDS] int32, -1 = unused
    pad_id: jax.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class Static:
    """What the compiled functions depend on: the model config (token ids stripped: they are Knobs) and
    the cache length. Generators with equal Static share compiled prefill and decode functions."""

    config: LlamaConfig | VLMConfig
    max_len: int

    @staticmethod
    def of(config: LlamaConfig | VLMConfig, max_len: int) -> "Static":
        strip = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
        if isinstance(config, VLMConfig):
            return Static(dataclasses.replace(config, llm=dataclasses.replace(config.llm, **strip)), max_len)
        return Static(dataclasses.replace(config, **strip), max_len)

    @property
    def llm_config(self) -> LlamaConfig:
        return self.config.llm if isinstance(self.config, VLMConfig) else self.config

    @property
    def is_vlm(self) -> bool:
        return isinstance(self.config, VLMConfig)


def position_limit(config: LlamaConfig) -> int | None:
    """The most positions generation may use: max_position_embeddings for a model with RoPE scaling (past
    it the interpolated positions leave the trained range too); None (no limit) for plain RoPE, which
    runs past its trained context as the official generate() does."""
    return config.max_position_embeddings if config.rope_scaling_factor != 1.0 else None


def describe_limit(config: LlamaConfig) -> str:
    return (f"max_position_embeddings {config.max_position_embeddings} (rope_scaling_factor "
            f"{config.rope_scaling_factor:g} x original_max_position_embeddings {config.original_context})")


def init_cache(config: LlamaConfig, batch: int, max_len: int) -> KVCache:
    """Zeroed (key, value), each [layers, batch, kv_heads, max_len, head_dim] in the compute dtype."""
    shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.resolved_head_dim)
    return jnp.zeros(shape, DTYPES[config.dtype]), jnp.zeros(shape, DTYPES[config.dtype])


def _llm_forward(static: Static, params: Any, *args: Any, **kwargs: Any) -> tuple[jax.Array, KVCache]:
    llm_params = params["llm"] if static.is_vlm else params
    return MobileLLaMA(static.llm_config).apply({"params": llm_params}, *args, **kwargs, method=MobileLLaMA.forward_with_cache)


def _embed(static: Static, params: Any, tokens: jax.Array, images: jax.Array | None,
           image_slots: jax.Array) -> jax.Array:
    """Token embeddings with each image's projected embeddings written at its slots: [batch, length, embed]."""
    llm_params = params["llm"] if static.is_vlm else params
    embeddings = MobileLLaMA(static.llm_config).apply({"params": llm_params}, tokens, method=MobileLLaMA.embed)
    if images is None:
        return embeddings
    image_embeddings = MobileVLM(static.config).apply({"params": params}, images, method=MobileVLM.encode_images)
    return place_image_embeddings(embeddings, image_embeddings, image_slots)


def _is_eos(tokens: jax.Array, knobs: Knobs) -> jax.Array:
    return jnp.any(tokens[:, None] == knobs.eos_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def prefill_fn(static: Static, params: Any, tokens: jax.Array, valid: jax.Array, images: jax.Array | None,
               image_slots: jax.Array, rng: jax.Array, knobs: Knobs) -> DecodeState:
    """tokens, valid: [batch, length] (left-padded); images: [batch, 1, H, W, 3] or None; image_slots:
    [batch, 1]. Runs the prompt through the model, fills cache slots 0 .. length - 1, picks token 0."""
    batch, length = tokens.shape
    max_len = static.max_len
    offsets = length - jnp.sum(valid, axis=1, dtype=jnp.int32)
    slots = jnp.arange(length, dtype=jnp.int32)
    positions = jnp.maximum(slots[None, :] - offsets[:, None], 0)
    # the cache is empty; within the prompt: causal, real tokens (segment 1) see real tokens, padding
    # (segment 0) sees padding only; the configured attention kernel runs it
    masks = (None, valid.astype(jnp.int32))
    logits, cache = _llm_forward(static, params, None, positions, masks,
                                 init_cache(static.llm_config, batch, max_len), jnp.int32(0),
                                 input_embeddings=_embed(static, params, tokens, images, image_slots), last_only=True)
    first = choose_tokens(logits[:, 0], step_keys(rng, jnp.int32(0), batch), knobs.temperature, knobs.top_p)
    generated = jnp.full((batch, max_len), knobs.pad_id, jnp.int32).at[:, 0].set(first)
    all_valid = jnp.zeros((batch, max_len), bool).at[:, :length].set(valid)
    return DecodeState(cache, all_valid, offsets, jnp.int32(length), first, _is_eos(first, knobs), generated,
                       jnp.int32(1), rng)


def _step(static: Static, params: Any, state: DecodeState, knobs: Knobs) -> DecodeState:
    """Feed state.last at slot state.index and choose the next token of every row."""
    batch = state.last.shape[0]
    positions = (state.index - state.offsets)[:, None]
    masks = (state.valid, jnp.ones((batch, 1, 1, 1), bool))  # every real earlier slot, and itself
    logits, cache = _llm_forward(static, params, state.last[:, None], positions, masks, state.cache, state.index)
    valid = jax.lax.dynamic_update_slice(state.valid, jnp.ones((batch, 1), bool), (0, state.index))
    chosen = choose_tokens(logits[:, 0], step_keys(state.rng, state.step, batch), knobs.temperature, knobs.top_p)
    chosen = jnp.where(state.done, knobs.pad_id, chosen)
    tokens = jax.lax.dynamic_update_slice(state.tokens, chosen[:, None], (0, state.step))
    return DecodeState(cache, valid, state.offsets, state.index + 1, chosen, state.done | _is_eos(chosen, knobs),
                       tokens, state.step + 1, state.rng)


step_fn = jax.jit(_step, static_argnums=0, donate_argnums=2)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def decode_fn(static: Static, params: Any, state: DecodeState, max_new_tokens: jax.Array, knobs: Knobs) -> DecodeState:
    """Decode steps in one while_loop until max_new_tokens are generated or every row has stopped."""
    def running(s: DecodeState) -> jax.Array:
        return (s.step < max_new_tokens) & ~jnp.all(s.done)
    return jax.lax.while_loop(running, lambda s: _step(static, params, s, knobs), state)


class Generator:
    """Prefill + decode for a MobileLLaMA (LlamaConfig) or MobileVLM (VLMConfig) parameter tree.

    max_len: cache slots per row (prompt with image slots widened + new tokens - 1 must fit); default
    the LLM's max_position_embeddings. eos_ids / pad_id default to the LLM config's ids.
    devices: data parallelism: the parameters are replicated on these devices and each batch's rows are
    split over them (a batch is padded with copies of its last prompt to a multiple of their number; the
    copies' outputs are dropped). Default: the first device only.
    """

    def __init__(self, config: LlamaConfig | VLMConfig, params: Any, max_len: int | None = None,
                 eos_ids: int | Sequence[int] | None = None, pad_id: int | None = None,
                 devices: Sequence[jax.Device] | None = None):
        if not isinstance(config, (LlamaConfig, VLMConfig)):
            raise TypeError(f"generation needs an LLM or VLM checkpoint, not {type(config).__name__}")
        self.config = config
        self.llm_config = config.llm if isinstance(config, VLMConfig) else config
        self.max_len = int(max_len or self.llm_config.max_position_embeddings)
        limit = position_limit(self.llm_config)
        if limit is not None and self.max_len > limit:
            raise ValueError(f"max_len {self.max_len} is past the model's extended context: "
                             f"{describe_limit(self.llm_config)}")
        self.eos_ids = _eos_tuple(self.llm_config.eos_token_id if eos_ids is None else eos_ids)
        if len(self.eos_ids) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} EOS ids, got {len(self.eos_ids)}")
        self.pad_id = int(pad_id if pad_id is not None else (self.llm_config.pad_token_id or 0))
        self.devices = list(devices or jax.local_devices()[:1])
        mesh = jax.sharding.Mesh(np.asarray(self.devices), ("data",))
        self.row_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self.params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        self.static = Static.of(config, self.max_len)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, **kwargs: Any) -> "Generator":
        from mvlm_jax.checkpoint import load_model

        params, config = load_model(directory)
        return cls(config, params, **kwargs)

    @property
    def num_visual_tokens(self) -> int:
        return self.config.num_visual_tokens if isinstance(self.config, VLMConfig) else 0

    def knobs(self, sampling: SamplingConfig) -> Knobs:
        eos = np.full(MAX_EOS_IDS, -1, np.int32)
        eos[:len(self.eos_ids)] = self.eos_ids
        return Knobs(jnp.float32(sampling.temperature), jnp.float32(sampling.top_p), jnp.asarray(eos),
                     jnp.int32(self.pad_id))

    def prompt_length(self, ids: np.ndarray | Sequence[int]) -> int:
        """Cache slots a prompt takes: its ids with each IMAGE_TOKEN widened to num_visual_tokens."""
        ids = np.asarray(ids)
        return len(ids) + int(np.sum(ids == IMAGE_TOKEN)) * (self.num_visual_tokens - 1)

    # ---- host side: requests -> padded arrays ----

    def _widen(self, index: int, request: Request) -> tuple[np.ndarray, int]:
        """(ids with the image widened to placeholder 0s, image start or -1); checks the request."""
        ids = np.asarray(request.ids, np.int32).reshape(-1)
        where = np.flatnonzero(ids == IMAGE_TOKEN)
        if len(ids) == 0:
            raise ValueError(f"prompt {index} is empty")
        if len(where) > 1:
            raise ValueError(f"prompt {index} has {len(where)} image tokens; at most one image per prompt")
        if len(where) and request.image is None:
            raise ValueError(f"prompt {index} has an image token but no image")
        if request.image is not None and not len(where):
            raise ValueError(f"prompt {index} has an image but no image token (<image>) to place it")
        if len(where) and not isinstance(self.config, VLMConfig):
            raise ValueError("this is a text-only LLM checkpoint; images need a MobileVLM checkpoint")
        if not len(where):
            return ids, -1
        slot = int(where[0])
        widened = np.concatenate([ids[:slot], np.zeros(self.num_visual_tokens, np.int32), ids[slot + 1:]])
        return widened, slot

    def _batch(self, requests: Sequence[Request], max_new_tokens: int) -> dict[str, Any]:
        if not requests:
            raise ValueError("no prompts")
        widened = [self._widen(i, r) for i, r in enumerate(requests)]
        limit = self.max_len - max_new_tokens + 1  # slots left for the prompt
        for i, (ids, _) in enumerate(widened):
            if len(ids) > limit:
                scaled = position_limit(self.llm_config) is not None
                raise ValueError(f"prompt {i} takes {len(ids)} positions (image slots included); with "
                                 f"max_new_tokens {max_new_tokens} it needs {len(ids) + max_new_tokens - 1} of "
                                 f"the {self.max_len} cache positions (max_len)"
                                 + (f"; the model's extended context: {describe_limit(self.llm_config)}" if scaled else ""))
        length = bucket_length(max(len(ids) for ids, _ in widened), limit)
        tokens = np.full((len(requests), length), self.pad_id, np.int32)
        valid = np.zeros((len(requests), length), bool)
        slots = np.full((len(requests), 1), -1, np.int32)
        for row, (ids, slot) in enumerate(widened):
            offset = length - len(ids)
            tokens[row, offset:], valid[row, offset:] = ids, True
            if slot >= 0:
                slots[row, 0] = offset + slot
        images = None
        if any(r.image is not None for r in requests):
            shape = next(np.shape(r.image) for r in requests if r.image is not None)
            images = np.stack([np.zeros(shape, np.float32) if r.image is None else np.asarray(r.image, np.float32)
                               for r in requests])[:, None]  # [batch, 1, H, W, 3]
        return dict(tokens=tokens, valid=valid, images=images, image_slots=slots)

    # ---- public API ----

    def prefill(self, requests: Sequence[Request], sampling: SamplingConfig) -> DecodeState:
        """Run the prompts; the returned state holds the cache and each row's first generated token."""
        requests = list(requests)
        requests += requests[-1:] * (-len(requests) % len(self.devices))  # rows divide over the devices
        batch = self._batch(requests, sampling.max_new_tokens)
        rows = {k: None if v is None else jax.device_put(v, self.row_sharding) for k, v in batch.items()}
        return prefill_fn(self.static, self.params, rows["tokens"], rows["valid"], rows["images"],
                          rows["image_slots"], jax.random.key(sampling.seed), self.knobs(sampling))

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig = SamplingConfig()) -> list[Completion]:
        """Complete every prompt; the whole decode loop is one jitted while_loop."""
        state = self.prefill(requests, sampling)
        state = decode_fn(self.static, self.params, state, jnp.int32(sampling.max_new_tokens), self.knobs(sampling))
        return self.completions(np.asarray(state.tokens), int(state.step))[:len(requests)]

    def stream(self, requests: Sequence[Request], sampling: SamplingConfig = SamplingConfig()) -> Iterator[np.ndarray]:
        """Yield each step's tokens, [batch] int32 (pad_id for rows already stopped), one jitted step at a time."""
        state, rows = self.prefill(requests, sampling), len(requests)
        yield np.asarray(state.last)[:rows]
        knobs = self.knobs(sampling)
        for _ in range(sampling.max_new_tokens - 1):
            if bool(np.all(np.asarray(state.done))):
                return
            state = step_fn(self.static, self.params, state, knobs)
            yield np.asarray(state.last)[:rows]

    def completions(self, tokens: np.ndarray, steps: int) -> list[Completion]:
        """Cut each row of generated tokens [batch, >= steps] at its first EOS."""
        out = []
        for row in tokens[:, :steps].tolist():
            stop = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
            out.append(Completion(row, "length") if stop is None else Completion(row[:stop], "eos"))
        return out
