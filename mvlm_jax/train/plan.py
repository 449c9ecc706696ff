"""Ahead-of-time plan: compile the real train step for devices this machine does not have, and print
per-device memory against the chip's HBM, the compiled FLOPs and bytes per step, and a roofline bound.

  python -m mvlm_jax.train.plan --config experiments/pretrain.py:1.4b --topology v5p:4x4x4 \
      --mesh data=1,fsdp=64,tensor=1 [--config.train.accumulation_steps=4]

--topology CHIP:SHAPE (v5e:4x4, v5p:4x4x4, v6e:8x8) compiles with libtpu for that TPU slice on any
machine, attention kernel included; nothing is allocated (state and batch are abstract). Without it, CPU
devices stand in (as many as the mesh needs) and the memory figures are XLA:CPU's, not an accelerator's.
"""
from __future__ import annotations

import os
import re
import time

from absl import app, flags
from ml_collections import config_flags

from data_pipelines.errors import BadInput, user_errors
from mvlm_jax.console import define_verbose_flag, library_logs, parse_flags
from mvlm_jax.tpu_env import NO_TPU_ENV
from mvlm_jax.train.roofline import CHIPS, Chip, roofline, whole_step_cost

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file and argument", lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "data=N,fsdp=N,tensor=N (overrides config.mesh; -1 allowed)")
_DEVICES = flags.DEFINE_integer("devices", None, "CPU stand-in: device count (default: the mesh's product)")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice CHIP:SHAPE, e.g. v5p:4x4x4 (compiled with libtpu)")
define_verbose_flag()
flags.mark_flags_as_required(["config"])

GIB = 1 << 30
# libtpu, loaded only to compile: no TPU VM metadata to look up, and other JAX processes may hold it too
LIBTPU_ENV = {**NO_TPU_ENV, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
_OUT_OF_MEMORY = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")


def _mesh_override(text: str | None, axes: tuple[str, ...]) -> dict[str, int]:
    if not text:
        return {}
    try:
        pairs = [part.split("=") for part in text.split(",")]
        sizes = {key.strip(): int(value) for key, value in pairs}
    except ValueError as error:
        raise BadInput(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N") from error
    if not set(sizes) <= set(axes):
        raise BadInput(f"--mesh {text!r}: unknown axis {sorted(set(sizes) - set(axes))}; the axes are {axes}")
    return sizes


def tpu_devices(topology: str) -> tuple[list, Chip]:
    """The devices of a TPU slice named CHIP:SHAPE, from libtpu (no TPU needed), and the chip's figures."""
    chip, _, shape = topology.partition(":")
    if chip not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
        raise BadInput(f"--topology {topology!r}: expected CHIP:SHAPE with CHIP one of {sorted(CHIPS)} and SHAPE "
                         "like 4x4 or 4x4x4 (e.g. v5e:4x4, v5p:4x4x4)")
    for key, value in LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import libtpu  # noqa: F401
    except ImportError as error:
        raise BadInput(f"--topology {topology}: libtpu is not installed (`make install` installs it on Linux "
                         "x86_64; elsewhere pip install 'libtpu==0.0.42.*')") from error
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices), CHIPS[chip]
    except Exception as error:  # noqa: BLE001 - libtpu's own message says what it could not parse
        raise BadInput(f"--topology {topology!r}: libtpu does not know this slice ({error})") from error


def shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(abstract_tree))


def _compile(config, devices):
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import abstract_batch, build_run

    experiment = parse(config)
    run = build_run(experiment, devices)
    with run.activate():
        return run, run.step.lower(run.abstract_state, abstract_batch(experiment, run)).compile()


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {key: float(cost.get(key, 0.0)) for key in ("flops", "bytes accessed")}


def _with_unroll(config, part: str, unroll: int):
    """A copy of `config` whose `part` stack ("llm" or "vision") runs `unroll` layers per scan iteration."""
    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        overrides = copy.model.llm_overrides if part == "llm" else copy.model.vision_overrides
        overrides["scan_unroll"] = unroll
    return copy


def _stacks(model_config) -> dict[str, tuple[int, int]]:
    """Scanned layer stacks: name -> (layers, layers per scan iteration)."""
    from mvlm_jax.models.config import VLMConfig

    llm = model_config.llm if isinstance(model_config, VLMConfig) else model_config
    stacks = {"llm": (llm.num_layers, llm.scan_unroll)}
    if isinstance(model_config, VLMConfig):
        stacks["vision"] = (model_config.vision.num_layers_run, model_config.vision.scan_unroll)
    return stacks


