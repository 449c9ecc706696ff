"""Image benchmarks during training: a hook of the training loop (mvlm_jax.train.hooks) that answers a
subset of benchmarks with the current parameters and logs the headline scores.

Config keys (experiments' `eval` section): `benchmarks` (names, e.g. ("gqa", "pope"); empty = off), `limit`
(the first N questions of each; 0 = all), `data_root` (the benchmark_data directory; default the embedded
dataset's root, where `demo_world` lives), `benchmark_every` (steps; 0 = the validation interval
`eval.every`), `batch_size` (questions per batch). Answers and scores of step t go to WORKDIR/eval/step_<t>/ (the same
files as `mvlm eval vlm`; with a gs:// workdir they are written locally and uploaded when the step's answers
are complete); the record of step t gets `eval/<benchmark>/<key>` for each headline key, so
metrics.jsonl and TensorBoard carry them beside the losses. Each process answers its slice of the
questions (the parameters are gathered to every process first).
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from mvlm_jax.atomic import atomic_directory
from mvlm_jax.paths import as_path, is_url
from mvlm_jax.train.hooks import Hook, StepContext


def benchmark_hook(config: ml_collections.ConfigDict, model_config, workdir: str | os.PathLike) -> Hook | None:
    """The hook, or None when no benchmark is configured. Checks the names and files before training."""
    from mvlm_jax.eval import benchmark
    from mvlm_jax.train.setup import embedded_root

    settings = config.eval
    if not settings.benchmarks:
        return None
    workdir = as_path(workdir)
    if is_url(workdir) and jax.process_count() > 1:
        raise ValueError(f"config.eval.benchmarks with --workdir {workdir}: several processes merge their answers "
                         "through a shared file system, which an object store is not; run `mvlm eval vlm` on the "
                         "saved model, or use a shared file system for the workdir")
    names = benchmark.parse_names(",".join(settings.benchmarks) if not isinstance(settings.benchmarks, str)
                                  else settings.benchmarks)
    if not settings.data_root and any(name != "demo_world" for name in names):
        raise ValueError("config.eval.benchmarks needs config.eval.data_root (the benchmark_data directory)")
    data_root = Path(settings.data_root or embedded_root(config, workdir))
    benchmark.check_files(names, data_root)
    questions = {name: benchmark.module(name).questions(data_root)[:settings.limit or None] for name in names}
    every = settings.benchmark_every or settings.every
    if not every:
        raise ValueError("config.eval.benchmarks needs config.eval.benchmark_every (or eval.every) > 0")

    def run(context: StepContext) -> None:
        from mvlm_jax.eval import report, runner
        from mvlm_jax.eval.answerers import JaxAnswerer
        from data_pipelines.templates import CHAT_TEMPLATES
        from data_pipelines.tokenizer import Tokenizer

        params = context.params
        if jax.process_count() > 1:  # every process answers its slice with the whole model
            from jax.experimental import multihost_utils
            params = multihost_utils.process_allgather(params, tiled=True)
        params = jax.tree.map(np.asarray, jax.device_get(params))
        template = config.data.template if config.data.template in CHAT_TEMPLATES else "vicuna_v1"  # not "plain"
        answerer = JaxAnswerer(model_config, params, Tokenizer(config.data.tokenizer), f"step-{context.step}",
                               f"{workdir.name}-step-{context.step}", batch_size=settings.batch_size, template=template)
        out = workdir / "eval" / f"step_{context.step:07d}"

        def answer(out: Path) -> None:
            for name in names:
                runner.answer_benchmark(name, questions[name], out, answerer, runner.MODEL_RUN,
                                        process_index=jax.process_index(), process_count=jax.process_count())
                if jax.process_index() == 0:
                    scores = report.score_benchmark(name, data_root, out, settings.limit or None)["model"]
                    for key in benchmark.module(name).SCORE_KEYS:
                        if isinstance(scores.get(key), (int, float)):
                            context.record[f"eval/{name}/{key}"] = float(scores[key])
            if jax.process_index() == 0:
                report.write_report(out)

        if is_url(out):  # answers are appended as they come: written locally, uploaded when complete
            with atomic_directory(out, force=True) as local:
                answer(local)
        else:
            answer(Path(out))
            print(f"step {context.step}: " + ", ".join(f"{k} {v:.1f}" for k, v in context.record.items()
                                                        if k.startswith("eval/")))

    return Hook("benchmarks", every, run, needs_state=True)
