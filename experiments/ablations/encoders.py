"""Paper Table 7: vision encoder scale, patch and resolution, and the projector (with their token counts).

  make sweep EXP=experiments/ablations/encoders.py:demo
  make sweep EXP=experiments/ablations/encoders.py:size=1.4b LAUNCHER=slurm     (and size=2.7b)

Paper scale: CLIP B/16-224 (196 tokens), L/14-224 (256), G/14-224 (256; ViT-g/14 shape), L/14-336 MLP (576)
and L/14-336 LDP (144, the baseline); the towers' CLIP weights come from vision=DIR checkpoints (args
b16=, l14_224=, g14=, l14_336=). Demo scale: the demo tower (a frozen random patch embedding) at the same
patch sizes and resolutions, a twice-wider one for "G".
"""
from experiments.ablations.common import SMALL, chain, scale, trial

# (trial, vision preset, vision overrides at paper scale, at demo scale, projector, visual tokens)
ENCODERS = (
    ("b16_224-mlp", "b16_224", {}, {"image_size": 224, "patch_size": 16}, "mlp2x_gelu", 196),
    ("l14_224-mlp", "l14_336", {"image_size": 224}, {"image_size": 224}, "mlp2x_gelu", 256),
    ("g14_224-mlp", "l14_336", {"image_size": 224, "width": 1408, "num_layers": 40, "mlp_dim": 6144},
     {"image_size": 224, "width": 128}, "mlp2x_gelu", 256),
    ("l14_336-mlp", "l14_336", {}, {}, "mlp2x_gelu", 576),
    ("l14_336-ldp", "l14_336", {}, {}, "ldp", 144),
)


def sweep(arg=None):
    size, args = scale(arg)
    trials = []
    for name, preset, paper_overrides, demo_overrides, projector, tokens in ENCODERS:
        vlm = {"model.projector": projector}
        if size in SMALL:
            vlm["model.vision_overrides"] = demo_overrides
        else:
            vlm.update({"model.vision": preset, "model.vision_overrides": paper_overrides})
        stages = chain(size, args, vlm=vlm, visual_tokens=tokens)
        tower = args.get(name.split("-")[0])
        if tower:  # CLIP weights for the tower: an extra init_from part of stage 1
            first = stages[[s.name for s in stages].index("vlm1")]
            stages = tuple(s if s is not first else type(s)(**{**s.__dict__, "checkpoints": s.checkpoints
                                                              + (f"vision={tower}",)}) for s in stages)
        llm = "1.4b" if size in SMALL else size
        trials.append(trial(name, stages, paper=("table7", f"{llm}-{name}"), baseline=name == "l14_336-ldp"))
    return trials
