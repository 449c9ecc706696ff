"""LM pretraining of MobileLLaMA (paper 4.1).

  python -m mvlm_jax.train --config experiments/pretrain.py:tiny --workdir runs/pretrain-tiny
  python -m mvlm_jax.train --config experiments/pretrain.py:1.4b --workdir runs/pretrain-1.4b \
      --config.data.mixture_dirs.c4=/data/shards/c4 ...

1.4b / 2.7b: RedPajama v1 with the Table 12 mixture, sequences of 2048, global batch 2560 x 2048 tokens
(5,242,880), AdamW betas (0.9, 0.95), weight decay 0.1, peak 3e-4 cosine to 3e-5 after 2000 warmup
iterations, clipping 1.0, bf16 compute. tiny / demo: the embedded corpus on this CPU in minutes.

context=8k (any size; a number of tokens, "k" = 1024): the short position-interpolation fine-tune of a
pretrained model at a longer context (paper: "can be scaled to 8k for inference"; position interpolation
of Chen et al. 2023, arXiv 2306.15595: RoPE positions divided by context / pretraining length, then a
short fine-tune at the new length; mvlm_jax.train.recipes.long_context). It starts from init_from
(default runs/pretrain-SIZE/model, where the command above leaves the model) and trains packed rows of
the new length:

  python -m mvlm_jax.train --config experiments/pretrain.py:size=1.4b,context=8k --workdir runs/pretrain-1.4b-8k
  python -m mvlm_jax.train --config experiments/pretrain.py:size=tiny,context=512 --workdir runs/pretrain-tiny-512
"""
from mvlm_jax.train.recipes import base_config, embedded_demo, long_context, parse_arg

REDPAJAMA_PARTS = ("arxiv", "book", "c4", "common_crawl", "github", "stackexchange", "wikipedia")


def get_config(arg=None):
    args = parse_arg(arg)
    size = args.get("size", "tiny")
    c = _pretrain(size)
    return long_context(c, args["context"], f"runs/pretrain-{size}/model") if "context" in args else c


def _pretrain(size):
    c = base_config()
    c.model.llm = size
    if size == "tiny":
        c.data.embedded.enabled = True
        c.data.seq_len = 128
        c.train.update(total_steps=200, batch_size=8)
        c.optim.update(learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=20)
        c.checkpoint.every = 50
        c.eval.update(every=50, batches=2)  # the tiny val corpus has 6 windows of 128: one padded batch
        return c
    if size == "demo":  # make demo: about 0.8 epochs of the demo corpus (the loss flattens near 0.45 by then)
        embedded_demo(c)
        c.data.seq_len = 256
        c.train.update(total_steps=120, batch_size=16)
        c.optim.update(learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=20)
        c.checkpoint.every = 100
        c.eval.update(every=30, batches=4)  # 16,384 held-out tokens; about 4 % of the stage's time
        return c
    c.model.update(dtype="bfloat16", remat="dots_no_batch")
    c.data.update(mixture="redpajama_table12", mixture_dirs={p: "" for p in REDPAJAMA_PARTS}, seq_len=2048,
                  workers=4)
    # 1.3 T tokens at 5,242,880 tokens per step.
    c.train.update(total_steps=1_300_000_000_000 // 5_242_880, batch_size=2560, accumulation_steps=8)
    c.optim.update(learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=2000, weight_decay=0.1)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every=1000, keep=3, keep_every=10_000)
    return c


def sweep(add):
    """Ablation: attention reset at document boundaries vs the paper's plain packing."""
    for reset in (False, True):
        add(**{"data.reset_attention_at_eos": reset})
