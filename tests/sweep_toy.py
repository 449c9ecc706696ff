"""Toy sweeps for the tests: one-step stages of the tiny experiments.

default  pretraining shared by three SFT trials: the baseline, another learning rate, and a broken one (it
         does not fit the pretrained model)
slurm    a 2-node pretraining, then two single-process SFT trials (one array) and an eval after one of them
local    the same shape as one trial for submitit's local executor: a 2-node pretraining, then SFT
chain    the paper's whole chain at tiny scale, eval, GGUF export and edge latency included
"""
from mvlm_jax.sweep.spec import Stage, Trial, mobilevlm_chain

# One step, no eval, no checkpoint before the final one: each stage is little more than start-up.
FEW = {"train.total_steps": 1, "eval.every": 0, "checkpoint.every": 1000}
TWO_NODES = {"nodes": 2, "tasks_per_node": 1, "gpus_per_node": 4}


def pretrain(resources=None):
    return Stage("pretrain", experiment="experiments/pretrain.py:tiny", overrides=FEW, resources=resources or {})


def sft(**overrides):
    return Stage("sft", experiment="experiments/sft.py:tiny", overrides={**FEW, **overrides}, inputs=(("", "pretrain"),))


def sweep(arg=None):
    if arg == "bad_key":
        return [Trial("a", (pretrain(), sft())), Trial("typo", (pretrain(), sft(**{"optim.learning_rat": 1e-3})))]
    if arg == "bad_value":
        return [Trial("a", (pretrain(), sft())), Trial("words", (pretrain(), sft(**{"train.total_steps": "many"})))]
    if arg == "slurm":
        evaluate = Stage("eval", kind="eval", overrides={"questions": 2}, inputs=(("", "sft"),))
        return [Trial("a", (pretrain(TWO_NODES), sft(), evaluate), baseline=True),
                Trial("b", (pretrain(TWO_NODES), sft(**{"optim.learning_rate": 3e-3})))]
    if arg == "chain":
        return [Trial("tiny", mobilevlm_chain("tiny", pretrain=FEW, sft=FEW, vlm=FEW, eval={"questions": 4},
                                              edge={"new_tokens": 8}))]
    if arg == "local":
        return [Trial("only", (pretrain(TWO_NODES), sft()))]
    return [Trial("a", (pretrain(TWO_NODES), sft()), baseline=True),
            Trial("lr", (pretrain(TWO_NODES), sft(**{"optim.learning_rate": 3e-3}))),
            # does not fit the pretrained checkpoint: fails when it starts
            Trial("broken", (pretrain(TWO_NODES), sft(**{"model.llm_overrides": {"num_layers": 3}})))]
