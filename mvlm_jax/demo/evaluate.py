"""The demo's evaluation: greedy answers to held-out image questions in JAX and in llama.cpp.

Questions come from the embedded world's `eval_<split>.json` (closed answer sets, so accuracy compares
with chance = 1 / number of choices). Both runtimes get the same prompt ids (vicuna_v1, the image first in
the user turn) and the same image file; answers are compared as text and as token ids.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from data_pipelines.images import preprocess_file
from data_pipelines.templates import IMAGE_TOKEN
from mvlm_jax.atomic import atomic_file

MAX_ANSWER_TOKENS = 16


def normalise(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def _prompt(tokenizer, question: str) -> np.ndarray:
    from mvlm_jax.generate.prompts import chat_prompt

    return chat_prompt(tokenizer, [{"from": "human", "value": question}], has_image=True)


def image_path(world: Path, question: dict) -> Path:
    return world / "images" / question["image"]


def _write_json(path: Path, value: Any) -> None:
    with atomic_file(path, force=True) as partial:
        partial.write_text(json.dumps(value, indent=1) + "\n")


def answers_file(path: Path, model_dir: Path, world: Path, split: str, count: int) -> list[dict]:
    """JAX's greedy answers to the first `count` questions of `split` (reused when already written)."""
    if path.is_file():
        results = json.loads(path.read_text())
        if len(results) == min(count, len(json.loads((world / f"eval_{split}.json").read_text()))):
            return results
    from mvlm_jax.generate.engine import Generator, Request
    from mvlm_jax.generate.prompts import find_tokenizer
    from mvlm_jax.generate.sampling import SamplingConfig

    questions = json.loads((world / f"eval_{split}.json").read_text())[:count]
    tokenizer = find_tokenizer(model_dir)
    generator = Generator.from_checkpoint(model_dir)
    size = generator.config.vision.image_size
    results = []
    for start in range(0, len(questions), 32):
        batch = questions[start:start + 32]
        requests = [Request(_prompt(tokenizer, q["question"]), preprocess_file(image_path(world, q), size, pad=True))
                    for q in batch]
        completions = generator.generate(requests, SamplingConfig(max_new_tokens=MAX_ANSWER_TOKENS))
        for question, completion in zip(batch, completions):
            text = tokenizer.processor.decode(completion.ids)
            results.append({**question, "prediction": text, "prediction_ids": completion.ids,
                            "correct": normalise(text) == normalise(question["answer"])})
    _write_json(path, results)
    return results


def forget_stale_outputs(workdir: Path, model_dir: Path, settings: Any) -> None:
    """Answers and GGUF files belong to one trained model and one set of questions: when the model
    checkpoint or the settings differ from those of the last run (a stage retrained, another --data),
    remove them so that they are made again."""
    import shutil

    stamp = {"model": (model_dir / "model_config.json").stat().st_mtime_ns, "data": settings.data,
             "questions": settings.questions, "llamacpp_questions": settings.llamacpp_questions}
    path = workdir / "outputs_of.json"
    if path.is_file() and json.loads(path.read_text()) == stamp:
        return
    for stale in workdir.glob("answers_*.json"):
        stale.unlink()
    shutil.rmtree(workdir / "gguf", ignore_errors=True)  # the demo's own exports
    _write_json(path, stamp)


def accuracy(results: Sequence[dict]) -> dict[str, float]:
    by_type: dict[str, list[bool]] = collections.defaultdict(list)
    for r in results:
        by_type[r["type"]].append(r["correct"])
    out = {kind: float(np.mean(v)) for kind, v in sorted(by_type.items())}
    out["all"] = float(np.mean([r["correct"] for r in results])) if results else 0.0
    return out


def chance(results: Sequence[dict]) -> float:
    return float(np.mean([r["chance"] for r in results])) if results else 0.0


def export_files(model_dir: Path, out: Path, types: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    """GGUF files per LLM type (the mmproj is shared); files already complete are reused."""
    from mvlm_jax.export.gguf_file import export_gguf, output_paths

    files = {}
    for file_type in types:
        paths = output_paths(out, "mobilevlm-demo", file_type, vision=True)
        if not all(p.is_file() for p in paths):  # the demo's own files: rewriting one (atomically) is safe
            export_gguf(model_dir, out, file_type, name="mobilevlm-demo", force=True)
        files[file_type] = (paths[0], paths[1])
    return files


def llamacpp_agreement(path: Path, files: tuple[Path, Path], results: Sequence[dict], world: Path,
                       model_dir: Path) -> dict:
    """llama.cpp's greedy answers to the questions of `results` (JAX's), and how often they agree."""
    from mvlm_jax.edge.llamacpp import LlamaCppModel
    from mvlm_jax.generate.prompts import find_tokenizer

    answers = json.loads(path.read_text()) if path.is_file() else []
    if len(answers) != len(results):
        answers = []
        tokenizer = find_tokenizer(model_dir)
        with LlamaCppModel(files[0], files[1], n_ctx=1024, n_threads=os.cpu_count()) as model:
            for r in results:
                ids = _prompt(tokenizer, r["question"]).tolist()
                slot = ids.index(IMAGE_TOKEN)
                rgb = np.asarray(Image.open(image_path(world, r)).convert("RGB"))
                generated = model.greedy([ids[:slot], rgb, ids[slot + 1:]], MAX_ANSWER_TOKENS, eos_id=tokenizer.eos_id)
                if generated and generated[-1] == tokenizer.eos_id:
                    generated = generated[:-1]
                text = tokenizer.processor.decode(generated)
                answers.append({"id": r["id"], "prediction": text, "prediction_ids": generated,
                                "correct": normalise(text) == normalise(r["answer"])})
        _write_json(path, answers)
    same_text = sum(normalise(a["prediction"]) == normalise(r["prediction"]) for a, r in zip(answers, results))
    same_ids = sum(a["prediction_ids"] == r["prediction_ids"] for a, r in zip(answers, results))
    return {"questions": len(results), "same_answers": int(same_text), "same_tokens": int(same_ids),
            "accuracy": float(np.mean([a["correct"] for a in answers])) if answers else 0.0,
            "jax_accuracy": float(np.mean([r["correct"] for r in results])) if results else 0.0}
