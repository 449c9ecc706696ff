"""Exact resume: a run killed with SIGKILL at an arbitrary step and restarted in the same workdir gives the
same per-step losses and batch hashes as an uninterrupted run, bitwise on CPU; a damaged latest checkpoint
is reported and the previous good one is used. A run preempted with SIGTERM (twice) checkpoints the step it
stopped at, exits 0 and resumes the same way."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def command(workdir, data_root, steps):
    return [sys.executable, "-m", "mvlm_jax.train", "--config", str(ROOT / "experiments" / "pretrain.py") + ":tiny",
            "--workdir", str(workdir), f"--config.total_steps={steps}", "--config.checkpoint_every=5",
            f"--config.data.embedded.root={data_root}"]


def run(workdir, data_root, steps):
    done = subprocess.run(command(workdir, data_root, steps), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def wait_for_steps(process, workdir, steps):
    """Until the running `process` has logged `steps` steps in `workdir` (it must still be running then)."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        metrics = Path(workdir) / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before step {steps}"


def records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def tensorboard_events(event_file):
    """The Event protos of one TensorBoard file (TFRecord framing: length, crc, payload, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, offset, events = Path(event_file).read_bytes(), 0, []
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
    return events


def test_sigkill_and_restart_reproduce_the_uninterrupted_run(tmp_path, data_root):
    run(tmp_path / "reference", data_root, 20)
    reference = [(r["step"], r["loss"], r["batch_hash"]) for r in records(tmp_path / "reference")]
    assert [s for s, _, _ in reference] == list(range(1, 21))
    assert sorted(p.name for p in (tmp_path / "reference" / "checkpoints").iterdir() if p.name.isdigit()) == [
        "10", "15", "20"]  # every 5 steps, the last 3 kept
    assert list((tmp_path / "reference" / "tensorboard").glob("events.out.tfevents.*"))
    fields = set(records(tmp_path / "reference")[0])
    assert fields == {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "images_per_s", "mfu",
                      "real_token_share", "step_time_s", "batch_hash"}

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed, data_root, 20), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wait_for_steps(process, killed, 13)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps_before = len(records(killed))
    assert 13 <= steps_before < 20

    resumed = run(killed, data_root, 20)
    assert "resumed from" in resumed.stdout
    assert [(r["step"], r["loss"], r["batch_hash"]) for r in records(killed)] == reference
    # TensorBoard: the resumed run's file opens with a purge marker at the restored step + 1, so the
    # interrupted run's points past the checkpoint are hidden; it then logs exactly the steps it ran.
    restored = int(resumed.stdout.split("resumed from")[1].split("at step")[1].split()[0])
    assert restored in (10, 15) and restored < steps_before
    first, second = sorted((killed / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    events = tensorboard_events(second)
    purge = [e for e in events if e.HasField("session_log")]
    assert len(purge) == 1 and purge[0].session_log.status == purge[0].session_log.START
    assert purge[0].step == restored + 1
    assert sorted({e.step for e in events if e.summary.value}) == list(range(restored + 1, 21))
    assert not any(e.HasField("session_log") for e in tensorboard_events(first))

    # Damage the newest checkpoint: the run says so, falls back to the previous one and still matches.
    newest = max((killed / "checkpoints").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    assert newest.name == "20"
    victim = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    again = run(killed, data_root, 20)
    assert "checkpoint at step 20 is damaged" in again.stderr and "resumed from" in again.stdout
    assert [(r["step"], r["loss"], r["batch_hash"]) for r in records(killed)] == reference

    # Preemption: SIGTERM, and again while the run stops, between checkpoints. It checkpoints the step it
    # stopped at (not a multiple of 5), exits 0 without a final model, and resumes to the same run.
    preempted = tmp_path / "preempted"
    process = subprocess.Popen(command(preempted, data_root, 20), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wait_for_steps(process, preempted, 11)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "preempted: stopped after step" in out and "ignored" in err
    stopped = int(out.split("stopped after step")[1].split()[0])
    assert 11 <= stopped < 20 and len(records(preempted)) == stopped
    assert stopped in {int(p.name) for p in (preempted / "checkpoints").iterdir() if p.name.isdigit()}
    assert not (preempted / "model").exists()
    resumed = run(preempted, data_root, 20)
    assert f"resumed from {preempted / 'checkpoints'} at step {stopped}" in resumed.stdout
    assert [(r["step"], r["loss"], r["batch_hash"]) for r in records(preempted)] == reference
