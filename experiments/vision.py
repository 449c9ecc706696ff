"""Vision pretraining by image classification (paper Table 8's "classification" paradigm): the tower, and
optionally the projector into the LLM's width, under an attention-pooling head, with a per-class sigmoid
loss (multi-label, as big_vision trains on ImageNet-21k). A VLM stage then takes the tower and projector:

  python -m mvlm_jax.train --config experiments/vision.py:tiny --workdir runs/vision-tiny
  python -m mvlm_jax.train --config experiments/vlm.py:size=tiny,stage=1 --workdir runs/vlm1-tiny \\
      --config.init_from="('vision=runs/vision-tiny/model', 'projector=runs/vision-tiny/model', 'llm=runs/sft-tiny/model')"
  python -m mvlm_jax.train --config experiments/vision.py:l14_336 --workdir runs/vision-l14 \\
      --config.data.files="('train_labels.json',)" --config.data.image_root=images \\
      --config.data.classes="('cat', 'dog', ...)"

Files: JSON lists (or JSONL) of {"image": path, "labels": [names]} (data_pipelines/image_labels.py).
--config.model.classifier.position_weight=W adds a second objective: every output token predicts its own
row and column of the token grid (a linear read-out), so that the tower's positions survive the projector
for a VLM's "where" questions (docs/TRAINING.md). --config.model.classifier.head=tokens classifies every
output token instead, against the records'
"regions" (object boxes with their labels): dense, grounded supervision (docs/TRAINING.md measured it
on the demo tower, whose tokens see too little of an object to name its shape).
--config.model.classifier.head=cells (with head_cells=G) gives a G x G grid over the image one learned query
each; a cell's logits are trained against the labels of the regions centred in it.
The MobileVLM recipes start from a pretrained CLIP tower instead; this stage is for towers trained here
(the demo's) and for Table 8-style comparisons.
"""
from data_pipelines.embedded.world import CLASSES
from mvlm_jax.train.recipes import base_config, embedded_demo, parse_arg


def get_config(arg=None):
    size = parse_arg(arg).get("size", "tiny")
    c = base_config()
    c.model.update(kind="classifier", vision=size, llm="tiny", projector="ldp")
    c.loss.kind = "sigmoid_cross_entropy"
    c.data.update(kind="image_labels", pad_images=True)
    c.optim.update(b2=0.999, weight_decay=1e-4, min_learning_rate=0.0)
    if size in ("tiny", "demo"):
        c.data.embedded.update(enabled=True, files=("labels",))
        c.data.classes = CLASSES  # each shape present, each colour-shape pair present
    if size == "tiny":
        c.model.vision_overrides = {"image_size": 64}
        c.train.update(total_steps=100, batch_size=8)
        c.optim.update(learning_rate=2e-3, warmup_steps=5)
        c.checkpoint.every = 50
        c.eval.update(every=50, batches=2)
        return c
    if size == "demo":
        # The demo's tower ends at its embeddings; what makes a token tell a star from a square is the
        # projector's 3x3 depthwise convolutions, so the projector (into the demo LLM's width) trains here
        # too, and the VLM stages start from both (docs/TRAINING.md).
        embedded_demo(c)
        c.model.llm = "demo"
        c.train.update(total_steps=1500, batch_size=16)
        c.optim.update(learning_rate=2e-3, warmup_steps=20)
        c.checkpoint.every = 500
        c.eval.update(every=500, batches=4)
        return c
    # A tower of its own at paper scale: no projector (the VLM's stage 1 trains it), images padded to square.
    # Our settings, of the size of an ImageNet-21k run (not a published recipe); set files and classes.
    c.model.update(vision=size, projector="", dtype="bfloat16", remat="dots_no_batch")
    c.train.update(total_steps=90_000, batch_size=4096)
    c.optim.update(learning_rate=1e-3, warmup_steps=10_000)
    c.mesh.update(data=1, fsdp=-1)
    c.checkpoint.every = 2000
    return c
