"""Helpers that experiment files are built from (big_vision style): every key a run reads, with defaults.

An experiment's get_config(arg) starts from `base_config()` and sets what its recipe changes; the command
line overrides any key with --config.a.b=value, and an unknown key is an error.
"""
from __future__ import annotations

import ml_collections

from mvlm_jax.sharding import LOGICAL_RULES, rules_as_config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # attention: the LLM's kernel, auto | xla | causal_blocks | splash | cudnn (mvlm_jax/models/attention.py);
    # auto picks splash on TPU, cudnn on CUDA GPUs and xla elsewhere, for the devices the run compiles for.
    c.model = dict(kind="llm", llm="tiny", vision="tiny", projector="ldp", dtype="float32", remat="none",
                   attention="auto", llm_overrides={}, vision_overrides={},
                   lora=dict(rank=0, alpha=256.0, dropout=0.0,
                             targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
                   # kind="classifier" (vision pretraining): the tower, the projector (projector="" for none)
                   # into the width of `llm`, a pooling head (map | gap) and one logit per data.classes entry;
                   # position_weight > 0 adds a second objective: each token's own row and column (of a grid
                   # of position_cells per side; 0: the token grid).
                   classifier=dict(head="map", head_heads=4, head_cells=2, position_weight=0.0, position_cells=0))
    # Checkpoints to start from when the workdir has none: "part=dir" ("llm=ckpt/sft", "vision=ckpt/clip",
    # "projector=ckpt/stage1") or "=dir" for the whole model.
    c.init_from = ()
    # cache: conversation files are tokenized once into cache_dir ("" = $MVLM_CACHE or ~/.cache/mvlm-jax;
    # data_pipelines/example_cache.py). answer_weight_power: each answer's target tokens weigh
    # len(answer) ** -power in the training loss (0: the mean over target tokens; data_pipelines/conversations.py).
    c.data = dict(kind="pretrain", shards=(), mixture="", mixture_dirs={}, seq_len=128, seed=0,
                  reset_attention_at_eos=False, workers=0, files=(), format="sharegpt", template="vicuna_v1",
                  tokenizer="", image_root="", pad_images=True, images_per_row=1, pack=True, packer="next_fit",
                  cache=True, cache_dir="", classes=(), answer_weight_power=0.0,
                  embedded=dict(enabled=False, root="", size="tiny", vocab_size=512, image_size=64, files=("sharegpt",)))
    # epochs > 0 (conversation data): total_steps becomes the whole global batches of that many epochs of
    # packed rows, counted from the data at start (mvlm_jax.train.setup.epoch_plan).
    c.train = dict(total_steps=100, epochs=0, batch_size=8, accumulation_steps=1, seed=0, trainable=(".*",),
                   frozen=())
    # warmup_ratio > 0 replaces warmup_steps with ceil(ratio * total_steps), as HF Trainer's warmup_ratio.
    c.optim = dict(learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=10, warmup_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8,
                   weight_decay=0.1, grad_clip_norm=1.0, lr_multipliers=())
    # rules: logical axis name -> mesh axes ((): replicated), the defaults of mvlm_jax.sharding.LOGICAL_RULES;
    # change one with c.mesh.rules.embed = ("fsdp", "tensor") or --config.mesh.rules.embed="('fsdp','tensor')".
    c.mesh = dict(data=-1, fsdp=1, tensor=1, rules=rules_as_config(LOGICAL_RULES))
    # The stage's token loss (mvlm_jax.train.losses): next-token cross-entropy over the loss mask, optionally
    # against label-smoothed targets.
    c.loss = dict(kind="cross_entropy", label_smoothing=0.0)
    c.checkpoint = dict(every=50, keep=3, keep_every=None, async_save=True)
    # Validation loss every `every` steps and at the last one (0: off) over `batches` fixed global batches of
    # held-out data: token shards (`shards`, pretraining) or conversation files (`files`, read like
    # data.files); with neither set, data.embedded's val split. The benchmark keys (image benchmarks by
    # name, at most `limit` questions each, 0: all, question files under `data_root`) are read by the
    # benchmark hook.
    c.eval = dict(every=0, batches=4, shards=(), files=(), benchmarks=(), limit=0, data_root="", benchmark_every=0,
                  batch_size=16)
    # Short names for the two keys every run sets: --config.total_steps=N --config.checkpoint_every=N.
    # They are references to train.total_steps and checkpoint.every, so either spelling changes both.
    c.total_steps = c.train.get_ref("total_steps")
    c.checkpoint_every = c.checkpoint.get_ref("every")
    return c


def parse_arg(arg: str | None) -> dict[str, str]:
    """"size=1.4b,stage=2" or a bare "tiny" (-> size=tiny)."""
    out: dict[str, str] = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        out.update({key: value} if value else {"size": key})
    return out


def embedded_demo(c: ml_collections.ConfigDict) -> None:
    """`demo` size: the embedded dataset's demo split with 336-pixel images (the demo tower's 24x24 grid),
    one shared data directory when `data.embedded.root` is set (make demo sets it)."""
    c.data.embedded.update(enabled=True, size="demo", image_size=336)
    # XLA:CPU's dense attention computes every masked score; rows of 512 train about 2x faster per attention
    # layer without the blocks after the diagonal (bench.attention, docs/PERFORMANCE.md).
    c.model.attention = "causal_blocks"


def parse_context(value: str) -> int:
    """"8k" -> 8192, "512" -> 512."""
    text = value.strip().lower()
    try:
        return int(text[:-1]) * 1024 if text.endswith("k") else int(text)
    except ValueError:
        raise ValueError(f"context={value!r}: expected a number of tokens such as 512 or 8k") from None


def long_context(c: ml_collections.ConfigDict, context: str, pretrained: str) -> ml_collections.ConfigDict:
    """The position-interpolation fine-tune of a pretraining recipe `c` (trained at c.data.seq_len) at
    `context` tokens: RoPE scaled linearly by context / seq_len, packed rows of `context` tokens with the
    pretraining's tokens per step (fewer rows; accumulation and mesh unchanged), starting from the
    `pretrained` model checkpoint (init_from), no weight decay, a constant learning rate after 20 warmup
    steps. Chen et al. 2023 (arXiv 2306.15595) adapt LLaMA "within 1000 steps" (abstract); their setup
    as we recall it, not re-checked here: 1000 steps of 64 x 8192 tokens (0.5 B), lr 2e-5. The paper
    sizes take 100 steps of 5.2 M tokens at 2e-5 (about that token budget); the small ones a third of
    their pretraining steps at a third of its peak learning rate (our choice: a tenth was too short for a
    0.9M-parameter model, bench.rope_interpolation and docs/TRAINING.md)."""
    original, length = c.data.seq_len, parse_context(context)
    if length < original:
        raise ValueError(f"context={context}: {length} tokens is below the pretraining length {original} "
                         "(rope_scaling_factor would be below 1)")
    c.model.llm_overrides = dict(c.model.llm_overrides, rope_scaling_factor=length / original,
                                 original_max_position_embeddings=original, max_position_embeddings=length)
    c.data.seq_len = length
    c.init_from = (f"={pretrained}",)
    c.train.batch_size = max(c.train.accumulation_steps, c.train.batch_size * original // length)
    paper_scale = c.train.total_steps > 100_000
    steps = 100 if paper_scale else max(20, c.train.total_steps // 3)
    learning_rate = 2e-5 if paper_scale else c.optim.learning_rate / 3
    c.train.total_steps = steps
    c.optim.update(learning_rate=learning_rate, min_learning_rate=learning_rate, warmup_steps=min(20, steps // 5),
                   warmup_ratio=0.0, weight_decay=0.0)
    c.checkpoint.every = min(c.checkpoint.every, steps)
    if c.eval.every:
        c.eval.every = min(c.eval.every, steps)
    return c
