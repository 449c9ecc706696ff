"""The trainer: resume or initialise a sharded state, then step; after each step its hooks (validation,
logging, checkpointing: mvlm_jax.train.hooks) run when due, top to bottom.

It knows neither the model family nor the stage: the experiment config says what trains (path patterns),
which data feeds it and where the weights come from. Resume order: the workdir's own latest good
checkpoint (its frozen parameters from WORKDIR/frozen), then `init_from` (mvlm_jax.train.initial), then a
fresh initialisation of what init_from does not cover.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm import tqdm

from data_pipelines.pretrain_pipeline import batch_hash
from mvlm_jax import sharding
from mvlm_jax.checkpoint import save_model
from mvlm_jax.models.config import to_dict
from mvlm_jax.train import setup
from mvlm_jax.train.run import build_run
from mvlm_jax.train.checkpoints import TrainCheckpoints
from mvlm_jax.train.hooks import Hook, StepContext, due_hooks, run_hooks
from mvlm_jax.train.metrics import MetricsWriter, peak_flops, step_flops
from mvlm_jax.train.preemption import PreemptionWatch
from mvlm_jax.train.partition import count, describe, merge
from mvlm_jax.train.initial import initial_state
from mvlm_jax.train.validation import Validation, validation_hook
from mvlm_jax.eval.during_training import benchmark_hook


class TrainingError(RuntimeError):
    pass


def save_final_model(directory: epath.Path, state: dict, model_config, tokenizer: str | None = None) -> None:
    """The trained parameters as a model checkpoint (`init_from` of the next stage, HF / GGUF export), with
    a copy of the run's tokenizer."""
    params = merge(state["trainable"], state["frozen"])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        save_model(directory, jax.tree.map(np.asarray, jax.device_get(params)), model_config, force=True,
                   tokenizer=tokenizer or None)
        print(f"wrote the trained model to {directory}")


