"""llama.cpp, through llama-cpp-python and its `mtmd` bindings: running exported GGUF files, and its quantizer.

Every use of llama.cpp in the package goes through this package (mvlm_jax/edge): the runtime and the
quantizer here, the `--gguf` generate/chat session in edge/session.py. (The GGUF files themselves are
written by mvlm_jax/export with the `gguf` package.)

One object holds the text model and, for a VLM, the mmproj context. Prompts are lists of segments, each
either token ids (ours, so JAX and llama.cpp see exactly the same ids) or an RGB image: an image segment
is encoded by mtmd (vision tower + projector) and its embeddings are decoded into the KV cache at the
current position, as llama.cpp's own multimodal CLI does.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from data_pipelines.templates import IMAGE_PLACEHOLDER

Segment = Union[Sequence[int], np.ndarray]  # token ids, or an image [H, W, 3] uint8


def _threads(n_threads: int | None) -> int:
    """The given count, else $MVLM_LLAMACPP_THREADS, else every core. ggml's threads spin at each barrier,
    so when other processes hold the cores (the test session's xdist workers) two threads run a tiny model
    ~200x slower than one; the test session sets 1."""
    return n_threads or int(os.environ.get("MVLM_LLAMACPP_THREADS") or 0) or os.cpu_count() or 1


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python's Llama() takes llama_model_default_params() as they are; this sets one field of
    them for the models loaded inside the block."""
    import llama_cpp.llama_cpp as bindings

    default = bindings.llama_model_default_params

    def params():
        value = default()
        value.use_extra_bufts = use_extra_bufts
        return value
    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


class LlamaCppModel:
    """A GGUF LLM (+ optional mmproj) in llama.cpp on the CPU. Use as a context manager or call close()."""

    def __init__(self, model_path: str | os.PathLike, mmproj_path: str | os.PathLike | None = None,
                 n_ctx: int = 1024, n_threads: int | None = None, n_batch: int = 512, logits_all: bool = True):
        """`logits_all=False` computes only the last position's logits (what llama.cpp's CLI does; timing
        runs want it); `logits()` then needs logits_all=True, `prefill()` works either way."""
        import llama_cpp

        for path in [model_path] + ([mmproj_path] if mmproj_path else []):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: GGUF file not found")
        self._lib = llama_cpp
        # ggml's extra buffer types repack weights for the CPU; on CPUs with AMX that is its AMX path, which
        # crashes (SIGSEGV in the first Q8_0 matmul) in VMs that do not grant AMX tile state, as on the
        # Xeon these tests ran on; elsewhere the repacking stays on (it speeds up Q4_0 on AVX2 and ARM).
        with _model_params(use_extra_bufts=not _cpu_has_amx()):
            self.llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                       n_threads=_threads(n_threads), n_threads_batch=_threads(n_threads),
                                       logits_all=logits_all, verbose=False)
        self.n_batch = n_batch
        self.logits_all = logits_all
        self.mtmd = None
        if mmproj_path is not None:
            from llama_cpp import _logger, mtmd_cpp

            self._mtmd_lib = mtmd_cpp
            # mtmd logs every image at INFO level; route it through llama-cpp-python's logger (errors only
            # unless verbose), as the text model already is.
            mtmd_cpp.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            mtmd_cpp.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            params = mtmd_cpp.mtmd_context_params_default()
            params.use_gpu = False
            params.n_threads = _threads(n_threads)
            params.print_timings = False
            params.warmup = False
            self.mtmd = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), self.llm.model, params)
            if not self.mtmd:
                self.llm.close()  # the caller never gets an object to close
                raise RuntimeError(f"llama.cpp could not load the mmproj {mmproj_path} for {model_path} "
                                   "(run with verbose llama.cpp logs to see why)")

    # -- text ----------------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Per-position logits [len(tokens), vocab] of a fresh sequence."""
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[:len(tokens)], np.float32)

    # -- images --------------------------------------------------------------------------------------
    def _image_chunks(self, image: np.ndarray):
        """mtmd chunks of one image (through the media marker), with the bitmap that backs them."""
        mtmd = self._mtmd_lib
        if self.mtmd is None:
            raise ValueError("this model has no mmproj; pass mmproj_path to use images")
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got {list(image.shape)}")
        height, width = image.shape[:2]
        data = (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())
        bitmap = mtmd.mtmd_bitmap_init(width, height, data)
        chunks = mtmd.mtmd_input_chunks_init()
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        status = mtmd.mtmd_tokenize(self.mtmd, chunks, ctypes.byref(text), bitmaps, 1)
        if status != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
            raise RuntimeError(f"mtmd could not tokenize the image (status {status})")
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                return chunks, chunk, bitmap
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        raise RuntimeError("mtmd produced no image chunk")

    def _free(self, chunks, bitmap) -> None:
        self._mtmd_lib.mtmd_input_chunks_free(chunks)
        self._mtmd_lib.mtmd_bitmap_free(bitmap)

    def image_embeddings(self, image: np.ndarray) -> np.ndarray:
        """llama.cpp's embeddings of one RGB image [H, W, 3] uint8: [visual_tokens, n_embd] float32."""
        mtmd = self._mtmd_lib
        chunks, chunk, bitmap = self._image_chunks(image)
        try:
            if mtmd.mtmd_encode_chunk(self.mtmd, chunk) != 0:
                raise RuntimeError("mtmd failed to encode the image")
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            embd = mtmd.mtmd_get_output_embd(self.mtmd)
            return np.ctypeslib.as_array(embd, shape=(n_tokens * self.llm.n_embd(),)).reshape(n_tokens, -1).copy()
        finally:
            self._free(chunks, bitmap)

    def _eval_image(self, image: np.ndarray, logits_last: bool) -> None:
        mtmd = self._mtmd_lib
        chunks, chunk, bitmap = self._image_chunks(image)
        try:
            new_n_past = self._lib.llama_pos(0)
            status = mtmd.mtmd_helper_eval_chunk_single(self.mtmd, self.llm.ctx, chunk, self.llm.n_tokens, 0,
                                                        self.n_batch, logits_last, ctypes.byref(new_n_past))
            if status != 0:
                raise RuntimeError(f"llama.cpp failed to evaluate the image (status {status})")
            self.llm.n_tokens = int(new_n_past.value)  # positions continue after the image's tokens
        finally:
            self._free(chunks, bitmap)

    # -- prompts and generation ----------------------------------------------------------------------
    def prefill(self, segments: Sequence[Segment]) -> np.ndarray:
        """Evaluate a fresh prompt; returns the logits [vocab] of its last position."""
        self.llm.reset()
        segments = [s for s in segments if (isinstance(s, np.ndarray) and s.ndim == 3) or len(s)]
        if not segments:
            raise ValueError("empty prompt")
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            if isinstance(segment, np.ndarray) and segment.ndim == 3:
                self._eval_image(segment, logits_last=last)
            elif len(segment):
                self.llm.eval(list(int(t) for t in segment))
            # llama.cpp books decode time when the context synchronizes; without this the time from the
            # first queued decode on (an image encode included) lands in one prompt-eval entry.
            self._lib.llama_synchronize(self.llm.ctx)
        if not self.logits_all or (isinstance(segments[-1], np.ndarray) and segments[-1].ndim == 3):
            row = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
            return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()
        return np.array(self.llm.scores[self.llm.n_tokens - 1], np.float32)

    def next_logits(self) -> np.ndarray:
        """Logits [vocab] of the last evaluated position."""
        return np.array(self.llm.scores[self.llm.n_tokens - 1], np.float32)

    def greedy(self, segments: Sequence[Segment], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
        """Greedy continuation of the prompt; stops after `eos_id` (included) or `max_new_tokens`."""
        logits = self.prefill(segments)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            out.append(token)
            if token == eos_id:
                break
            self.llm.eval([token])
            logits = self.next_logits()
        return out

    def close(self) -> None:
        if self.mtmd is not None:
            self._mtmd_lib.mtmd_free(self.mtmd)
            self.mtmd = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prompt_segments(runtime: LlamaCppModel, text: str, image: np.ndarray | None) -> list[Segment]:
    """A text prompt with "<image>" where the image goes -> segments, tokenized by llama.cpp's vocabulary:
    the text before the marker (with BOS), the image, the text after it (each chunk on its own, as training
    tokenizes around the image). Without an image "<image>" is plain text."""
    before, marker, after = text.partition(IMAGE_PLACEHOLDER)
    if not marker or image is None:
        return [runtime.tokenize(text, add_bos=True)]
    return [runtime.tokenize(before, add_bos=True), image, runtime.tokenize(after, add_bos=False)]


def quantize(source: str | os.PathLike, target: str | os.PathLike, ftype: int, threads: int = 0) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`): the GGUF at `source` to `target` in file type
    `ftype` (a llama_ftype, e.g. gguf.LlamaFileType.MOSTLY_Q4_K_S); K-quants need it (gguf-py cannot)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = threads or os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} (llama_ftype {int(ftype)}, status {status})")
