"""`mvlm eval vlm` (answer and score image benchmarks) and `mvlm eval score` (score any answers file).

  mvlm eval vlm --ckpt CKPT --benchmark gqa,sqa,textvqa,pope,mme,mmbench --data-root DIR --out OUT [--limit N]
  mvlm eval vlm --gguf MODEL.gguf --mmproj MMPROJ.gguf --benchmark ... --data-root DIR --out OUT
  mvlm eval score --benchmark B --answers ANSWERS.jsonl --data-root DIR --out SCORES.json

DIR is MobileVLM's `benchmark_data` directory (docs/EVALUATION.md lists every file). Both --ckpt and
--gguf may be given in one command; runs of earlier commands in the same OUT stay in the report, so the
checkpoint and its GGUF files are shown side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from data_pipelines.templates import CHAT_TEMPLATES
from mvlm_jax.atomic import atomic_file


def _vlm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvlm eval vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a MobileVLM checkpoint (answers in JAX, and the blind baseline)")
    parser.add_argument("--gguf", help="an exported LLM GGUF file (answers in llama.cpp); needs --mmproj")
    parser.add_argument("--mmproj", help="the mmproj GGUF file written beside it")
    parser.add_argument("--benchmark", default="all", help="comma-separated: gqa,sqa,textvqa,pope,mme,mmbench,"
                        "demo_world; 'all' = the paper's six")
    parser.add_argument("--data-root", required=True, help="the benchmark_data directory")
    parser.add_argument("--out", required=True, help="output directory (OUT/<benchmark>/answers*.jsonl, "
                        "scores.json, OUT/report.md)")
    parser.add_argument("--limit", type=int, help="only the first N questions of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, help="override the official max_new_tokens of every "
                        "benchmark (quick runs; the records and the report say so)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per JAX batch")
    parser.add_argument("--devices", type=int, help="split each batch's rows over the first N local devices "
                        "(default: all of them)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="compute dtype of the checkpoint (default: its own; the official runs use float16)")
    parser.add_argument("--tokenizer", help="SentencePiece model, when the checkpoint has none")
    parser.add_argument("--template", default="vicuna_v1", choices=CHAT_TEMPLATES, help="the conversation "
                        "template the model was trained in (config.data.template of VLM stage 2)")
    parser.add_argument("--no-blind", action="store_true", help="skip the blind (image withheld) baseline")
    parser.add_argument("--distributed", action="store_true",
                        help="jax.distributed.initialize() first (SLURM and other clusters are auto-detected); "
                        "each process answers a contiguous slice of the questions")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a manual multi-process run")
    parser.add_argument("--num-processes", type=int, help="processes in a manual multi-process run")
    parser.add_argument("--process-id", type=int, help="this process's index in a manual multi-process run")
    return parser


def vlm_main(argv: Sequence[str] | None = None) -> int:
    args = _vlm_parser().parse_args(argv)
    if not args.ckpt and not args.gguf:
        print("error: give --ckpt CKPT, or --gguf MODEL.gguf --mmproj MMPROJ.gguf, or both", file=sys.stderr)
        return 2
    if args.gguf and not args.mmproj:
        print("error: --gguf needs --mmproj (the mmproj-*.gguf written beside the model)", file=sys.stderr)
        return 2
    try:
        return _run_vlm(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run_vlm(args: argparse.Namespace) -> int:
    from mvlm_jax.eval import benchmark, report, runner

    names = benchmark.parse_names(args.benchmark)
    data_root, out = Path(args.data_root), Path(args.out)
    benchmark.check_files(names, data_root)  # every missing file, before any model is loaded
    import jax

    from mvlm_jax.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    index, count = jax.process_index(), jax.process_count()
    jax_answerer = gguf_answerer = None
    if args.ckpt:
        from mvlm_jax.eval.answerers import JaxAnswerer

        local = jax.local_devices()
        if args.devices is not None and not 1 <= args.devices <= len(local):
            raise ValueError(f"--devices {args.devices}: this process has {len(local)} local device(s)")
        jax_answerer = JaxAnswerer.from_checkpoint(args.ckpt, batch_size=args.batch_size,
                                                   devices=local[:args.devices], tokenizer=args.tokenizer,
                                                   dtype=args.dtype, template=args.template)
    if args.gguf:
        from mvlm_jax.eval.answerers import LlamaCppAnswerer

        longest = args.max_new_tokens or max(benchmark.module(name).MAX_NEW_TOKENS for name in names)
        gguf_answerer = LlamaCppAnswerer(args.gguf, args.mmproj, max_new_tokens=longest, template=args.template)
    try:
        for name in names:
            questions = benchmark.module(name).questions(data_root)[:args.limit]  # once for every run
            common = dict(process_index=index, process_count=count, max_new_tokens=args.max_new_tokens)
            if jax_answerer is not None:
                runner.answer_benchmark(name, questions, out, jax_answerer, runner.MODEL_RUN, **common)
                if not args.no_blind:
                    runner.answer_benchmark(name, questions, out, jax_answerer, runner.BLIND_RUN, blind=True,
                                            **common)
            if gguf_answerer is not None:
                runner.answer_benchmark(name, questions, out, gguf_answerer, runner.gguf_run(args.gguf), **common)
            if index == 0:
                runner.write_majority_answers(name, questions, data_root, out)
                report.score_benchmark(name, data_root, out, args.limit)
    finally:
        if gguf_answerer is not None:
            gguf_answerer.close()
    if index == 0:
        print(report.write_report(out))
        print(f"\nwrote {out / 'report.md'} and {', '.join(str(out / n / 'scores.json') for n in names)}")
    return 0


def score_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvlm eval score",
                                     description="score an answers file (official record format) by the official rules")
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--answers", required=True, help="answers .jsonl (ours or the official generators')")
    parser.add_argument("--data-root", required=True, help="the benchmark_data directory")
    parser.add_argument("--out", help="write the scores here as JSON")
    parser.add_argument("--limit", type=int, help="the answers cover only the first N questions")
    args = parser.parse_args(argv)
    from mvlm_jax.eval import benchmark, records

    try:
        module = benchmark.module(args.benchmark)
        answers = records.read_records(args.answers)
        for path, what in module.required_files(Path(args.data_root)).items():
            # scoring reads question and annotation files only (never the image folders, named without suffix)
            if Path(path).suffix and not Path(path).exists():
                raise benchmark.BenchmarkFileError(f"{path} is missing: {what}")
        try:
            scores = module.score(answers, Path(args.data_root), limit=args.limit)
        except benchmark.AnswerError as error:
            raise benchmark.AnswerError(f"{args.answers}: {error}") from None
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(scores, indent=1)
    print(text)
    if args.out:
        with atomic_file(args.out, force=True) as partial:
            partial.write_text(text + "\n")
    return 0
