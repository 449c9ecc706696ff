"""Ahead-of-time plan: the real MobileLLaMA 1.4B train step compiles on CPU from abstract inputs for a mesh
of 8 devices, and the per-device figures follow from the shardings."""
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import pretrain  # noqa: E402
from mvlm_jax.train.plan import plan  # noqa: E402

GIB = 1 << 30


def test_the_1_4b_step_compiles_from_abstract_inputs_on_8_devices():
    config = pretrain.get_config("1.4b")
    config.train.update(batch_size=16, accumulation_steps=2)
    config.data.seq_len = 1024
    with config.unlocked():
        config.mesh.update(data=1, fsdp=8, tensor=1)
    result = plan(config, jax.devices()[:8])
    parameters = 1_364_297_728
    assert abs(result["params_gib"] - parameters * 4 / 8 / GIB) < 0.01  # fully sharded float32 parameters
    assert abs(result["optimizer_gib"] - 2 * result["params_gib"]) < 0.01  # AdamW: mu and nu, sharded alike
    assert result["temporaries_gib"] > 0 and result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    tokens = 16 * 1024
    assert abs(result["step_tflops_global_formula"] * 1e12 / tokens / (6 * parameters) - 1) < 0.2


def test_gradient_accumulation_keeps_each_device_on_its_own_rows():
    """Pure data parallelism with 2 micro-batches: the compiled step moves no inputs between devices
    (only the gradient all-reduce), because micro-batches are strided, not contiguous."""
    from mvlm_jax import sharding
    from mvlm_jax.train.run import abstract_batch, build_run
    config = pretrain.get_config("tiny")
    config.train.update(batch_size=8, accumulation_steps=2)
    with config.unlocked():
        config.mesh.update(data=4, fsdp=1, tensor=1)
    run = build_run(config, jax.devices()[:4])
    with sharding.activate(run.mesh):
        hlo = run.step.lower(run.abstract_state, abstract_batch(config, run)).compile().as_text()
    assert "all-reduce" in hlo
    assert "all-gather" not in hlo and "collective-permute" not in hlo
    # The trainer's CPU compiler options reach the compile: XLA's own dots, no YNNPACK fusions.
    assert "__ynn_fusion" not in hlo and " dot(" in hlo
