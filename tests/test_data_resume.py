"""Exact resume of the data stream: with worker processes, across a change of worker count or process
count, through an orbax checkpoint, and refusal under a changed data configuration."""
import json
import subprocess
import sys
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

import grain
from data_pipelines.pretrain_pipeline import PretrainData, batch_hash, build_pretrain_dataset
from test_pretrain_data import corpus, shards  # noqa: F401  (module fixtures)

SCRIPT = Path(__file__).with_name("data_workers_script.py")


def hashes(config, steps, process_index=0, process_count=1):
    stream = build_pretrain_dataset(config, process_index, process_count)
    return [batch_hash(next(stream)) for _ in range(steps)]


@pytest.mark.parametrize("workers, resume_workers", [(2, 2), (2, 0), (0, 3)])
def test_resume_with_worker_processes_and_a_changed_worker_count(shards, workers, resume_workers):  # noqa: F811
    reference = hashes(PretrainData(sources=((str(shards), 1.0),), seq_len=32, batch_size=4, seed=3), 10)
    done = subprocess.run([sys.executable, str(SCRIPT), str(shards), str(workers), "4", str(resume_workers), "10"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == reference


def test_resume_with_another_process_count_sees_the_same_examples_per_step(shards):  # noqa: F811
    config = PretrainData(sources=((str(shards), 1.0),), seq_len=32, batch_size=4, seed=3)

    def global_batches(process_count, start=0, steps=6):
        per_process = []
        for p in range(process_count):
            stream = build_pretrain_dataset(config, p, process_count)
            stream.set_state({"batches_consumed": start, "fingerprint": stream.order_fingerprint})
            per_process.append([next(stream)["tokens"] for _ in range(steps)])
        return [{row.tobytes() for part in per_process for row in part[t]} for t in range(steps)]

    two = global_batches(2)  # trained on 2 processes for 3 steps, then resumed on 1 and on 4
    assert global_batches(1, start=3, steps=3) == two[3:]
    assert global_batches(4, start=3, steps=3) == two[3:]


def test_restore_under_another_data_configuration_is_refused(shards):  # noqa: F811
    config = PretrainData(sources=((str(shards), 1.0),), seq_len=32, batch_size=4, seed=3)
    state = build_pretrain_dataset(config).get_state()
    changed = build_pretrain_dataset(PretrainData(**{**config.__dict__, "seed": 4}))
    with pytest.raises(ValueError, match="another data configuration"):
        changed.set_state(state)


def test_state_goes_through_an_orbax_checkpoint(shards, tmp_path):  # noqa: F811
    config = PretrainData(sources=((str(shards), 1.0),), seq_len=32, batch_size=4, seed=3, reset_attention_at_eos=True)
    reference = hashes(config, 9)
    stream = build_pretrain_dataset(config)
    for _ in range(5):
        next(stream)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(stream)))
        manager.wait_until_finished()
    resumed = build_pretrain_dataset(config)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert [batch_hash(next(resumed)) for _ in range(4)] == reference[5:]