def train(config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook] = ()) -> list[dict]:
    """Run (or resume) the experiment in `workdir`; returns the metrics of the steps run now. `hooks`: more
    periodic work (mvlm_jax.train.hooks), run after validation and before logging, so that what they add
    to a step's record is logged with it."""
    setup.check_data_paths(config)  # before anything is written or compiled
    workdir_path = setup.workdir_path(workdir)
    # Before the run is built: with train.epochs the data decides total_steps, and the schedule with it.
    examples = setup.epoch_plan(config, setup.model_config(config.model), workdir_path,
                                write=jax.process_index() == 0)
    run = build_run(config)
    mesh, model_config = run.mesh, run.model_config
    benchmarks = benchmark_hook(config, model_config, workdir_path)  # checks its files before any data is read
    data = setup.data_stream(config, model_config, jax.process_index(), jax.process_count(), examples)
    validation = Validation(setup.held_out_batches(config, model_config, workdir_path, jax.process_index(),
                                                   jax.process_count()),
                            run.eval_step, run.batch_sharding, mesh) if config.eval.every else None

    checkpoints = TrainCheckpoints(workdir_path / "checkpoints", setup.checkpoint_config(config),
                                   workdir_path / "frozen")
    metadata = {"config": config.to_dict(), "model": to_dict(model_config)}
    checkpoints.check_compatible(metadata)
    restored = checkpoints.restore_latest(run.abstract_state, data)
    if restored is not None:
        start_step, state, _ = restored
        print(f"resumed from {workdir_path / 'checkpoints'} at step {start_step}")
    else:
        start_step = 0
        state = initial_state(config.init_from, run, jax.random.key(config.train.seed))
    print(describe(state["trainable"], state["frozen"]))
    llm_part = lambda tree: tree.get("llm", {}) if "llm" in state["frozen"] or "llm" in state["trainable"] else tree  # noqa: E731
    llm_trained = count(llm_part(state["trainable"]))
    trained_share = llm_trained / max(llm_trained + count(llm_part(state["frozen"])), 1)

    batch_sharding, jitted = run.batch_sharding, run.step
    writer = MetricsWriter(workdir_path, start_step, enabled=jax.process_index() == 0)
    peak = peak_flops(jax.devices()[0].device_kind)
    history: list[dict] = []
    total_steps = config.train.total_steps
    bar = tqdm(total=total_steps, initial=start_step, disable=None, desc="train")
    pending: dict | None = None  # the dispatched step whose metrics are not read yet
    last_done = time.perf_counter()

    def read_step(step_info: dict) -> dict:
        """Wait for a dispatched step, stop on a non-finite one; its metrics record."""
        nonlocal last_done
        metrics = jax.device_get(step_info["metrics"])
        done = time.perf_counter()
        elapsed, last_done = done - max(last_done, step_info["dispatched"]), done
        if not bool(metrics["finite"]):
            raise TrainingError(f"step {step_info['step']}: loss {float(metrics['loss'])} / gradient norm "
                                f"{float(metrics['grad_norm'])} is not finite; the state was not updated and "
                                f"nothing was saved; the last good checkpoint is in {workdir_path / 'checkpoints'}")
        tokens, images = int(metrics["real_tokens"]), int(metrics.get("images", 0))  # padding excluded
        flops = step_flops(model_config, tokens, step_info["seq"], images, trained_share)
        return {"step": step_info["step"], "loss": float(metrics["loss"]),
                "learning_rate": float(metrics["learning_rate"]), "grad_norm": float(metrics["grad_norm"]),
                "tokens_per_s": tokens / elapsed, "images_per_s": images / elapsed,
                "real_token_share": tokens / step_info["row_tokens"],
                "step_time_s": elapsed, "mfu": flops / elapsed / (peak * jax.device_count()) if peak else None,
                "batch_hash": step_info["hash"]}

    def log(context: StepContext) -> None:
        writer.write(context.record)
        history.append(context.record)
        bar.set_postfix(loss=f"{context.record['loss']:.4f}")
        bar.update(1)

    def checkpoint(context: StepContext) -> None:
        writer.sync()  # metrics.jsonl holds every step up to the checkpoint (an object store's copy is put now)
        checkpoints.save(context.step, context.state, data, metadata)

    # Run in this order after a step: validation and the extra hooks add to the record, logging writes it,
    # and the checkpoint comes last.
    hook_list = [*([validation_hook(config.eval.every, validation, jax.process_index() == 0)] if validation else []),
                 *([benchmarks] if benchmarks else []),
                 *hooks,
                 Hook("log", 1, log),
                 Hook("checkpoint", config.checkpoint.every, checkpoint, needs_state=True)]

    def after_step(step_info: dict, step_state: dict | None) -> None:
        """Read a step's metrics (waits for it), then run the hooks due at it; no hook runs after a
        non-finite step, so a checkpoint only ever holds a state whose step was checked finite."""
        record = read_step(step_info)
        run_hooks(hook_list, StepContext(step_info["step"], step_info["step"] == total_steps, record, step_state))

    def one_step(step: int, pending: dict | None, state: dict) -> tuple[dict | None, dict]:
        """Dispatch step `step` + 1; read the previous one's metrics meanwhile. Returns (pending, state)."""
        batch = next(data)
        info = {"step": step + 1, "hash": batch_hash(batch), "seq": batch["tokens"].shape[1],
                "row_tokens": int(batch["tokens"].size) * jax.process_count()}
        global_batch = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), batch)
        info["dispatched"] = time.perf_counter()
        with sharding.activate(mesh):
            state, info["metrics"] = jitted(state, global_batch)
        # Read the previous step's metrics only now: the host prepares and dispatches step t + 1
        # while the device still runs step t.
        if pending is not None:
            after_step(pending, None)
        if any(hook.needs_state for hook in due_hooks(hook_list, step + 1, step + 1 == total_steps)):
            after_step(info, state)  # before step t + 1 donates this state
            return None, state
        return info, state

    preempted = False
    try:
        with PreemptionWatch() as watch:
            for step in range(start_step, total_steps):
                if watch.requested(step):  # every process stops here: checkpoint the state after `step` steps
                    if pending is not None:
                        after_step(pending, None)
                        pending = None
                    if step > start_step and step not in checkpoints.manager.all_steps():
                        writer.sync()
                        checkpoints.save(step, state, data, metadata)
                    checkpoints.wait()
                    print(f"preempted: stopped after step {step} with a checkpoint in {workdir_path / 'checkpoints'}; "
                          "run the same command again to resume")
                    preempted = True
                    break
                pending, state = one_step(step, pending, state)
        if pending is not None:
            after_step(pending, None)
        if not preempted:
            save_final_model(workdir_path / "model", state, model_config, config.data.get("tokenizer"))
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        data.close()
    return history
