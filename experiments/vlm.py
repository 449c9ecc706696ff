"""MobileVLM training (paper 4.1 / 4.4; repo run_v1.sh): stage=1 (projector), 2 (projector + LLM) or lora.

  python -m mvlm_jax.train --config experiments/vlm.py:size=tiny,stage=1 --workdir runs/vlm1-tiny \
      --config.init_from="('llm=runs/sft-tiny/model',)"
  python -m mvlm_jax.train --config experiments/vlm.py:size=1.4b,stage=2 --workdir runs/vlm2-1.7b \
      --config.init_from="('=runs/vlm1-1.7b/model',)" --config.data.files="('llava_v1_5_mix665k.json',)" ...

Stage 1: LCS-558K captions, `plain` template, no pad, projector only, lr 1e-3, batch 256, 1 epoch.
Stage 2: mix665k, `vicuna_v1`, pad, projector + LLM, lr 2e-5 (1.7B) / 4e-5 (3B), batch 128, 1 epoch.
LoRA: stage-2 data, adapters r 128, alpha 256, dropout 0.05 on every LLM Linear plus the projector,
lr 1e-4 (1.7B) / 2e-4 (3B). All: no weight decay, 3 % warmup, cosine to 0, AdamW (0.9, 0.999), bf16.
Here samples are packed into rows of 2048 (the official code pads one per row): 24 rows a step, about
288 captions in stage 1 and 117 conversations in stage 2; the epoch is counted from the packed rows.
The vision tower is always frozen. The demo size (a tiny LLM trained here, a random tower) trains the LLM
in stage 1 too: behind its frozen LLM the projector learned a constant soft prompt (docs/TRAINING.md).
"""
from mvlm_jax.train.recipes import base_config, embedded_demo, parse_arg

STAGES = {
    "1": dict(trainable=(r"^projector/",), files=("llava_caption",), template="plain", pad=False, examples=558_128,
              batch=256, lr={"tiny": 3e-3, "demo": 1e-3, "1.4b": 1e-3, "2.7b": 1e-3}),
    "2": dict(trainable=(r"^projector/", r"^llm/"), files=("llava_instruct",), template="vicuna_v1", pad=True,
              examples=665_298, batch=128, lr={"tiny": 1e-3, "demo": 1e-3, "1.4b": 2e-5, "2.7b": 4e-5}),
    "lora": dict(trainable=(r"^projector/", r"/lora_[ab]$"), files=("llava_instruct",), template="vicuna_v1",
                 pad=True, examples=665_298, batch=128, lr={"tiny": 1e-3, "demo": 1e-3, "1.4b": 1e-4, "2.7b": 2e-4}),
}


def get_config(arg=None):
    args = parse_arg(arg)
    size, stage = args.get("size", "tiny"), args.get("stage", "1")
    recipe = STAGES[stage]
    c = base_config()
    small = size in ("tiny", "demo")
    c.model.update(kind="vlm", llm=size, vision=size if small else "l14_336", projector="ldp")
    if stage == "lora":
        c.model.lora.update(rank=8 if small else 128, alpha=16.0 if small else 256.0, dropout=0.05)
    c.train.trainable = recipe["trainable"]
    c.data.update(kind="conversation", format="llava", template=recipe["template"], pad_images=recipe["pad"])
    c.optim.update(b2=0.999, weight_decay=0.0, min_learning_rate=0.0, learning_rate=recipe["lr"][size])
    if size == "tiny":
        c.model.vision_overrides = {"image_size": 64}
        c.data.embedded.update(enabled=True, files=recipe["files"])
        c.data.update(seq_len=256, images_per_row=2)
        c.train.update(total_steps=150, batch_size=8)
        c.optim.warmup_steps = 5
        c.checkpoint.every = 50
        c.eval.update(every=50, batches=2)
        return c
    if size == "demo":  # 336-pixel images for the demo tower (llama.cpp's 24x24 grid, no class token)
        embedded_demo(c)
        if args.get("cls") == "1":  # a tower with a class token (bench.cls_defect); it needs blocks to
            # matter, so this is the earlier demo tower: 3 blocks, hidden_states[-2]
            c.model.vision_overrides = {"class_token": True, "num_layers": 3, "select_layer": -2}
        c.data.embedded.files = recipe["files"]
        if stage == "1":
            # The paper freezes the LLM here because CLIP's features are already readable; behind this
            # tiny frozen LLM the projector only learned a constant soft prompt (docs/TRAINING.md).
            c.train.trainable = (r"^projector/", r"^llm/")
        # Rows sized to the samples, with the embedded data's tokenizer, which knows the templates' text
        # (data_pipelines/embedded/prepare.py): captions of at most 181 tokens with their 144 visual ones, two
        # per row; conversations of 4 to 8 turns 295 on average, one per row (1 % are cut to 384). On rows of
        # 384 instead of 512, stage 2 runs 900 steps in about the time of 600 (docs/TRAINING.md).
        c.data.update(seq_len=384, images_per_row=2 if stage == "1" else 1)
        # make demo starts stage 1 from a tower and projector trained to tell the shapes apart
        # (experiments/vision.py). Stage 1 runs until its captions are learnt (300 steps): stopped halfway
        # (100 steps), how far it had got decided whether stage 2 learnt to bind a colour to a shape at all,
        # 44-68 % held-out over three vision stages that classify equally well; 300 / 600 steps gave
        # 64-70 % on the same three in the same time, 300 / 900 on the shorter rows 74.7 % (docs/TRAINING.md).
        c.train.update(total_steps={"1": 300, "2": 900, "lora": 800}[stage], batch_size=8)
        c.optim.warmup_steps = 10
        c.checkpoint.every = 100
        # val_loss every 50 steps in stage 1 (its loss curve shows when the captions are learnt), every 300 in
        # stage 2, at < 5 % of the stage's time (the first one compiles the VLM's forward)
        c.eval.update(every={"1": 50, "2": 300, "lora": 200}[stage], batches=2 if stage == "1" else 4)
        return c
    # Packed rows (bench.packing, docs/TRAINING.md): the official code puts one sample per row of 2048, about
    # 90 % padding in stage 1 and 75-80 % in stage 2. Here samples share rows (attention stays inside each,
    # the loss is the same per-target-token mean) and the batch is counted in rows, sized so that a step
    # sees about the official number of samples: stage 1 ~12 captions per row x 24 rows ~ 288 (official
    # 256), stage 2 ~4.9 conversations per row x 24 rows ~ 117 (official 128).
    per_row = 12 if stage == "1" else 6
    c.model.update(dtype="bfloat16", remat="dots_no_batch")
    c.data.update(seq_len=2048, workers=8, images_per_row=per_row, pack=True, packer="best_fit")
    # One epoch, counted from the packed rows at start; total_steps here is only the estimate that
    # `make plan` compiles for (the official step count), replaced when the run starts.
    c.train.update(epochs=1, total_steps=recipe["examples"] // recipe["batch"], batch_size=24)
    c.optim.update(warmup_ratio=0.03)
    c.mesh.update(data=1, fsdp=-1)
    c.checkpoint.update(every=500)
    return c
