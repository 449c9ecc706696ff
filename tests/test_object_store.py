"""Object-store workdirs (docs/TRAINING.md, "Object stores") against a GCS emulator that this module starts
on 127.0.0.1 (gcp-storage-emulator in memory, through tests/gcs_emulator.py; nothing leaves the machine): a
run with --workdir gs://... writes its checkpoints, metrics and model there and resumes from them with the
losses of an uninterrupted run; init_from and export read a model checkpoint from gs://; an unreachable
store, an upload cut short and object-store data paths fail with errors that name the URL and leave
nothing behind."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # experiments/
EMULATOR = ROOT / "tests" / "gcs_emulator.py"  # gcp-storage-emulator plus the x-goog-generation header
BUCKET = "bucket"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gcs_env(url: str) -> dict:
    """Point every GCS client at `url`: gcsfs (epath's gs:// paths) and google-cloud-storage (orbax's bucket
    lookup, tensorboardX) read STORAGE_EMULATOR_HOST, tensorstore (orbax's arrays) TENSORSTORE_GCS_HTTP_URL.
    Credentials: a fixed token for tensorstore, anonymous for gcsfs, so that none is looked up on the network.
    gcsfs's zonal/HNS layer would ask the emulator over gRPC, which it does not speak."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "test"}


def start_emulator(port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(EMULATOR), "start", "--host", "127.0.0.1", "--port", str(port),
                                "--default-bucket", BUCKET, "--in-memory"],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"the GCS emulator did not start on port {port}:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator's URL; the environment of this process (and of the runs it starts) points at it. The
    clients read these variables once per process, so the runs that need another endpoint are subprocesses."""
    port = free_port()
    process = start_emulator(port, tmp_path_factory.mktemp("emulator") / "emulator.log")
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in gcs_env(url).items():
            patch.setenv(key, value)
        import fsspec.config
        patch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # fsspec read FSSPEC_GCS_* at import
        yield url
    process.terminate()
    process.wait(timeout=30)


UNREACHABLE_SAVE = """
import numpy as np
from mvlm_jax.checkpoint import save_model
from mvlm_jax.models.config import LLAMA_PRESETS
save_model("gs://bucket/unreachable-model", {"w": np.zeros(3, np.float32)}, LLAMA_PRESETS["tiny"])
"""


@pytest.fixture(scope="module", autouse=True)
def unreachable(tmp_path_factory):
    """A run and a model save against a closed port, started with the module: gcsfs retries a refused
    connection with backoff for about 30 s before it gives up, time the other tests use meanwhile."""
    tmp = tmp_path_factory.mktemp("unreachable")
    (tmp / "staging").mkdir()
    # The port stays bound, never listening, until the module ends: connections to it are refused, and no
    # emulator started meanwhile (this module's or a parallel test's) can be handed the same port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    env = {**os.environ, **gcs_env(f"http://127.0.0.1:{closed.getsockname()[1]}"), "JAX_PLATFORMS": "cpu",
           "TMPDIR": str(tmp / "staging")}
    commands = {"train": train_command(f"gs://{BUCKET}/unreachable", tmp / "never-prepared", 2),
                "save": [sys.executable, "-c", UNREACHABLE_SAVE]}
    started = {name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=(tmp / f"{name}.log").open("w"))
               for name, command in commands.items()}
    yield {"processes": started, "tmp": tmp, "endpoint": env["STORAGE_EMULATOR_HOST"]}
    for process in started.values():
        process.kill()
    closed.close()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The embedded dataset of the tiny runs, prepared once before they start (two of them run at once)."""
    from data_pipelines.embedded.prepare import prepare

    root = tmp_path_factory.mktemp("embedded")
    prepare(root, "tiny", 512, 64)
    return root


def train_command(workdir, data_root, steps, *extra) -> list[str]:
    """The tiny pretraining run at a constant learning rate (no warmup, no decay), so that a run stopped at
    step 2 and continued to 4 sees the learning rates of a run straight to 4."""
    return [sys.executable, "-m", "mvlm_jax.train", "--config", str(ROOT / "experiments" / "pretrain.py") + ":tiny",
            "--workdir", str(workdir), f"--config.total_steps={steps}", "--config.checkpoint_every=2",
            f"--config.data.embedded.root={data_root}", "--config.optim.warmup_steps=0",
            "--config.optim.min_learning_rate=0.003", "--config.eval.every=0", *extra]


def train(workdir, data_root, steps, *extra) -> str:
    done = subprocess.run(train_command(workdir, data_root, steps, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def records(metrics_text: str) -> list[tuple]:
    return [(r["step"], r["loss"], r["batch_hash"]) for r in map(json.loads, metrics_text.splitlines())]


@pytest.fixture(scope="module")
def runs(gcs, data_root, tmp_path_factory):
    """gs://bucket/run: 2 steps, then the same command continued to 4 (it resumes from the step-2 checkpoint);
    beside them a local run straight to 4, the reference. Returns (output of the continued run, the
    reference's metrics.jsonl)."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    parallel = subprocess.Popen(train_command(reference, data_root, 4), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    train(f"gs://{BUCKET}/run", data_root, 2)
    continued = train(f"gs://{BUCKET}/run", data_root, 4)
    assert parallel.wait(timeout=600) == 0
    return continued, (reference / "metrics.jsonl").read_text()


@pytest.fixture(scope="module")
def local_model(runs, tmp_path_factory):
    """A local copy of gs://bucket/run/model."""
    import fsspec

    local = tmp_path_factory.mktemp("copy") / "model"
    filesystem, remote = fsspec.core.url_to_fs(f"gs://{BUCKET}/run/model")
    filesystem.get(remote, str(local), recursive=True)
    return local


def test_a_gs_workdir_holds_the_run_and_resumes_it_exactly(runs):
    from etils import epath

    continued, reference_metrics = runs
    assert f"resumed from gs://{BUCKET}/run/checkpoints at step 2" in continued, continued[-3000:]
    run = epath.Path(f"gs://{BUCKET}/run")
    assert {"2", "4"} <= {p.name for p in (run / "checkpoints").iterdir()}
    assert (run / "model" / "model_config.json").is_file() and (run / "model" / "tokenizer.model").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    reference = records(reference_metrics)
    assert [step for step, _, _ in reference] == [1, 2, 3, 4]
    assert records((run / "metrics.jsonl").read_text()) == reference  # same losses and batches, bitwise on CPU


def test_init_from_a_gs_model_checkpoint(runs, local_model):
    import jax
    import numpy as np

    from experiments import pretrain
    from mvlm_jax.checkpoint import load_model
    from mvlm_jax.train.initial import initial_state
    from mvlm_jax.train.partition import merge
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import build_run

    config = pretrain.get_config("tiny")
    config.init_from = (f"=gs://{BUCKET}/run/model",)
    run = build_run(parse(config))
    state = initial_state(config.init_from, run, jax.random.key(0))
    params = merge(state["trainable"], state["frozen"])
    saved, _ = load_model(local_model)
    assert jax.tree.structure(params) == jax.tree.structure(saved)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), params, saved)))
    assert jax.tree.leaves(params)[0].sharding == jax.tree.leaves(run.param_shardings)[0]


