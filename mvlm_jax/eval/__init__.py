"""Evaluation: the paper's image benchmarks (question files -> prompts -> answer records -> official
scores), the language benchmarks through lm-evaluation-harness, baselines and reports.

One module per image benchmark (gqa, sqa, textvqa, pope, mme, mmbench, demo_world) holds everything
specific to it: where its files are, how the official generator builds its prompts, and its scorer.
`benchmark.py` is the contract they follow; `records.py` reads and checks answer files.
"""
