"""python -m mvlm_jax.train --config experiments/pretrain.py:tiny --workdir DIR [--config.a.b=value ...] [--verbose]

Library logs (orbax, grain, jax) show their warnings and errors; --verbose shows their INFO lines too.
Bad input (missing data or checkpoint, a bad flag, an impossible mesh) is one `error: ...` line, exit 2.

Multi-host: on SLURM, TPU VMs and Kubernetes `jax.distributed.initialize()` finds its peers by itself
(--distributed); elsewhere pass --coordinator HOST:PORT --num_processes N --process_id I.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from data_pipelines.errors import user_errors
from mvlm_jax.console import define_verbose_flag, library_logs, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file and argument: FILE.py:ARG",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics.jsonl, tensorboard/)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (cluster auto-detect)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, for a manual multi-process run")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a manual multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index in a manual multi-process run")
define_verbose_flag()
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
    from mvlm_jax.distributed import initialize

    initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)


def _fill_embedded(config, workdir: str) -> None:
    """Tiny experiments train on the embedded dataset, generated and sharded on first use."""
    from data_pipelines.embedded.prepare import prepare
    from mvlm_jax.train import setup

    import jax
    from jax.experimental import multihost_utils

    embedded = config.data.embedded
    arguments = (setup.embedded_root(config, workdir), embedded.size, embedded.vocab_size, embedded.image_size)
    if jax.process_index() == 0:  # one writer; the others wait, then find everything complete
        prepare(*arguments)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("embedded data prepared")
    paths = prepare(*arguments)
    with config.unlocked():
        config.data.shards = (paths["shards"],)
        config.data.tokenizer = paths["tokenizer"]
        config.data.files = tuple(paths[name] for name in embedded.files)
        config.data.image_root = paths["images"]


@user_errors
def main(argv) -> None:
    del argv
    library_logs(flags.FLAGS.verbose)
    _initialize_distributed()
    from mvlm_jax.train import setup
    from mvlm_jax.train.entry import train  # after distributed init: importing models touches no backend

    config = _CONFIG.value
    setup.check_data_paths(config)  # refuse object-store data, or an unreachable workdir, before preparing data
    setup.workdir_path(_WORKDIR.value)
    if config.data.embedded.enabled:
        _fill_embedded(config, _WORKDIR.value)
    train(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
