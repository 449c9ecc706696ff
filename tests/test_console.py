"""The console of the entry points, tried as a new user would: bad input (missing data or checkpoint, a bad
flag, an impossible mesh) is one `error:` line naming what is missing and what to set or run, never a
traceback; library INFO logs stay off unless asked for; and every make target creates the environment first."""
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from console_checks import assert_user_error
from data_pipelines.errors import BadInput, MissingInput, user_errors
from data_pipelines.pretrain_pipeline import REDPAJAMA_TABLE12
from data_pipelines.token_source import read_index
from mvlm_jax import cli
from mvlm_jax.console import library_logs, parse_flags

ROOT = Path(__file__).resolve().parents[1]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    @user_errors
    def main(error: Exception) -> int:
        raise error

    assert main(MissingInput("/data/c4: missing")) == 2
    assert capsys.readouterr().err == "error: /data/c4: missing\n"
    with pytest.raises(KeyError):
        main(KeyError("a bug"))
    assert isinstance(BadInput("x"), ValueError) and isinstance(MissingInput("x"), FileNotFoundError)
    with pytest.raises(MissingInput, match="mvlm data shard .*--out /nowhere/c4"):
        read_index("/nowhere/c4")


def test_train_and_plan_refuse_bad_input_in_one_line(tmp_path):
    """`make pretrain SIZE=1.4b` without data and `make plan` with more devices than present, as the make
    targets start them (in parallel: each pays the imports)."""
    (tmp_path / "c4").mkdir()  # set, but never sharded
    cases = {
        "no data": ([sys.executable, "-m", "mvlm_jax.train", "--config", "experiments/pretrain.py:size=1.4b",
                     "--workdir", str(tmp_path / "run"), f"--config.data.mixture_dirs.c4={tmp_path / 'c4'}"],
                    ["--config.data.mixture_dirs.SOURCE=DIR", "mvlm data shard", f"c4 ({tmp_path / 'c4'})",
                     ", ".join(name for name in REDPAJAMA_TABLE12 if name != "c4")]),
        "impossible mesh": ([sys.executable, "-m", "mvlm_jax.train.plan", "--config", "experiments/pretrain.py:tiny",
                             "--mesh", "data=1,fsdp=8,tensor=1", "--devices", "4"],
                            ["does not divide the 4 devices", "config.mesh"]),
    }
    started = {name: subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "JAX_PLATFORMS": "cpu"})
               for name, (command, _) in cases.items()}
    for name, process in started.items():
        _, stderr = process.communicate(timeout=300)
        assert_user_error(process.returncode, stderr, *cases[name][1])
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections loading an experiment
@pytest.mark.parametrize("argv, names", [
    (["--config=experiments/pretrian.py:tiny"], ["experiments/pretrian.py", "No such file"]),
    (["--config=experiments/pretrain.py:tiny", "--config.train.totl_steps=3"],
     ["--config.train.totl_steps", "'totl_steps'", '"total_steps"']),
    (["--config=experiments/pretrain.py:tiny", "--config.train.total_steps=many"], ["total_steps=many"]),
    (["--config=experiments/pretrain.py:size=tiny,context=lots"], ["context='lots'"]),
    (["--config=experiments/pretrain.py:tiny", "--epochs=1"], ["epochs"])])
