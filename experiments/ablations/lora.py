"""Stage 2 with LoRA (r 128, alpha 256 at paper scale; r 8 at small scales) against fine-tuning the whole
LLM (paper Table 4: MobileVLM 1.7B / 3B and their "w/ LoRA" rows).

  make sweep EXP=experiments/ablations/lora.py:demo
  make sweep EXP=experiments/ablations/lora.py:size=2.7b LAUNCHER=slurm
"""
from experiments.ablations.common import SMALL, chain, scale, trial


def sweep(arg=None):
    size, args = scale(arg)
    vlm = "1.7b" if size in SMALL or size == "1.4b" else "3b"
    return [trial("full", chain(size, args), paper=("table4", f"{vlm}-full"), baseline=True),
            trial("lora", chain(size, args, stage2="lora"), paper=("table4", f"{vlm}-lora"))]
