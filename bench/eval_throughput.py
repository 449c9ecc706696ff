"""Evaluation speed, measured in one run on this machine: questions per second of `mvlm eval vlm`'s
answering path (prompt building, image preprocessing, generation, record writing) for the JAX engine at
batch 1 (the official scripts' setting) against the batched engine, and against the exported GGUF files
in llama.cpp, on the same random-weight VLMs: `tiny` (a 336/14 tower of width 32, a 2-layer LLM) and
`demo` (the demo's tower, LDP and LLM). Questions: the embedded world's held-out questions (the demo_world
benchmark), greedy, at most 16 new tokens; every runtime generates the same tokens (checked). Rows "prompt
only" answer with one new token: the image, tower, projector and prefill without the decode steps.

  python -m bench.eval_throughput [--questions 64] [--batch 16] [--models tiny,demo]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bench.report import Headline, write_result

REPORT = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"


def model_config(name: str):
    from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, LlamaConfig, VLMConfig

    if name == "demo":
        llm = dataclasses.replace(LLAMA_PRESETS["demo"], vocab_size=512)
        return VLMConfig(VISION_PRESETS["demo"], PROJECTOR_PRESETS["ldp"], llm)
    vision = dataclasses.replace(VISION_PRESETS["demo"], width=32, mlp_dim=64)
    llm = LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_position_embeddings=512)
    return VLMConfig(vision, PROJECTOR_PRESETS["ldp"], llm)


def build(name: str, directory: Path, tokenizer: Path) -> Path:
    from mvlm_jax.checkpoint import save_model
    from mvlm_jax.models import init_params

    config = model_config(name)
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    return save_model(directory / name, params, config, tokenizer=tokenizer)


def timed(path: Path, questions, answerer, max_new_tokens: int) -> tuple[float, list]:
    """Seconds to answer `questions` into a fresh file, after a warm-up pass over the same questions (every
    shape compiled: steady state, as in a long benchmark run)."""
    from mvlm_jax.eval import records, runner

    runner.answer_questions(path.with_suffix(".warm.jsonl"), questions, answerer, max_new_tokens)
    started = time.perf_counter()
    runner.answer_questions(path, questions, answerer, max_new_tokens)
    return time.perf_counter() - started, [r["metadata"]["ids"] for r in records.read_records(path)]


def measure(name: str, root: Path, data_root: Path, tokenizer: Path, count: int, batch: int) -> list[str]:
    from mvlm_jax.eval import demo_world
    from mvlm_jax.eval.answerers import JaxAnswerer, LlamaCppAnswerer
    from mvlm_jax.export.gguf_file import export_gguf

    ckpt = build(name, root, tokenizer)
    questions = demo_world.questions(data_root)[:count]
    count = len(questions)
    tokens = demo_world.MAX_NEW_TOKENS
    rows, seconds, ids = [], {}, {}
    for size in (1, batch):
        answerer = JaxAnswerer.from_checkpoint(ckpt, batch_size=size)
        seconds[f"jax, batch {size}"], ids[f"jax, batch {size}"] = timed(root / f"{name}-b{size}.jsonl", questions,
                                                                         answerer, tokens)
        # the prompt alone (one new token): the share of the image, the tower and the prefill
        seconds[f"jax, batch {size}, prompt only"], _ = timed(root / f"{name}-b{size}-prompt.jsonl", questions,
                                                              answerer, 1)
    llm, mmproj = export_gguf(ckpt, root / f"gguf-{name}", "f32")
    answerer = LlamaCppAnswerer(llm, mmproj, max_new_tokens=tokens)
    try:
        seconds["llama.cpp f32"], ids["llama.cpp f32"] = timed(root / f"{name}-llamacpp.jsonl", questions, answerer,
                                                               tokens)
    finally:
        answerer.close()
    reference = ids["jax, batch 1"]
    for runtime, value in seconds.items():
        same = f"{sum(a == b for a, b in zip(ids[runtime], reference))}/{count}" if runtime in ids else "-"
        rows.append(f"| {name} | {runtime} | {count / value:.2f} | {seconds['jax, batch 1'] / value:.2f}x | {same} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", default="tiny,demo")
    args = parser.parse_args()
    from data_pipelines.embedded.generate import generate
    from data_pipelines.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        generate(root / "data" / "world", size="small", image_size=336)  # 80 held-out questions
        texts = [q["question"] + " " + q["answer"] for q in json.loads((root / "data/world/eval_train.json").read_text())]
        train_tokenizer(texts * 4 + ["A chat between a curious user USER: ASSISTANT:"], 512, root / "tok.model")
        lines = ["| model | runtime | questions/s | against JAX batch 1 | same tokens as JAX batch 1 |",
                 "|---|---|---|---|---|"]
        for name in args.models.split(","):
            lines += measure(name, root, root / "data", root / "tok.model", args.questions, args.batch)
    print("\n".join(lines))
    command = f"python -m bench.eval_throughput --questions {args.questions} --batch {args.batch} --models {args.models}"
    cells = [line.strip("| ").split(" | ") for line in lines[2:]]  # model, runtime, questions/s, against batch 1, ...
    against = {(model, runtime): ratio for model, runtime, _, ratio, *_ in cells}
    figure = "; ".join(f"{model}: batch {args.batch} at {against[(model, f'jax, batch {args.batch}')]}, llama.cpp at "
                       f"{against[(model, 'llama.cpp f32')]} of JAX batch 1" for model in args.models.split(","))
    write_result(REPORT, "Evaluation speed (`mvlm eval vlm` answering path)", command, lines,
                 note=f"demo_world questions, greedy, at most 16 new tokens, random weights; JAX on "
                      f"{jax.devices()[0].platform}; llama.cpp on the CPU ({os.cpu_count()} threads), one question at a time",
                 headline=Headline(f"questions/s, {figure}"))


if __name__ == "__main__":
    main()
