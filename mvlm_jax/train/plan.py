"""Ahead-of-time plan: compile the real train step for a topology this machine does not have, and print
per-device memory (parameters, optimizer state, activations and temporaries) and FLOPs per step.

  python -m mvlm_jax.train.plan --config experiments/pretrain.py:1.4b --mesh data=1,fsdp=8,tensor=1 \
      [--config.train.batch_size=64] [--config.data.seq_len=2048]

Nothing is allocated: the state and the batch are abstract (shapes, dtypes, shardings). CPU devices stand
in for the target's (as many as the mesh needs); `--topology` names a TPU slice instead (needs libtpu,
e.g. on a TPU VM: `--topology v5e:4x4`).
"""
from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file and argument", lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "data=N,fsdp=N,tensor=N (overrides config.mesh; -1 allowed)")
_DEVICES = flags.DEFINE_integer("devices", None, "device count of the target (default: the mesh's product)")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4 (uses jax.experimental.topologies)")
flags.mark_flags_as_required(["config"])

GIB = 1 << 30


def _mesh_override(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    pairs = [part.split("=") for part in text.split(",")]
    return {key.strip(): int(value) for key, value in pairs}


def shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(abstract_tree))


def plan(config, devices) -> dict:
    """Compile the step for `devices` and return the per-device figures."""
    from mvlm_jax.train.metrics import step_flops
    from mvlm_jax.train.run import abstract_batch, build_run

    run = build_run(config, devices)
    batch = abstract_batch(config, run)
    started = time.perf_counter()
    from mvlm_jax import sharding

    with sharding.activate(run.mesh):
        compiled = run.step.lower(run.abstract_state, batch).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    tokens = config.train.batch_size * config.data.seq_len
    images = config.train.batch_size * config.data.images_per_row if "images" in batch else 0
    return {
        "devices": len(devices), "mesh": dict(run.mesh.shape), "compile_s": compile_s,
        "params_gib": (shard_bytes(run.abstract_state["trainable"]) + shard_bytes(run.abstract_state["frozen"])) / GIB,
        "optimizer_gib": shard_bytes(run.abstract_state["opt_state"]) / GIB,
        "temporaries_gib": memory.temp_size_in_bytes / GIB if memory else None,
        "arguments_gib": memory.argument_size_in_bytes / GIB if memory else None,
        "step_tflops_global_formula": step_flops(run.model_config, tokens, config.data.seq_len, images) / 1e12,
    }


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    with config.unlocked():
        config.mesh.update(_mesh_override(_MESH.value))
    if _TOPOLOGY.value:
        from jax.experimental import topologies

        platform, _, name = _TOPOLOGY.value.partition(":")
        devices = topologies.get_topology_desc(topology_name=name, platform="tpu" if platform.startswith("v") else platform).devices
    else:
        count = _DEVICES.value or max(1, abs(config.mesh.data * config.mesh.fsdp * config.mesh.tensor))
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        jax.config.update("jax_num_cpu_devices", count)
        devices = jax.devices()
    result = plan(config, devices)
    print(f"mesh {result['mesh']} on {result['devices']} devices, compiled in {result['compile_s']:.1f} s")
    print(f"per device: parameters {result['params_gib']:.2f} GiB, optimizer state {result['optimizer_gib']:.2f} GiB, "
          f"activations + temporaries {result['temporaries_gib']:.2f} GiB "
          f"(all arguments {result['arguments_gib']:.2f} GiB)")
    # XLA's own cost analysis counts a scanned layer once, not once per layer, so the formula is reported.
    print(f"FLOPs per step: {result['step_tflops_global_formula']:.1f} TFLOP in all, "
          f"{result['step_tflops_global_formula'] / result['devices']:.1f} TFLOP per device (6N + attention)")


if __name__ == "__main__":
    app.run(main)
