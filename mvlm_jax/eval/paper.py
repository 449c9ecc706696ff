"""The numbers MobileVLM publishes, printed beside ours in every report.

Sources: the paper, arXiv 2312.16886 (Table 3: MobileLLaMA on lm-evaluation-harness; Table 4: MobileVLM
on six image benchmarks), and the Model Zoo table of the official repository's README
(Meituan-AutoML/MobileVLM), which differs from the paper only in SQA-I (57.3 / 61.2 against 54.7 / 61.0).
"""
from __future__ import annotations

# Table 4 columns -> (benchmark, the key of our scores.json that the column reports)
TABLE4_COLUMNS = {
    "GQA": ("gqa", "accuracy"),
    "SQA-I": ("sqa", "img_accuracy"),
    "VQA-T": ("textvqa", "accuracy"),
    "POPE": ("pope", "mean_f1"),  # the paper does not say; LLaVA-1.5's POPE number is the mean F1 of the splits
    "MME-P": ("mme", "perception"),
    "MMB-dev": ("mmbench", "circular_accuracy"),
}

TABLE4 = {  # paper, Table 4
    "MobileVLM 1.7B": {"GQA": 56.1, "SQA-I": 54.7, "VQA-T": 41.5, "POPE": 84.5, "MME-P": 1196.2, "MMB-dev": 53.2},
    "MobileVLM 1.7B w/ LoRA": {"GQA": 57.0, "SQA-I": 53.1, "VQA-T": 42.3, "POPE": 86.0, "MME-P": 1143.7,
                               "MMB-dev": 50.4},
    "MobileVLM 3B": {"GQA": 59.0, "SQA-I": 61.0, "VQA-T": 47.5, "POPE": 84.9, "MME-P": 1288.9, "MMB-dev": 59.6},
    "MobileVLM 3B w/ LoRA": {"GQA": 58.4, "SQA-I": 59.0, "VQA-T": 46.7, "POPE": 84.6, "MME-P": 1296.4,
                             "MMB-dev": 57.0},
}

README_ZOO = {  # the repository README's Model Zoo, where it differs from the paper
    "MobileVLM 1.7B": {"SQA-I": 57.3},
    "MobileVLM 3B": {"SQA-I": 61.2},
}

# Table 3 columns -> (lm-eval 0.4.13 task, metric key); acc everywhere (not acc_norm), MMLU 5-shot
TABLE3_COLUMNS = {
    "ARC-c": ("arc_challenge", "acc,none"),
    "ARC-e": ("arc_easy", "acc,none"),
    "BoolQ": ("boolq", "acc,none"),
    "RTE": ("rte", "acc,none"),
    "Winogrande": ("winogrande", "acc,none"),
    "TQA mc1": ("truthfulqa_mc1", "acc,none"),
    "TQA mc2": ("truthfulqa_mc2", "acc,none"),
    "HellaSwag": ("hellaswag", "acc,none"),
    "PIQA": ("piqa", "acc,none"),
    "MMLU": ("mmlu", "acc,none"),
}

TABLE3 = {  # paper, Table 3 (Avg. is the unweighted mean of the ten columns)
    "MobileLLaMA 1.4B": [0.26, 0.61, 0.53, 0.53, 0.59, 0.21, 0.35, 0.43, 0.73, 0.2497],
    "MobileLLaMA 2.7B": [0.32, 0.68, 0.61, 0.59, 0.63, 0.23, 0.36, 0.48, 0.75, 0.2730],
    "OpenLLaMA 3B v1": [0.34, 0.69, 0.68, 0.58, 0.62, 0.22, 0.35, 0.49, 0.75, 0.2695],
    "TinyLLaMA 1.1B (2T)": [0.23, 0.57, 0.59, 0.55, 0.57, 0.23, 0.39, 0.40, 0.70, 0.2541],
}

