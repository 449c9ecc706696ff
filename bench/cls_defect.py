"""The measured effect of llama.cpp's class-token defect (docs/EXPORT.md), and of each `--cls` workaround.

  python -m bench.cls_defect [--demo runs/demo] [--questions 60] [--steps N]

Needs the demo's data and SFT model (`make demo` first; missing pieces are trained). Trains the demo VLM
again with a tower that HAS a class token (experiments/vlm.py:size=demo,stage=...,cls=1), then for each
export mode keep / reorder / drop: llama.cpp's image embeddings against the correct (JAX) ones, and
llama.cpp's greedy answers to held-out image questions against JAX's answers and the ground truth.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.report import Headline, write_result

MODES = ("keep", "reorder", "drop")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


def embedding_similarity(files: tuple[Path, Path], model_dir: Path, questions: list[dict], world: Path) -> float:
    """Mean cosine between llama.cpp's image embeddings and the correct JAX ones over the questions' images."""
    import jax.numpy as jnp
    from PIL import Image

    from data_pipelines.images import preprocess_file
    from mvlm_jax.checkpoint import load_model
    from mvlm_jax.demo.evaluate import image_path
    from mvlm_jax.edge.llamacpp import LlamaCppModel
    from mvlm_jax.models import build_model

    params, config = load_model(model_dir)
    model = build_model(config)
    similarities = []
    with LlamaCppModel(files[0], files[1], n_ctx=512) as runtime:
        for q in questions:
            rgb = np.asarray(Image.open(image_path(world, q)).convert("RGB"))
            pixels = preprocess_file(image_path(world, q), config.vision.image_size, pad=True)
            ours = np.asarray(model.apply({"params": params}, jnp.asarray(pixels)[None, None], method="encode_images"))[0, 0]
            similarities.append(cosine(runtime.image_embeddings(rgb), ours))
    return float(np.mean(similarities))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="the demo's workdir (data, sft model)")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--images", type=int, default=8, help="images for the embedding similarity")
    parser.add_argument("--steps", type=int, help="override the VLM stages' total_steps")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()

    from data_pipelines.embedded.prepare import prepare
    from mvlm_jax.demo import evaluate
    from mvlm_jax.demo.__main__ import STAGES, train_stage
    from mvlm_jax.export.gguf_file import export_gguf, output_paths

    demo = Path(args.demo).absolute()
    paths = prepare(demo / "data", "demo", vocab_size=512, image_size=336)
    world = Path(paths["world"])
    for name, experiment, init_from in STAGES[:2]:  # pretrain, sft: shared with the demo
        train_stage(demo, name, experiment, init_from, demo / "data", "demo", None)
    for stage, init_from in (("1", ("llm=sft",)), ("2", ("=cls_vlm1",))):
        train_stage(demo, f"cls_vlm{stage}", f"experiments/vlm.py:size=demo,stage={stage},cls=1", init_from,
                    demo / "data", "demo", args.steps)
    model_dir = demo / "cls_vlm2" / "model"
    results = evaluate.answers_file(demo / "cls_answers_jax.json", model_dir, world, "test", args.questions)
    rows = ["| export `--cls` | image embeddings: cosine to correct | same answer as JAX | accuracy (llama.cpp) |",
            "|---|---|---|---|"]
    measured = {}
    for mode in MODES:
        out = demo / "cls_gguf" / mode
        files = tuple(output_paths(out, "cls", "f32", vision=True, cls=mode))
        if not all(p.is_file() for p in files):
            export_gguf(model_dir, out, "f32", name="cls", cls=mode, force=True)
        similarity = embedding_similarity(files, model_dir, results[:args.images], world)
        agreement = evaluate.llamacpp_agreement(demo / f"cls_answers_llamacpp_{mode}.json", files, results, world,
                                                model_dir)
        measured[mode] = {"cosine": similarity, **agreement}
        rows.append(f"| {mode} | {similarity:.4f} | {agreement['same_answers']} of {agreement['questions']} | "
                    f"{agreement['accuracy']:.1%} |")
    rows.append(f"| (JAX, correct) | 1 | - | {evaluate.accuracy(results)['all']:.1%} |")
    print("\n".join(rows))
    (demo / "cls_defect.json").write_text(json.dumps(measured, indent=2) + "\n")
    write_result(Path(args.report), "llama.cpp's class-token defect, measured", "python -m bench.cls_defect", rows,
                 note=f"the demo VLM retrained with a class token in its tower ({model_dir}); f32 LLM, f16 mmproj; "
                      f"{len(results)} held-out questions (chance {evaluate.chance(results):.1%}), "
                      f"{args.images} images for the embeddings.",
                 headline=Headline("image-embedding cosine to JAX: " + ", ".join(
                     f"{mode} {m['cosine']:.4f}" for mode, m in measured.items()) + "; same answers as JAX: "
                     + ", ".join(f"{m['same_answers']}/{m['questions']}" for m in measured.values())))


if __name__ == "__main__":
    main()