def test_bad_flags_and_config_overrides_are_one_line(argv, names, capsys, monkeypatch):
    """The trainer's and plan's flag parser (mvlm_jax.console.parse_flags) on their --config flag."""
    monkeypatch.chdir(ROOT)
    flag_values = flags.FlagValues()
    argv = ["prog", *argv]  # ml_collections defines the override flags that the command line names
    config_flags.DEFINE_config_file("config", None, "experiment", flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    with pytest.raises(SystemExit) as stopped:
        parse_flags(argv, flag_values)
    assert_user_error(stopped.value.code, capsys.readouterr().err, *names)


CHECKPOINT_NAMED = ("{CKPT}: not a model checkpoint", "mvlm convert import")


@pytest.mark.parametrize("command, names", [
    ("export --ckpt {CKPT} --out {OUT}", CHECKPOINT_NAMED), ("generate --ckpt {CKPT} --prompt x", CHECKPOINT_NAMED),
    ("chat --ckpt {CKPT} --prompt x", CHECKPOINT_NAMED), ("info --ckpt {CKPT}", CHECKPOINT_NAMED),
    ("convert export --ckpt {CKPT} --out {OUT}", CHECKPOINT_NAMED),
    ("eval vlm --ckpt {CKPT} --benchmark demo_world --data-root {OUT} --out {OUT}", ("missing under --data-root {OUT}",))])
def test_a_missing_checkpoint_or_benchmark_is_named(command, names, tmp_path, capsys):
    places = {"CKPT": tmp_path / "no_checkpoint", "OUT": tmp_path / "out"}
    code = cli.main(command.format(**places).split())
    assert_user_error(code, capsys.readouterr().err, *(name.format(**places) for name in names))


def test_library_logs_show_warnings_and_info_only_when_verbose(caplog):
    root, verbosity = logging.getLogger().level, absl_logging.get_verbosity()
    caplog.set_level(logging.NOTSET, logger="unrelated")  # caplog's handler sees whatever passes the loggers
    try:
        for verbose in (False, True):
            caplog.clear()
            library_logs(verbose)
            absl_logging.info("absl info")  # orbax, grain and jax log through absl's logger
            logging.getLogger("orbax.checkpoint").info("library info")
            absl_logging.warning("absl warning")
            shown = {record.getMessage() for record in caplog.records}
            assert shown == ({"absl info", "library info", "absl warning"} if verbose else {"absl warning"})
    finally:
        logging.getLogger().setLevel(root)
        absl_logging.set_verbosity(verbosity)


@pytest.fixture()
def clone(tmp_path):
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def dry_run(clone: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=clone, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_and_test_create_the_environment_first(clone):
    creates = "python3 -m venv .venv"
    for target in ("demo", "test", "pretrain"):  # a fresh clone: the environment first, then the command
        out = dry_run(clone, target)
        assert creates in out and "pip install --quiet -e '.[test,eval]'" in out
        assert out.index(creates) < out.index(".venv/bin/python -m ")
    stamp = clone / ".venv" / "bin" / "mvlm"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    os.utime(clone / "setup.cfg", (stamp.stat().st_mtime - 10,) * 2)
    os.utime(clone / "pyproject.toml", (stamp.stat().st_mtime - 10,) * 2)
    assert creates not in dry_run(clone, "test")  # installed after the last change of setup.cfg
    assert creates in dry_run(clone, "install")  # make install always reinstalls
    os.utime(clone / "setup.cfg", (stamp.stat().st_mtime + 10,) * 2)
    assert creates in dry_run(clone, "demo")  # setup.cfg changed since: reinstall
    assert creates not in dry_run(clone, "test", "PY=/usr/bin/python3")  # another interpreter: nothing installed


def test_libtpu_stays_quiet_on_a_machine_without_tpu_chips(monkeypatch):
    """libtpu (installed for `make plan --topology`) printed five lines of metadata warnings and an E0000 error
    at every JAX start on machines without TPU chips; importing mvlm_jax names a worker and a chip type first."""
    from mvlm_jax import tpu_env

    pytest.importorskip("libtpu")
    if tpu_env.has_google_pci_device():
        pytest.skip("a Google PCI device is present: the environment is left to libtpu")
    clean = {k: v for k, v in os.environ.items() if k not in tpu_env.NO_TPU_ENV}
    done = subprocess.run([sys.executable, "-c", "import mvlm_jax, jax; print(jax.devices()[0].platform)"],
                          capture_output=True, text=True, env=clean, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "cpu", done.stderr
    assert "TPU_ACCELERATOR_TYPE" not in done.stderr and "E0000" not in done.stderr, done.stderr
    # a value the user set wins, and a machine with a Google device (a TPU VM) is left alone
    for key in tpu_env.NO_TPU_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-8")
    tpu_env.quiet_libtpu_without_tpu()
    assert os.environ["TPU_ACCELERATOR_TYPE"] == "v5p-8" and os.environ["TPU_WORKER_HOSTNAMES"] == "localhost"
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setattr(tpu_env, "has_google_pci_device", lambda: True)
    tpu_env.quiet_libtpu_without_tpu()
    assert "TPU_WORKER_HOSTNAMES" not in os.environ
