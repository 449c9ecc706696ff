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
