"""Two processes on localhost (CPU, gloo collectives, coordinator on loopback) train the tiny model with the
same global batch as one process and give the same losses (1e-5); SIGTERM to one of them stops both at the
same step with one checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(workdir, data_root, *extra):
    return [sys.executable, "-m", "mvlm_jax.train", "--config", f"{ROOT / 'experiments' / 'pretrain.py'}:tiny",
            "--workdir", str(workdir), "--config.train.total_steps=6", "--config.checkpoint.every=3",
            f"--config.data.embedded.root={data_root}", *extra]


def losses(workdir):
    return [json.loads(line)["loss"] for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def run_two(workdir, data_root, env):
    """(stdout, stderr) of each of two processes training in `workdir`."""
    port = free_port()
    processes = [subprocess.Popen(command(workdir, data_root, f"--coordinator=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    return outputs


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    single = subprocess.run(command(tmp_path / "one", tmp_path / "data"), capture_output=True, text=True,
                            timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    outputs = run_two(tmp_path / "two", tmp_path / "data", env)
    assert "trainable" in outputs[0][0]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    data_files = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "6" / "data").glob("*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    # Only process 1 reads its own data file: damaged, it must not leave process 0 resuming alone from
    # step 6 while it falls back. Both fall back to step 3 together and retrain to the same losses.
    victim = tmp_path / "two" / "checkpoints" / "6" / "data" / "process_1-of-2.json"
    victim.write_text(victim.read_text()[:10])
    outputs = run_two(tmp_path / "two", tmp_path / "data", env)
    assert all("at step 3" in out for out, _ in outputs), [out[-500:] for out, _ in outputs]
    assert "checkpoint at step 6 is damaged (" in outputs[1][1]
    assert "checkpoint at step 6 is damaged for another process" in outputs[0][1]
    assert max(abs(a - b) for a, b in zip(one, losses(tmp_path / "two"))) < 1e-5 and len(losses(tmp_path / "two")) == 6


def test_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    port, workdir = free_port(), tmp_path / "two"
    processes = [subprocess.Popen(command(workdir, tmp_path / "data", f"--coordinator=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}", "--config.train.total_steps=300",
                                          "--config.checkpoint.every=1000"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in processes), "a process ended before the signal"
    processes[1].send_signal(signal.SIGTERM)  # as a preempted host would get it: the other one is not told
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    stopped = {int(out.split("stopped after step")[1].split()[0]) for out, _ in outputs if "stopped after step" in out}
    assert len(stopped) == 1 and all("stopped after step" in out for out, _ in outputs)
    step = stopped.pop()
    assert 3 <= step < 300 and len(losses(workdir)) == step
    assert sorted(p.name for p in (workdir / "checkpoints" / str(step) / "data").glob("*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert not (workdir / "model").exists()
