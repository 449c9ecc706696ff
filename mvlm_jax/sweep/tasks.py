"""The stages after training, each a command: eval, export, edge.

  python -m mvlm_jax.sweep.tasks {eval|export|edge} --stage-dir SWEEP/stages/ID

Each reads STAGE_DIR/config.json ({"settings", "inputs": {part: dir}, "data_root"}) and writes
STAGE_DIR/result.json last, so a stage with a result.json is complete.
- eval:   the evaluation package (mvlm_jax.eval) on the trial's final checkpoint: demo_world (the embedded
          world's held-out questions, with the image-withheld and most-frequent-answer baselines) or the
          paper's benchmarks from a benchmark_data directory.
- export: GGUF files of the checkpoint (mvlm_jax.export); a projector that llama.cpp has no graph for
          (the Table 9 LDP variants, towers off its 24x24 grid) gets the LLM file alone, with the reason.
- edge:   the paper's Table 5/6 latency protocol in llama.cpp (bench.edge_latency.measure): the VLM run
          (336x336 image, "What is in the picture?", 256 tokens) when there is an mmproj, else the LM run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mvlm_jax.sweep.spec import SweepError

DEFAULTS: dict[str, dict[str, Any]] = {
    # benchmarks: "demo_world", "all" (the paper's six) or a comma list; data_root "" = the sweep's embedded
    # data; questions 0 = all
    "eval": {"benchmarks": "demo_world", "questions": 300, "data_root": "", "batch_size": 32},
    "export": {"types": ("q4_k_s",), "name": "model"},
    "edge": {"type": "q4_k_s", "new_tokens": 256, "threads": 0},
}
# settings that may be given but are not filled in: a default added to DEFAULTS would change the key of
# every stage already run (keys hash the resolved settings)
OPTIONAL: dict[str, dict[str, Any]] = {"eval": {"template": "vicuna_v1"}}  # the model's conversation template
RESULT_FILE = "result.json"


def resolve_settings(kind: str, overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """DEFAULTS[kind] with `overrides`, checked; errors name `where` and the key."""
    settings, optional = dict(DEFAULTS[kind]), OPTIONAL.get(kind, {})
    for key, value in overrides.items():
        if key not in settings and key not in optional:
            known = sorted({**settings, **optional})
            raise SweepError(f"{where}: unknown {kind} setting {key!r}; expected some of {known}")
        settings[key] = tuple(value) if isinstance(value, list) else value
    from mvlm_jax.export.gguf_io import FILE_TYPES

    try:
        if kind == "eval":
            from mvlm_jax.eval.benchmark import parse_names

            parse_names(settings["benchmarks"])
            if int(settings["questions"]) < 0:
                raise ValueError(f"questions {settings['questions']} < 0")
            from data_pipelines.templates import CHAT_TEMPLATES

            if settings.get("template", "vicuna_v1") not in CHAT_TEMPLATES:
                raise ValueError(f"template {settings['template']!r}: expected one of {', '.join(CHAT_TEMPLATES)}")
        for file_type in settings.get("types", ()) + ((settings["type"],) if kind == "edge" else ()):
            if file_type not in FILE_TYPES:
                raise ValueError(f"unknown GGUF type {file_type!r}; expected one of {sorted(FILE_TYPES)}")
    except (ValueError, KeyError) as error:
        raise SweepError(f"{where}: {error}") from None
    return json.loads(json.dumps(settings))


def is_complete(kind: str, stage_dir: Path) -> bool:
    if kind == "train":
        return (stage_dir / "run" / "model" / "model_config.json").is_file()
    return (stage_dir / RESULT_FILE).is_file()


def read_result(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_eval(settings: dict[str, Any], model_dir: Path, data_root: Path, out: Path) -> dict[str, Any]:
    from mvlm_jax.eval import paper
    from mvlm_jax.eval.benchmark import parse_names

    names = parse_names(settings["benchmarks"])
    if names == ["demo_world"]:
        from mvlm_jax.demo import evaluate

        scores = evaluate.answer_and_score(model_dir, data_root, out, settings["questions"] or 10**9,
                                           settings.get("template", "vicuna_v1"))
        return {"scores": {"demo_world": scores["model"]["accuracy"]},
                "baselines": {"image withheld": {"demo_world": scores["blind"]["accuracy"]},
                              "most frequent answer": {"demo_world": scores["most_frequent"]["accuracy"]}},
                "questions": scores["model"]["questions"]}
    from mvlm_jax.eval.cli import vlm_main

    argv = ["--ckpt", str(model_dir), "--benchmark", ",".join(names), "--data-root", str(data_root), "--out", str(out),
            "--batch-size", str(settings["batch_size"]), "--template", settings.get("template", "vicuna_v1")]
    if settings["questions"]:
        argv += ["--limit", str(settings["questions"])]
    if vlm_main(argv):
        raise RuntimeError("mvlm eval vlm failed (its error is above)")
    scores = {}
    for column, (name, key) in paper.TABLE4_COLUMNS.items():
        path = out / name / "scores.json"
        if name in names and path.is_file():
            record = json.loads(path.read_text())
            scores[column] = record.get("model", record).get(key)
    return {"scores": scores}


def run_export(settings: dict[str, Any], model_dir: Path, out: Path) -> dict[str, Any]:
    from mvlm_jax.checkpoint import TOKENIZER_FILE, load_config, load_model, save_model
    from mvlm_jax.export.gguf_file import export_gguf
    from mvlm_jax.export.mmproj_gguf import check_supported
    from mvlm_jax.models.config import VLMConfig

    source, mmproj_error = model_dir, None
    config = load_config(model_dir)
    if isinstance(config, VLMConfig):
        try:
            check_supported(config)
        except ValueError as error:
            mmproj_error = str(error)
            source = out / "llm_only"  # the LLM as a checkpoint of its own (LoRA is merged by the export)
            if not (source / "model_config.json").is_file():
                params, _ = load_model(model_dir)
                save_model(source, params["llm"], config.llm, force=True, tokenizer=model_dir / TOKENIZER_FILE)
    files = {}
    for file_type in settings["types"]:
        paths = export_gguf(source, out, file_type, name=settings["name"], force=True)
        llm, mmproj = paths[0], (paths[1] if len(paths) > 1 else None)
        files[file_type] = {"llm": str(llm), "llm_mb": llm.stat().st_size / 2**20,
                            "mmproj": str(mmproj) if mmproj else None,
                            "mmproj_mb": mmproj.stat().st_size / 2**20 if mmproj else None}
    return {"files": files, "mmproj_error": mmproj_error}


def run_edge(settings: dict[str, Any], export_dir: Path) -> dict[str, Any]:
    import os

    try:  # the protocol lives with the benchmark that measures it; sweeps run from the repository root
        from bench.edge_latency import Run, measure
    except ImportError as error:
        raise RuntimeError("the edge stage needs the repository's bench/ package: run from the repository root") from error
    export = read_result(export_dir)
    files = (export or {}).get("files", {}).get(settings["type"])
    if not files:
        raise RuntimeError(f"{export_dir}: no {settings['type']} export; add it to the export stage's types")
    mmproj = Path(files["mmproj"]) if files["mmproj"] else None
    run = Run("sweep", settings["type"], projector="vlm" if mmproj else None)
    result = measure(run, Path(files["llm"]), mmproj, settings["new_tokens"], settings["threads"] or os.cpu_count() or 1)
    return {"protocol": "vlm" if mmproj else "lm (no llama.cpp graph for this projector)",
            "gen_tokens_per_s": result.gen_tps, "prompt_tokens_per_s": result.prompt_tps, "total_s": result.total_s,
            "load_ms": result.load_ms, "image_ms": result.image_ms, "prompt_tokens": result.prompt_tokens,
            "visual_tokens": result.visual_tokens, "gen_tokens": result.gen_tokens, "llm_mb": files["llm_mb"],
            "mmproj_mb": files["mmproj_mb"], "load_avg": result.load_avg}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvlm_jax.sweep.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(DEFAULTS))
    parser.add_argument("--stage-dir", required=True)
    args = parser.parse_args(argv)
    stage_dir = Path(args.stage_dir)
    runtime = json.loads((stage_dir / "config.json").read_text())
    settings, inputs = runtime["settings"], {part: Path(d) for part, d in runtime["inputs"].items()}
    if args.kind == "eval":
        data_root = Path(settings["data_root"] or runtime["data_root"])
        result = run_eval(settings, inputs[""], data_root, stage_dir / "eval")
    elif args.kind == "export":
        result = run_export(settings, inputs[""], stage_dir / "gguf")
    else:
        result = run_edge(settings, inputs[""])
    from mvlm_jax.sweep.state import write_json

    write_json(stage_dir / RESULT_FILE, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
