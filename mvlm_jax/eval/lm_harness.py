"""lm-evaluation-harness 0.4.13 model `mvlm_jax`: a mvlm-jax checkpoint (a text LLM, or the LLM of a VLM)
scored and sampled with JAX, fed exactly as lm-eval's own `hf` model feeds a LLaMA tokenizer.

    from mvlm_jax.eval.lm_harness import MvlmJaxLM
    lm = MvlmJaxLM(ckpt="runs/ckpt", batch_size=16)            # or create_from_arg_string("ckpt=...,batch_size=16")
    lm_eval.simple_evaluate(model=lm, tasks=[...], task_manager=...)

lm-eval 0.4.13 finds models only in its own registry (lm_eval/models/__init__.py MODEL_MAPPING); it reads no
entry-point group, so a plain `lm_eval` process never sees this model. Importing this module registers
`mvlm_jax`; lm-eval's own command line with it registered is `mvlm eval lm harness ...` (lm_cli.py):

    mvlm eval lm harness --model mvlm_jax --model_args ckpt=DIR --tasks arc_easy --include_path TASK_DIR \
        --batch_size 16                                   (any `lm_eval` arguments)

What matches lm-eval's `hf` model (lm_eval/models/huggingface.py) and why:
- Tokens: HF's LLaMA tokenizer prepends BOS (add_special_tokens=True) to every encode, so a context is
  BOS + sp(context); a continuation is sp(context + continuation) minus the context's tokens
  (TemplateLM._encode_pair); an empty context is [BOS] (prefix_token_id) and its continuation has no BOS.
- Log-likelihood: the input is (context + continuation)[-(max_length + 1):][:-1] (truncated from the left),
  the score is the sum of the continuation's log-softmax values, is_greedy that every continuation token
  is the argmax. Requests are sorted longest first; rows of a batch are right-padded (causal attention:
  padding never reaches real positions). Requests with the same input (multiple choice with one-token
  answers) share one row, as HF's logits cache does.
- Rolling log-likelihood: disjoint windows of max_length over BOS + sp(text) with BOS as the prefix token
  (lm_eval.utils.get_rolling_token_windows / make_disjoint_window); like `hf`, the text's own BOS is
  therefore scored too (log p(BOS | BOS) in the first window).
- Generation: greedy (unless do_sample/temperature say otherwise), the context truncated from the left to
  max_length - max_gen_toks, stopping at EOS or once a stop string (`until`, plus "</s>") appears; the
  decoded text is cut at the first stop string.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pickle
from collections import defaultdict
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from mvlm_jax.checkpoint import load_model
from mvlm_jax.generate.engine import Generator, Request
from mvlm_jax.generate.prompts import find_tokenizer
from mvlm_jax.generate.sampling import SamplingConfig
from mvlm_jax.models.config import LlamaConfig, VLMConfig
from mvlm_jax.models.layers import DTYPES
from mvlm_jax.models.llama import MobileLLaMA

log = logging.getLogger(__name__)

MODEL_NAME = "mvlm_jax"
DEFAULT_BATCH_SIZE = 16
MIN_BUCKET = 16
MAX_GEN_TOKS = 256  # lm-eval's `hf` default
GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "seed"}  # what generate_until honours

# A loglikelihood request as TemplateLM hands it over: ((context, continuation) or None, context ids, continuation ids)
TokenRequest = tuple[Any, Sequence[int], Sequence[int]]


def bucket_length(length: int, limit: int) -> int:
    """Padded row length: the next power of two (at least MIN_BUCKET), capped at `limit` (>= length), so
    a run compiles the forward for a handful of shapes."""
    bucket = max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length())
    return max(length, min(bucket, limit))


@functools.partial(jax.jit, static_argnums=0)
def score_rows(config: LlamaConfig, params: Any, tokens: jax.Array, lengths: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """tokens: [batch, length] int32, right-padded; lengths: [batch] int32 real tokens per row.

    Returns next_logprobs [batch, length - 1] float32 (log p(tokens[:, i + 1] | tokens[:, :i + 1])),
    greedy [batch, length] int32 (argmax per position), last [batch, vocab] float32 (the log-softmax at
    each row's last real position, which scores the token after the row)."""
    logits = MobileLLaMA(config).apply({"params": params}, tokens)  # float32 [batch, length, vocab]
    normalizer = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    next_logprobs = picked - normalizer[:, :-1]
    rows = jnp.arange(tokens.shape[0])
    last = logits[rows, lengths - 1] - normalizer[rows, lengths - 1][:, None]
    return next_logprobs, jnp.argmax(logits, axis=-1).astype(jnp.int32), last


def _batch_size(value: int | str | None) -> int:
    """lm-eval's --batch_size may be an int, a digit string or 'auto[:N]' (treated as the default)."""
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.startswith("auto"):
        log.warning("batch_size %r: no automatic batch size here; using %d", value, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


@register_model(MODEL_NAME)
class MvlmJaxLM(TemplateLM):
    """lm-eval model over a mvlm-jax checkpoint. Model args (`--model_args key=value,...`):

    ckpt: checkpoint directory (mvlm_jax.checkpoint; an LLM, or a VLM whose LLM is evaluated)
    tokenizer: SentencePiece model (default CKPT/tokenizer.model)
    batch_size: rows per forward (lm-eval's --batch_size also lands here; 'auto' means the default 16)
    max_length: context window (default the model's max_position_embeddings)
    max_gen_toks: default generation budget when a task sets none (256, as `hf`)
    dtype: compute dtype override (float32 | bfloat16 | float16; default the checkpoint's)
    """

    def __init__(self, ckpt: str, tokenizer: str | None = None, batch_size: int | str | None = None,
                 max_length: int | None = None, max_gen_toks: int = MAX_GEN_TOKS, dtype: str | None = None,
                 max_batch_size: int | None = None, device: str | None = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise TypeError(f"unknown model_args for {MODEL_NAME}: {', '.join(sorted(unknown))} (expected ckpt, "
                            "tokenizer, batch_size, max_length, max_gen_toks, dtype)")
        del max_batch_size, device  # lm-eval passes them to every model; JAX places arrays itself
        params, config = load_model(ckpt)
        if isinstance(config, VLMConfig):
            params, config = params["llm"], config.llm
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"{ckpt}: a {type(config).__name__} checkpoint; lm-eval needs an LLM or VLM checkpoint")
        if dtype is not None:
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
            config = dataclasses.replace(config, dtype=dtype)
        self.ckpt = str(ckpt)
        self.config = dataclasses.replace(config, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        self.sp = find_tokenizer(ckpt, tokenizer)
        if self.sp.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer {self.sp.path} has {self.sp.vocab_size} pieces but the model only "
                             f"{config.vocab_size} embeddings")
        eos = config.eos_token_id if config.eos_token_id is not None else self.sp.eos_id
        self.eos_ids = tuple(eos) if isinstance(eos, (tuple, list)) else (int(eos),)
        # one device per process: under jax.distributed each process evaluates its own share of documents
        self.params = jax.device_put(params, jax.local_devices()[0])
        self._batch = _batch_size(batch_size)
        self._max_length = int(max_length or config.max_position_embeddings)
        self._max_gen_toks = int(max_gen_toks)
        self._generator: Generator | None = None

    # ---- what TemplateLM needs ----

    @property
    def eot_token_id(self) -> int:
        return self.sp.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.sp.bos_id  # as `hf` for a tokenizer with a BOS token

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def rank(self) -> int:
        return jax.process_index()

    @property
    def world_size(self) -> int:
        return jax.process_count()

    @property
    def tokenizer_name(self) -> str:
        return f"{self.sp.path.name}-{self.sp.sha256[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """BOS + SentencePiece ids, as HF's LLaMA tokenizer encodes (add_special_tokens None or True); no
        BOS for add_special_tokens=False. A string that already starts with "<s>" gets no second BOS."""
        bos_piece = self.sp.piece(self.sp.bos_id)
        bos = add_special_tokens is not False
        if add_special_tokens is None and string.startswith(bos_piece):
            string, bos = string[len(bos_piece):], True  # HF reads the "<s>" text as the BOS token itself
        ids = self.sp.encode(string, bos=bos)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.sp.decode(tokens)  # SentencePiece drops control pieces (BOS, EOS) when decoding

    # ---- log-likelihoods ----

    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is greedy) per request, in request order."""
        rows: dict[tuple[int, ...], list[int]] = defaultdict(list)  # input row -> indices of its requests
        for index, (_, context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise ValueError(f"request {index}: empty context or continuation tokens")
            if len(continuation) > self.max_length:
                raise ValueError(f"request {index}: continuation of {len(continuation)} tokens exceeds "
                                 f"max_length {self.max_length}")
            whole = list(context) + list(continuation)
            rows[tuple(whole[-(self.max_length + 1):][:-1])].append(index)
        ordered = sorted(rows, key=lambda row: (-len(row), row))  # longest first, as lm-eval's Collator
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests") as progress:
            for start in range(0, len(ordered), self.batch_size):
                chunk = ordered[start:start + self.batch_size]
                next_logprobs, greedy, last = self._score(chunk)
                for r, row in enumerate(chunk):
                    n = len(row)
                    for index in rows[row]:
                        continuation = list(requests[index][2])
                        k = len(continuation)
                        # positions n-k .. n-2 predict tokens already in the row; n-1 predicts the last one
                        logprob = float(np.sum(next_logprobs[r, n - k:n - 1], dtype=np.float64)
                                        + last[r, continuation[-1]])
                        is_greedy = bool(np.array_equal(greedy[r, n - k:n], continuation))
                        results[index] = (logprob, is_greedy)
                        if requests[index][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[index][0], results[index])
                        progress.update(1)
        return results  # type: ignore[return-value]

    def _score(self, chunk: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run up to batch_size rows, padded to [batch_size, bucket], through score_rows."""
        length = bucket_length(max(len(row) for row in chunk), self.max_length)
        tokens = np.zeros((self.batch_size, length), np.int32)
        lengths = np.ones(self.batch_size, np.int32)  # padding rows: one token, results unused
        for r, row in enumerate(chunk):
            tokens[r, :len(row)], lengths[r] = row, len(row)
        outputs = score_rows(self.config, self.params, tokens, lengths)
        return tuple(np.asarray(x) for x in outputs)  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Full-text log-likelihood over disjoint windows of max_length tokens (`hf`'s windows)."""
        windows: list[tuple[int, TokenRequest]] = []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((index, (None, context, continuation)))
        scores = self._loglikelihood_tokens([window for _, window in windows], disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for (index, _), (logprob, _) in zip(windows, scores):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ----

    @property
    def generator(self) -> Generator:
        if self._generator is None:  # built on first use: most tasks never generate
            self._generator = Generator(self.config, self.params, max_len=self.max_length, eos_ids=self.eos_ids,
                                        pad_id=self.sp.pad_id)
        return self._generator

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continuations cut at the first stop string, for [(context, gen_kwargs)] requests."""
        groups: dict[str, list[int]] = defaultdict(list)  # one sampling setting per group, as `hf`
        for index, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(index)
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running generate_until requests") as progress:
            for indices in groups.values():
                gen_kwargs = requests[indices[0]].args[1]
                unsupported = set(gen_kwargs) - GEN_KWARGS
                if unsupported:
                    raise ValueError(f"generation kwargs {sorted(unsupported)} are not supported by {MODEL_NAME} "
                                     f"(supported: {sorted(GEN_KWARGS)})")
                kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                until = handle_stop_sequences(kwargs["until"], eos=self.sp.piece(self.eot_token_id))
                temperature = float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0
                sampling = SamplingConfig(max_new_tokens=kwargs["max_gen_toks"], temperature=temperature,
                                          top_p=float(kwargs.get("top_p", 1.0)), seed=int(kwargs.get("seed", 0)))
                max_context = self.max_length - sampling.max_new_tokens
                if max_context <= 0:
                    raise ValueError(f"max_gen_toks {sampling.max_new_tokens} leaves no room for a context in "
                                     f"max_length {self.max_length}")
                contexts = {i: self.tok_encode(requests[i].args[0], left_truncate_len=max_context) for i in indices}
                ordered = sorted(indices, key=lambda i: (-len(contexts[i]), requests[i].args[0]))
                for start in range(0, len(ordered), self.batch_size):
                    chunk = ordered[start:start + self.batch_size]
                    generated = self.generate_ids([contexts[i] for i in chunk], sampling, until)
                    for i, ids in zip(chunk, generated):
                        results[i] = postprocess_generated_text(self.tok_decode(ids), until, None)
                        self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                        progress.update(1)
        return results  # type: ignore[return-value]

    def generate_ids(self, contexts: list[list[int]], sampling: SamplingConfig, until: list[str]) -> list[list[int]]:
        """New ids (without EOS) of one batch, padded to batch_size with copies so that decoding compiles
        once; steps until every row has produced an EOS or decodes to a text holding a stop string."""
        padded = contexts + [contexts[0]] * (self.batch_size - len(contexts))
        generated: list[list[int]] = [[] for _ in padded]
        finished = [False] * len(contexts) + [True] * (len(padded) - len(contexts))
        for step_tokens in self.generator.stream([Request(ids) for ids in padded], sampling):
            for row, token in enumerate(step_tokens.tolist()):
                if finished[row]:
                    continue
                if token in self.eos_ids:
                    finished[row] = True
                    continue
                generated[row].append(token)
                text = self.tok_decode(generated[row])
                finished[row] = any(stop and stop in text for stop in until)
            if all(finished):
                break
        return generated[:len(contexts)]

    # ---- several processes (jax.distributed): what lm-eval's evaluator calls when world_size > 1 ----

    def all_gather(self, tensor: Any) -> Any:
        """A torch tensor from every process, concatenated along a new leading axis (flattened)."""
        import torch
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.asarray(tensor.detach().cpu()))
        return torch.as_tensor(np.asarray(gathered)).reshape(-1)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every process's `obj` (pickled) as a list on process `dst`, None elsewhere."""
        from jax.experimental import multihost_utils

        payload = np.frombuffer(pickle.dumps(obj), np.uint8)
        sizes = np.asarray(multihost_utils.process_allgather(np.int64(payload.size))).reshape(-1)
        buffer = np.zeros(int(sizes.max()), np.uint8)
        buffer[:payload.size] = payload
        everyone = np.asarray(multihost_utils.process_allgather(buffer))
        if self.rank != dst:
            return None
        return [pickle.loads(everyone[p, :sizes[p]].tobytes()) for p in range(len(sizes))]

    def barrier(self) -> None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("mvlm_jax lm-eval barrier")

    def get_model_info(self) -> dict:
        return {"model_name": MODEL_NAME, "ckpt": os.path.abspath(self.ckpt), "tokenizer": str(self.sp.path),
                "tokenizer_sha256": self.sp.sha256, "dtype": self.config.dtype, "max_length": self.max_length}

