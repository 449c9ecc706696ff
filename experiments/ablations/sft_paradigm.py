"""Paper Table 10: supervised fine-tuning of the LLM before the VLM stages x the conversation template of
VLM stage 2 (1.4B, LDP).

  make sweep EXP=experiments/ablations/sft_paradigm.py:demo
  make sweep EXP=experiments/ablations/sft_paradigm.py:size=1.4b,alpaca=data/alpaca.json LAUNCHER=slurm

Rows: the base LLM without SFT and, at paper scale with alpaca=FILE, the base LLM (base=DIR) after SFT on
Alpaca trained here, each with the vicuna_v1 or the llava_llama_2 template in VLM stage 2 (and in its
evaluation prompts); the released ShareGPT-SFT chat LLM (llm=DIR) with vicuna_v1, the baseline. Stage 1
keeps `plain` captions in every row, so a template pair shares its pretraining, SFT and stage-1 stages.
The embedded world has no Alpaca-like file: the demo has 3 rows.
"""
from experiments.ablations.common import SMALL, chain, scale, trial

LLAMA_2 = {"vlm2": {"data.template": "llava_llama_2"}, "eval": {"template": "llava_llama_2"}}


def sweep(arg=None):
    size, args = scale(arg)
    trials = [trial("base", chain(size, args, llm_from="pretrain"), paper=("table10", "base-vicuna_v1")),
              trial("base-llava_llama_2", chain(size, args, llm_from="pretrain", **LLAMA_2),
                    paper=("table10", "base-llava_llama_2")),
              trial("sharegpt", chain(size, args), paper=("table10", "sharegpt-vicuna_v1"), baseline=True)]
    if size not in SMALL and args.get("alpaca"):
        # SFT on Alpaca is trained here, on the base LLM (base=DIR) or, with from=scratch, on pretraining
        alpaca = {"sft": {"data.files": (args["alpaca"],), "data.format": "sharegpt"}, "sft_from_base": True}
        trials.append(trial("alpaca", chain(size, args, **alpaca), paper=("table10", "alpaca-vicuna_v1")))
        trials.append(trial("alpaca-llava_llama_2", chain(size, args, **alpaca, **LLAMA_2),
                            paper=("table10", "alpaca-llava_llama_2")))
    return trials
