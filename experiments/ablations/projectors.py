"""Paper Table 9: the VL projector's design (MobileLLaMA 1.4B, CLIP-L/14-336; here also the demo scale).

  make sweep EXP=experiments/ablations/projectors.py:demo          # the embedded world, about 45 min on 2 cores
  make sweep EXP=experiments/ablations/projectors.py:size=1.4b,llm=ckpt/MobileLLaMA-1.4B-Chat LAUNCHER=slurm

Rows: [PW]x2 (LLaVA's MLP, 576 tokens), [DW1 PW][DW2 PW] without the front MLP, LDP (the baseline),
[DW1 PW]x3 [DW2 PW], and [DW2 PW][DW1 PW] (downsample first); the LDP rows give 144 tokens.
"""
from experiments.ablations.common import chain, scale, trial

DESIGNS = (  # (trial, projector preset, visual tokens, paper row)
    ("mlp", "mlp2x_gelu", 576, "mlp"),
    ("no_front_pw", "ldp_no_front_pw", 144, "no_front_pw"),
    ("ldp", "ldp", 144, "ldp"),
    ("3_blocks", "ldp_3_blocks", 144, "3_blocks"),
    ("downsample_first", "ldp_downsample_first", 144, "downsample_first"),
)


def sweep(arg=None):
    size, args = scale(arg)
    return [trial(name, chain(size, args, vlm={"model.projector": preset}, visual_tokens=tokens),
                  paper=("table9", row), baseline=name == "ldp") for name, preset, tokens, row in DESIGNS]