def plan(config, devices, chip: Chip | None = None) -> dict:
    """Compile the step for `devices` and return the per-device figures. With `chip` (a TPU topology):
    HBM against its capacity, the whole-step compiled cost (two more compiles, see whole_step_cost) and
    the roofline bound."""
    from mvlm_jax.models.attention import resolve
    from mvlm_jax.train.metrics import step_flops
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import validate

    experiment = parse(config)
    validate(experiment, len(devices))  # mesh against the device count, batch against the mesh: before compiling
    tokens = config.train.batch_size * config.data.seq_len
    model_config = experiment.model
    images = config.train.batch_size * config.data.images_per_row if config.model.kind == "vlm" else 0
    result = {"devices": len(devices), "platform": devices[0].platform, "tokens": tokens,
              "model_tflops": step_flops(model_config, tokens, config.data.seq_len, images) / 1e12}
    started = time.perf_counter()
    try:
        run, compiled = _compile(config, devices)
    except Exception as error:  # noqa: BLE001 - XLA:TPU refuses a program that does not fit HBM
        found = _OUT_OF_MEMORY.search(str(error))
        if chip is None or not found:
            raise
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        used, capacity = float(found[1]) * unit[found[2]] / GIB, float(found[3]) * unit[found[4]] / GIB
        return {**result, "compile_s": time.perf_counter() - started, "fits": False, "total_gib": used,
                "capacity_gib": capacity, "headroom_gib": capacity - used, "mesh": None}
    result["compile_s"] = time.perf_counter() - started
    memory = compiled.memory_analysis()
    llm = run.model_config.llm if config.model.kind == "vlm" else run.model_config
    total = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes \
        - memory.alias_size_in_bytes  # the donated state is one buffer, in and out
    result.update({
        "mesh": dict(run.mesh.shape), "kernel": resolve(llm.attention_impl, devices[0].platform, llm.dtype),
        "params_gib": (shard_bytes(run.abstract_state["trainable"]) + shard_bytes(run.abstract_state["frozen"])) / GIB,
        "optimizer_gib": shard_bytes(run.abstract_state["opt_state"]) / GIB,
        "temporaries_gib": memory.temp_size_in_bytes / GIB, "arguments_gib": memory.argument_size_in_bytes / GIB,
        "total_gib": total / GIB, "holds_kernel": "tpu_custom_call" in compiled.as_text()})
    if chip is None:
        return result
    capacity = chip.hbm_bytes / GIB
    result.update({"capacity_gib": capacity, "headroom_gib": capacity - total / GIB, "fits": total / GIB <= capacity})
    # the loop body holds `unroll` layers; doubling it adds `unroll` layers to the count (none to add once
    # the stack is unrolled whole)
    stacks = {part: size for part, size in _stacks(run.model_config).items() if size[1] < size[0]}
    more = {part: _cost(_compile(_with_unroll(config, part, 2 * unroll), devices)[1])
            for part, (_, unroll) in stacks.items()}
    cost = whole_step_cost(_cost(compiled), more, stacks, config.train.accumulation_steps)
    # Pallas kernels are custom calls, which XLA's cost analysis does not see: splash adds its attention
    # FLOPs as the MFU formula counts them (forward + backward, no causal discount)
    attention = 0.0
    if result["kernel"] == "splash":
        attention = 12 * llm.num_layers * config.data.seq_len * llm.num_heads * llm.resolved_head_dim * tokens / len(devices)
    flops = cost["flops"] + attention
    bound = roofline(chip, flops, cost["bytes accessed"], result["model_tflops"] * 1e12 / len(devices))
    result.update({"compiled_tflops": flops / 1e12, "kernel_tflops": attention / 1e12, "bytes_gb": cost["bytes accessed"] / 1e9,
                   "roofline": bound, "chip": chip.name})
    return result


def report(result: dict) -> str:
    """The plan as printed: per device, memory against capacity, cost and the roofline bound."""
    if result["mesh"] is None:
        return (f"{result['devices']} devices: does NOT fit: XLA:TPU needs {result['total_gib']:.1f} GiB of "
                f"{result['capacity_gib']:.1f} GiB HBM per device ({-result['headroom_gib']:.1f} GiB over); "
                "shard more (fsdp), raise accumulation_steps or use a stronger remat policy")
    where = "XLA:CPU memory (CPU stand-in; not a TPU's or GPU's)" if result["platform"] == "cpu" else "HBM"
    lines = [f"mesh {result['mesh']} on {result['devices']} {result['platform']} devices, attention "
             f"{result['kernel']}{' (kernel in the program)' if result['holds_kernel'] else ''}, "
             f"compiled in {result['compile_s']:.1f} s",
             f"per device ({where}): parameters {result['params_gib']:.2f} GiB, optimizer state "
             f"{result['optimizer_gib']:.2f} GiB, temporaries {result['temporaries_gib']:.2f} GiB, "
             f"total {result['total_gib']:.2f} GiB"]
    if "fits" in result:
        verdict = "fits" if result["fits"] else "does NOT fit"
        lines.append(f"  {verdict} in {result['capacity_gib']:.1f} GiB of {result['chip']} HBM "
                     f"({abs(result['headroom_gib']):.1f} GiB {'to spare' if result['fits'] else 'over'})")
        bound = result["roofline"]
        lines += [f"compiled per device and step: {result['compiled_tflops']:.2f} TFLOP (of which "
                  f"{result['kernel_tflops']:.2f} in the attention kernel, from the formula), "
                  f"{result['bytes_gb']:.1f} GB accessed",
                  f"roofline: >= {bound.step_s:.3f} s per step ({bound.bound_by} bound); MFU at most "
                  f"{100 * bound.mfu_bound:.1f} %"]
    lines.append(f"model FLOPs per step: {result['model_tflops']:.1f} TFLOP in all, "
                 f"{result['model_tflops'] / result['devices']:.2f} TFLOP per device (6N + attention)")
    return "\n".join(lines)


@user_errors
def main(argv) -> None:
    del argv
    library_logs(flags.FLAGS.verbose)
    config = _CONFIG.value
    with config.unlocked():
        config.mesh.update(_mesh_override(_MESH.value, tuple(config.mesh)))
    chip = None
    if _TOPOLOGY.value:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; the TPU devices come from libtpu
        devices, chip = tpu_devices(_TOPOLOGY.value)
    else:
        count = _DEVICES.value or max(1, abs(config.mesh.data * config.mesh.fsdp * config.mesh.tensor))
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        jax.config.update("jax_num_cpu_devices", count)
        devices = jax.devices()
    print(report(plan(config, devices, chip)))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
