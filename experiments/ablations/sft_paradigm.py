"""Paper Table 10: supervised fine-tuning of the LLM before the VLM stages (1.4B, LDP, vicuna_v1).

  make sweep EXP=experiments/ablations/sft_paradigm.py:demo
  make sweep EXP=experiments/ablations/sft_paradigm.py:size=1.4b,alpaca=data/alpaca.json LAUNCHER=slurm

Rows here: the base LLM without SFT, SFT on ShareGPT (the baseline) and, at paper scale with alpaca=FILE,
SFT on Alpaca. The paper's llava_llama_2 template rows are not in this sweep: the data pipeline has the
vicuna_v1 and plain templates only (data_pipelines/templates.py).
"""
from experiments.ablations.common import SMALL, chain, scale, trial


def sweep(arg=None):
    size, args = scale(arg)
    trials = [trial("base", chain(size, args, llm_from="pretrain"), paper=("table10", "base-vicuna_v1")),
              trial("sharegpt", chain(size, args), paper=("table10", "sharegpt-vicuna_v1"), baseline=True)]
    if size not in SMALL and args.get("alpaca"):
        trials.append(trial("alpaca", chain(size, {**args, "from": "scratch"} if args.get("from") else args,
                                            sft={"data.files": (args["alpaca"],), "data.format": "sharegpt"}),
                            paper=("table10", "alpaca-vicuna_v1")))
    return trials
