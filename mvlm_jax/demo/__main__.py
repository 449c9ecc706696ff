"""`make demo`: the whole job on the embedded default data, on this CPU.

  python -m mvlm_jax.demo --workdir runs/demo [--steps N] [--questions N] [--data demo|small|tiny] [--verbose]

Steps, each skipped when its output is complete (so a second run reuses everything that is done, and an
interrupted training stage resumes from its last checkpoint):
  1. data      the embedded world (336-pixel images), a SentencePiece tokenizer, token shards
  2. pretrain  tiny MobileLLaMA on the corpus                 experiments/pretrain.py:demo
  3. sft       vicuna_v1 chat on the ShareGPT-style file       experiments/sft.py:demo
  4. vision    tower + projector, image classes (sigmoid)     experiments/vision.py:demo
  5. vlm1      projector + LLM, captions (`plain`)             experiments/vlm.py:size=demo,stage=1
  6. vlm2      projector + LLM, image instructions             experiments/vlm.py:size=demo,stage=2
  7. eval      greedy answers (JAX, KV cache) to held-out image questions (the demo_world benchmark of
               mvlm_jax.eval), beside two baselines: the model with the image withheld, and the most
               frequent training answer of each question type
  8. export    GGUF: the LLM (f32 and q8_0) and the mmproj (tower + LDP)
  9. llama.cpp the same questions through llama.cpp: its answers against JAX's, token for token
 10. summary   WORKDIR/summary.md (tables), summary.json, loss_curves.png
Training stages run as the user would run them: `python -m mvlm_jax.train --config ... --workdir ...`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from data_pipelines.errors import user_errors
from mvlm_jax.console import library_logs
from mvlm_jax.demo import evaluate, report

STAGES: list[tuple[str, str, tuple[str, ...]]] = [
    ("pretrain", "experiments/pretrain.py:demo", ()),
    ("sft", "experiments/sft.py:demo", ("=pretrain",)),
    ("vision", "experiments/vision.py:demo", ()),
    ("vlm1", "experiments/vlm.py:size=demo,stage=1", ("vision=vision", "projector=vision", "llm=sft")),
    ("vlm2", "experiments/vlm.py:size=demo,stage=2", ("=vlm1",)),
]
EXPORT_TYPES = ("f32", "q8_0")


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_stage(workdir: Path, name: str, experiment: str, init_from: Sequence[str], data: Path, data_size: str,
                steps: int | None, verbose: bool = False) -> float:
    """Run one stage (or reuse it); returns the seconds spent now."""
    stage_dir = workdir / name
    if (stage_dir / "model").is_dir():
        _log(f"{name}: done before, reusing {stage_dir / 'model'}")
        return 0.0
    sources = tuple(f"{spec.split('=')[0]}={workdir / spec.split('=')[1] / 'model'}" for spec in init_from)
    command = [sys.executable, "-m", "mvlm_jax.train", "--config", experiment, "--workdir", str(stage_dir),
               f"--config.data.embedded.root={data}", f"--config.data.embedded.size={data_size}"]
    if sources:
        command.append(f"--config.init_from={sources!r}")
    if verbose:
        command.append("--verbose")
    if steps:
        command += [f"--config.total_steps={steps}", f"--config.checkpoint_every={max(1, steps)}"]
    _log(f"{name}: {' '.join(command[1:])}")
    started = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode:
        raise SystemExit(f"demo: stage {name} failed (exit {done.returncode}); re-run `make demo` to resume it")
    if not (stage_dir / "model").is_dir():  # stopped by SIGTERM with a checkpoint (mvlm_jax.train.preemption)
        raise SystemExit(f"demo: stage {name} stopped early with a checkpoint; re-run `make demo` to resume it")
    return time.perf_counter() - started


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvlm_jax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--steps", type=int, help="override every stage's total_steps (quick runs, tests)")
    parser.add_argument("--questions", type=int, default=300, help="held-out image questions to answer in JAX")
    parser.add_argument("--llamacpp-questions", type=int, default=60, help="of those, answered by llama.cpp too")
    parser.add_argument("--data", default="demo", choices=("demo", "small", "tiny"), help="embedded dataset size")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' INFO logs (orbax, jax)")
    args = parser.parse_args(argv)
    library_logs(args.verbose)
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    started = time.perf_counter()

    _log("data: the embedded world, tokenizer and shards")
    from data_pipelines.embedded.prepare import prepare  # deferred: --help stays instant

    prepare(data, args.data, vocab_size=512, image_size=336)
    seconds = {"data": time.perf_counter() - started}
    for name, experiment, init_from in STAGES:
        seconds[name] = train_stage(workdir, name, experiment, init_from, data, args.data, args.steps, args.verbose)

    model_dir = workdir / "vlm2" / "model"
    evaluate.forget_stale_outputs(workdir, model_dir, args)
    tick = time.perf_counter()
    eval_dir = workdir / "eval"
    scores = evaluate.answer_and_score(model_dir, data, eval_dir, args.questions)
    seconds["eval"] = time.perf_counter() - tick
    _log(f"eval: {scores['model']['accuracy']:.1f}% of {scores['model']['questions']} held-out questions; "
         f"image withheld {scores['blind']['accuracy']:.1f}%, most frequent answer "
         f"{scores['most_frequent']['accuracy']:.1f}%")

    tick = time.perf_counter()
    exported = evaluate.export_files(model_dir, workdir / "gguf", EXPORT_TYPES)
    seconds["export"] = time.perf_counter() - tick
    tick = time.perf_counter()
    agreement = {}
    for file_type in EXPORT_TYPES:
        stored = evaluate.stored_weights_answers(model_dir, file_type, data, eval_dir, args.llamacpp_questions)
        agreement[file_type] = evaluate.llamacpp_agreement(exported[file_type], data, eval_dir,
                                                           args.llamacpp_questions, stored)
        a = agreement[file_type]
        _log(f"llama.cpp ({file_type}): the same answer as JAX for {a['same_answers']} of {a['questions']} "
             f"questions; the same tokens as JAX on the file's weights for {a['same_tokens_stored_weights']}")
    seconds["llama.cpp"] = time.perf_counter() - tick

    summary = report.write(workdir, [name for name, _, _ in STAGES], scores, agreement, seconds,
                           time.perf_counter() - started)
    print(summary)
    _log(f"summary: {workdir / 'summary.md'}, {workdir / 'loss_curves.png'}")
    evaluate.write_json(workdir / "summary.json", {"seconds": seconds, "agreement": agreement, "scores": scores})
    return 0


if __name__ == "__main__":
    sys.exit(main())
