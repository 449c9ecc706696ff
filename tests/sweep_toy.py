"""A toy sweep for the tests: tiny pretraining shared by three SFT trials (one of them broken)."""
from mvlm_jax.sweep.spec import Stage, Trial

FEW = {"train.total_steps": 2, "eval.every": 0, "checkpoint.every": 1}


def sweep(arg=None):
    pretrain = Stage("pretrain", experiment="experiments/pretrain.py:tiny", overrides=FEW,
                     resources={"nodes": 2, "tasks_per_node": 1, "gpus_per_node": 4})

    def sft(**overrides):
        return Stage("sft", experiment="experiments/sft.py:tiny", overrides={**FEW, **overrides},
                     inputs=(("", "pretrain"),))

    if arg == "one":
        return [Trial("only", (Stage("pretrain", experiment="experiments/pretrain.py:tiny", overrides=FEW),))]
    if arg == "bad_key":
        return [Trial("a", (pretrain, sft())), Trial("typo", (pretrain, sft(**{"optim.learning_rat": 1e-3})))]
    if arg == "bad_value":
        return [Trial("a", (pretrain, sft())), Trial("words", (pretrain, sft(**{"train.total_steps": "many"})))]
    return [Trial("a", (pretrain, sft()), baseline=True),
            Trial("b", (pretrain, sft(**{"optim.learning_rate": 3e-3}))),
            # does not fit the pretrained checkpoint: fails when it starts
            Trial("broken", (pretrain, sft(**{"model.llm_overrides": {"num_layers": 3}})))]
