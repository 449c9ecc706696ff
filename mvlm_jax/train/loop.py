"""The trainer: resume or initialise a sharded state, then step; after each step its hooks (validation,
benchmarks, logging, checkpointing: mvlm_jax.train.hooks) run when due, top to bottom.

It receives the parsed experiment (mvlm_jax.train.experiment), the compiled run (mvlm_jax.train.run), the
data stream and the hooks from the entry point (mvlm_jax.train.entry). It knows neither the model family,
the loss nor the stage: the run's step holds the loss and what trains. Resume order: the workdir's own
latest good checkpoint (its frozen parameters from WORKDIR/frozen), then `init_from`
(mvlm_jax.train.initial), then a fresh initialisation of what init_from does not cover.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from data_pipelines.pretrain_pipeline import batch_hash
from mvlm_jax.checkpoint import save_model
from mvlm_jax.models.config import to_dict
from mvlm_jax.train.checkpoints import TrainCheckpoints
from mvlm_jax.train.experiment import Experiment
from mvlm_jax.train.hooks import Hook, StepContext, due_hooks, run_hooks
from mvlm_jax.train.initial import initial_state
from mvlm_jax.train.metrics import MetricsWriter, peak_flops
from mvlm_jax.train.partition import merge, trainable_summary
from mvlm_jax.train.preemption import PreemptionWatch
from mvlm_jax.train.run import Run


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


def run_loop(experiment: Experiment, run: Run, data: Any, workdir_path: epath.Path,
             hooks: Sequence[Hook] = ()) -> list[dict]:
    """Run (or resume) `experiment` in `workdir_path` with `run`'s step over `data` (a BatchStream: an
    iterator of this process's batches with get_state / set_state / close); returns the metrics of the
    steps run now. `hooks` run after each step when due, in order, before logging (so that what they add
    to a step's record is logged with it) and checkpointing."""
    model_config = run.model_config
    checkpoints = TrainCheckpoints(workdir_path / "checkpoints", experiment.checkpoint, workdir_path / "frozen")
    metadata = {"config": experiment.record, "model": to_dict(model_config)}
    checkpoints.check_compatible(metadata)
    restored = checkpoints.restore_latest(run.abstract_state, data)
    if restored is not None:
        start_step, state, _ = restored
        print(f"resumed from {workdir_path / 'checkpoints'} at step {start_step}")
    else:
        start_step = 0
        state = initial_state(experiment.init_from, run, jax.random.key(experiment.train.seed))
    print(trainable_summary(state["trainable"], state["frozen"]))

    batch_sharding, jitted = run.batch_sharding, run.step
    writer = MetricsWriter(workdir_path, start_step, enabled=jax.process_index() == 0)
    peak = peak_flops(jax.devices()[0].device_kind)
    history: list[dict] = []
    total_steps = experiment.train.total_steps
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
        flops = run.step_flops(tokens, step_info["seq"], images)
        return {"step": step_info["step"], "loss": float(metrics["loss"]),
                "learning_rate": float(metrics["learning_rate"]), "grad_norm": float(metrics["grad_norm"]),
                "tokens_per_s": tokens / elapsed, "images_per_s": images / elapsed,
                "real_token_share": tokens / step_info["row_tokens"] if step_info["row_tokens"] else None,
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

    # Run in this order after a step: the given hooks add to the record, logging writes it, and the
    # checkpoint comes last.
    hook_list = [*hooks, Hook("log", 1, log), Hook("checkpoint", experiment.checkpoint.every, checkpoint, needs_state=True)]

    def after_step(step_info: dict, step_state: dict | None) -> None:
        """Read a step's metrics (waits for it), then run the hooks due at it; no hook runs after a
        non-finite step, so a checkpoint only ever holds a state whose step was checked finite."""
        record = read_step(step_info)
        run_hooks(hook_list, StepContext(step_info["step"], step_info["step"] == total_steps, record, step_state))

    def one_step(step: int, pending: dict | None, state: dict) -> tuple[dict | None, dict]:
        """Dispatch step `step` + 1; read the previous one's metrics meanwhile. Returns (pending, state)."""
        batch = next(data)
        tokens = batch.get("tokens")  # a classifier's batch has none
        info = {"step": step + 1, "hash": batch_hash(batch), "seq": 0 if tokens is None else tokens.shape[1],
                "row_tokens": 0 if tokens is None else int(tokens.size) * jax.process_count()}
        global_batch = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), batch)
        info["dispatched"] = time.perf_counter()
        with run.activate():
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
            save_final_model(workdir_path / "model", state, model_config, experiment.tokenizer)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        data.close()
    return history
