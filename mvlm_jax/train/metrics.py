"""What a run reports: FLOPs and MFU (MaxText's definition), and the writers (metrics.jsonl, TensorBoard).

Training FLOPs per step = 6 * (parameters touched per token) * tokens + attention FLOPs, with attention at
12 * layers * seq * (heads * head_dim) per token (forward 4, backward 8; causal masking not discounted, as
MaxText counts it). For a VLM the tower's forward (2 N per patch, frozen: no backward) and the projector
(its matmul and convolution FLOPs, forward + backward = 3x forward, as it always trains) are added per image.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from mvlm_jax.atomic import write_bytes
from mvlm_jax.models.config import ClassifierConfig, LlamaConfig, ProjectorConfig, VLMConfig
from mvlm_jax.models.llama import count_params as llama_params
from mvlm_jax.models.projectors import make_divisible
from mvlm_jax.models.vit import count_params as vit_params
from mvlm_jax.paths import as_path, is_url, probe
from mvlm_jax.train.partition import count

# Dense bf16 peak FLOP/s per device (vendor figures, without sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device_kind: str) -> float | None:
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def llm_flops_per_token(config: LlamaConfig, seq_len: int, trained_share: float = 1.0) -> float:
    """Forward 2N, backward 2N for activation gradients plus 2N for weight gradients of the trained share
    (a frozen LLM in VLM stage 1 or under LoRA still passes gradients through, but computes no weight
    gradients: 4N + 2N * share)."""
    embedding = config.vocab_size * config.hidden_size  # a lookup, not a matmul
    dense = llama_params(config) - embedding
    attention = 12 * config.num_layers * seq_len * config.num_heads * config.resolved_head_dim
    return (4 + 2 * trained_share) * dense + attention


def projector_forward_flops(config: ProjectorConfig, vision_width: int, hidden: int, num_tokens: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image through the projector: `num_tokens` vision features
    [num_tokens, vision_width] -> LLM embeddings of width `hidden`. Norms, activations and pooling are
    not counted (as MaxText counts only matmuls); a 3x3 depthwise convolution is 9 MACs per output value."""
    def mlp(tokens: int, width_in: int) -> float:
        return 2.0 * tokens * (width_in * hidden + hidden * hidden)

    if config.type == "mlp2x_gelu":
        return mlp(num_tokens, vision_width)
    if config.type == "ldpv2":
        return mlp(num_tokens, vision_width) + 2.0 * 9 * hidden * config.pool_side**2
    flops, channels, side = 0.0, vision_width, math.isqrt(num_tokens)
    if config.front_mlp:
        flops, channels = mlp(num_tokens, vision_width), hidden
    for stride in config.block_strides:
        side = (side - 1) // stride + 1
        squeeze = make_divisible(channels // 4, 8)
        flops += 2.0 * side * side * (9 * channels + channels * hidden) + 2.0 * 2 * channels * squeeze
        channels = hidden
    return flops


def trained_llm_share(config: Any, trainable: Any, frozen: Any) -> float:
    """The fraction of the LLM's weights in `trainable` (the split of the parameters, arrays or
    ShapeDtypeStructs): step_flops' `trained_share`. A VLM's LLM is its `llm/` part."""
    llm_part = (lambda tree: tree.get("llm", {})) if isinstance(config, VLMConfig) else (lambda tree: tree)  # noqa: E731
    trained = count(llm_part(trainable))
    return trained / max(trained + count(llm_part(frozen)), 1)


def tower_forward_flops(config: Any) -> float:
    """Multiply-add FLOPs of one image through the tower (a VisionConfig): 2 per parameter per position."""
    return vit_params(config) * config.num_positions * 2


def step_flops(config: Any, tokens: int, seq_len: int, images: int = 0, trained_share: float = 1.0) -> float:
    """Training FLOPs of one optimizer step over `tokens` tokens and `images` images; `trained_share`:
    the fraction of the LLM's weights that get gradients. A classifier: forward and backward of the tower and
    projector per image (its head is left out: one query over the tokens)."""
    if isinstance(config, ClassifierConfig):
        projector = (projector_forward_flops(config.projector, config.vision.width, config.embed_dim,
                                             config.vision.num_output_tokens) if config.projector else 0.0)
        return 3 * (tower_forward_flops(config.vision) + projector) * images
    llm = config.llm if isinstance(config, VLMConfig) else config
    flops = llm_flops_per_token(llm, seq_len, trained_share) * tokens
    if isinstance(config, VLMConfig) and images:
        tower = tower_forward_flops(config.vision)  # forward only
        projector = 3 * projector_forward_flops(config.projector, config.vision.width, llm.hidden_size,
                                                config.vision.num_output_tokens)
        flops += (tower + projector) * images
    return flops


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported with torch hidden when torch is not loaded yet: tensorboardX
    imports torch (about 5 s, a quarter of a tiny run's start-up) only to accept torch tensors, and this
    trainer logs Python floats."""
    import sys

    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """metrics.jsonl (one object per step) and TensorBoard events beside it. On resume, lines past the
    restored step (written by the interrupted run after its last checkpoint) are dropped, and the new event
    file starts with TensorBoard's purge marker for those steps (TensorBoard then hides the interrupted run's
    points past the restored step, instead of drawing two curves over them).

    Locally each line is appended and flushed. An object has no append, so on gs:// the lines are kept here
    and the whole file is put again (one put each, atomic) at most every `put_every_s` seconds, at sync()
    (the loop calls it before each checkpoint) and at close(); tensorboardX writes gs:// itself."""

    def __init__(self, workdir: str | os.PathLike, start_step: int, enabled: bool = True, put_every_s: float = 300.0):
        self.enabled = enabled
        self.path = as_path(workdir) / "metrics.jsonl"
        self._tensorboard = None
        self._remote = is_url(self.path)
        self._put_every_s, self._put_at = put_every_s, time.monotonic()
        if not enabled:
            return
        kept = []
        if probe(self.path):
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
        self._lines = [line + "\n" for line in kept]
        self._put()
        self._file = None if self._remote else open(self.path, "a")
        SummaryWriter = _summary_writer_class()
        self._tensorboard = SummaryWriter(os.fspath(as_path(workdir) / "tensorboard"),
                                          purge_step=start_step + 1 if start_step else None)

    def _put(self) -> None:
        """Replace the file with the lines so far (one rename locally, one put on an object store)."""
        write_bytes(self.path, "".join(self._lines).encode())
        self._put_at = time.monotonic()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self._remote:
            self._lines.append(line)
            if time.monotonic() - self._put_at >= self._put_every_s:
                self._put()
        else:
            self._file.write(line)
            self._file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step" and value is not None:
                self._tensorboard.add_scalar(key, value, record["step"])

    def sync(self) -> None:
        """Make every line written so far durable (an object store's copy is put now)."""
        if self.enabled and self._remote:
            self._put()

    def close(self) -> None:
        if self.enabled:
            self.sync()
            if self._file is not None:
                self._file.close()
            self._tensorboard.close()
