"""Supervised fine-tuning of MobileLLaMA on ShareGPT conversations (paper 4.1; repo mobilellama/sft).

  python -m mvlm_jax.train --config experiments/sft.py:tiny --workdir runs/sft-tiny \
      --config.init_from="('=runs/pretrain-tiny/model',)"
  python -m mvlm_jax.train --config experiments/sft.py:1.4b --workdir runs/sft-1.4b \
      --config.init_from="('=ckpt/MobileLLaMA-1.4B-Base',)" --config.data.files="('sharegpt.json',)" \
      --config.data.tokenizer=llama2/tokenizer.model

Recipe: vicuna_v1 template, loss on the answers only, sequences of 2048, 128 sequences per step
(the paper; the scripts use 256; here conversations are packed into rows, 64 rows of about 2.3), cosine with 4 % warmup to 0, no weight decay, HF Trainer's AdamW betas
(0.9, 0.999); 1.4B: lr 2e-5 for 3 epochs, 2.7B: lr 3e-5 for 2 epochs.
"""
from mvlm_jax.train.recipes import base_config, embedded_demo, parse_arg

SHAREGPT_CONVERSATIONS = 94_000  # about, after cleaning (the step estimate of `make plan`)


def get_config(arg=None):
    size = parse_arg(arg).get("size", "tiny")
    c = base_config()
    c.model.llm = size
    c.data.update(kind="conversation", format="sharegpt", template="vicuna_v1")
    c.optim.update(b2=0.999, weight_decay=0.0, min_learning_rate=0.0)
    if size == "tiny":
        c.data.embedded.update(enabled=True, files=("sharegpt",))
        c.data.seq_len = 512
        c.train.update(total_steps=150, batch_size=8)
        c.optim.update(learning_rate=1e-3, warmup_steps=6)
        c.checkpoint.every = 50
        c.eval.update(every=50, batches=2)
        return c
    if size == "demo":
        embedded_demo(c)
        c.data.seq_len = 512
        c.train.update(total_steps=60, batch_size=8)
        c.optim.update(learning_rate=1e-3, warmup_steps=6)
        c.checkpoint.every = 30
        c.eval.update(every=20, batches=2)  # val_loss 3 times at < 5 % of the stage's time
        return c
    learning_rate, epochs = {"1.4b": (2e-5, 3), "2.7b": (3e-5, 2)}[size]
    c.model.update(dtype="bfloat16", remat="dots_no_batch")
    # Packed rows (bench.packing): FastChat puts one conversation per row of 2048, about 57 % padding on
    # ShareGPT-like lengths (1 % packed). About 2.3 conversations share a row, so 64 rows a step are about 147
    # conversations (the paper's 128).
    c.data.update(seq_len=2048, workers=4, pack=True, packer="best_fit")
    # The epochs are counted from the packed rows at start; total_steps here is only the estimate that
    # `make plan` compiles for, replaced when the run starts.
    c.train.update(epochs=epochs, total_steps=epochs * SHAREGPT_CONVERSATIONS // 128, batch_size=64,
                   accumulation_steps=2)
    c.optim.update(learning_rate=learning_rate, warmup_ratio=0.04)
    c.mesh.update(data=1, fsdp=-1)
    c.checkpoint.update(every=500)
    return c