def test_export_reads_a_gs_checkpoint_as_a_local_copy(local_model, tmp_path):
    from mvlm_jax.export.__main__ import main as export

    assert export(["--ckpt", f"gs://{BUCKET}/run/model", "--out", str(tmp_path / "from_gs"), "--type", "f32"]) == 0
    assert export(["--ckpt", str(local_model), "--out", str(tmp_path / "from_local"), "--type", "f32"]) == 0
    written = (tmp_path / "from_gs" / "model-f32.gguf").read_bytes()
    assert written == (tmp_path / "from_local" / "model-f32.gguf").read_bytes() and len(written) > 10_000


def test_an_upload_cut_short_names_the_url_and_leaves_nothing(gcs, tmp_path, monkeypatch):
    import tempfile

    import fsspec
    import numpy as np
    from etils import epath

    from mvlm_jax.checkpoint import save_model
    from mvlm_jax.models.config import LLAMA_PRESETS

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    filesystem = fsspec.core.url_to_fs(f"gs://{BUCKET}/model-cut")[0]  # the instance atomic.py gets (cached)
    put, puts = filesystem.put_file, []

    def put_then_fail(*args, **kwargs):  # the connection drops after the first object
        puts.append(args)
        if len(puts) > 1:
            raise ConnectionError("connection reset by peer")
        return put(*args, **kwargs)

    monkeypatch.setattr(filesystem, "put_file", put_then_fail)
    with pytest.raises(OSError, match=f"gs://{BUCKET}/model-cut: writing to the object store at {gcs} failed"):
        save_model(f"gs://{BUCKET}/model-cut", {"w": np.zeros(3, np.float32)}, LLAMA_PRESETS["tiny"])
    assert len(puts) == 2 and not epath.Path(f"gs://{BUCKET}/model-cut").exists()  # the first object removed
    assert list(tmp_path.iterdir()) == []  # and the local staging directory


def test_an_unreachable_store_names_the_url_and_leaves_nothing(unreachable):
    endpoint = unreachable["endpoint"]
    for name, process in unreachable["processes"].items():
        assert process.wait(timeout=300) != 0, name
        log = (unreachable["tmp"] / f"{name}.log").read_text()
        url = f"gs://{BUCKET}/unreachable" + ("-model" if name == "save" else "")
        assert f"{url}: cannot reach the object store at {endpoint}" in log, log[-3000:]
    assert list((unreachable["tmp"] / "staging").iterdir()) == []  # nothing staged locally either


def test_object_store_data_paths_ask_for_a_mount(tmp_path):
    from experiments import pretrain

    from data_pipelines.token_source import read_index
    from mvlm_jax.paths import as_path
    from mvlm_jax.train.entry import train as train_in_process

    config = pretrain.get_config("tiny")
    config.data.embedded.enabled = False
    with config.unlocked():
        config.data.shards = ("gs://bucket/shards/c4",)
    with pytest.raises(ValueError, match=r"config.data.shards gs://bucket/shards/c4 .*gcsfuse .*mountpoint-s3"):
        train_in_process(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=r"s3://bucket/shards: token shards are memory-mapped.*mount"):
        read_index("s3://bucket/shards")
    with pytest.raises(ValueError, match=r"--workdir s3://bucket/run: s3:// is not supported"):
        as_path("s3://bucket/run", "--workdir")
