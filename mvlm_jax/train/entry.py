"""The entry point of a training run: the one place an experiment's ConfigDict is read.

  config --setup.check_data_paths / workdir_path--> checked paths
         --setup.epoch_plan--> total_steps of conversation epochs (train.epochs)
         --experiment.parse--> typed parts (model, optim, mesh + rules, train, loss, checkpoint, init_from)
         --run.build_run--> mesh, model, loss, sharded abstract state, jitted step and eval step
         --setup.data_stream / held_out_batches, eval.during_training--> data stream and hooks
         --loop.run_loop--> steps, checkpoints, the final model

`python -m mvlm_jax.train` calls `train`; tests and benchmarks call it in-process.
"""
from __future__ import annotations

from typing import Sequence

import jax
import ml_collections

from mvlm_jax.eval.during_training import benchmark_hook
from mvlm_jax.train import setup
from mvlm_jax.train.experiment import model_config, parse
from mvlm_jax.train.hooks import Hook
from mvlm_jax.train.loop import run_loop
from mvlm_jax.train.run import build_run
from mvlm_jax.train.validation import Validation, validation_hook


def train(config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook] = ()) -> list[dict]:
    """Run (or resume) the experiment in `workdir`; returns the metrics of the steps run now. `hooks`: more
    periodic work (mvlm_jax.train.hooks), run after validation and before logging, so that what they add
    to a step's record is logged with it."""
    setup.check_data_paths(config)  # before anything is written or compiled
    workdir_path = setup.workdir_path(workdir)
    # Before the config is parsed: with train.epochs the data decides total_steps, and the schedule with it.
    model = model_config(config.model, tuple(config.data.classes))
    examples = setup.epoch_plan(config, model, workdir_path, write=jax.process_index() == 0)
    experiment = parse(config, model)
    run = build_run(experiment)
    benchmarks = benchmark_hook(config, model, workdir_path)  # checks its files before any data is read
    process, processes = jax.process_index(), jax.process_count()
    data = setup.data_stream(config, model, process, processes, examples)
    every = config.eval.every
    validation = ([validation_hook(every, Validation(setup.held_out_batches(config, model, workdir_path, process,
                                                                             processes),
                                                     run.eval_step, run.batch_sharding, run.activate),
                                   verbose=process == 0)] if every else [])
    return run_loop(experiment, run, data, workdir_path, [*validation, *([benchmarks] if benchmarks else []), *hooks])
