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
    from mvlm_jax.train.plan import report
    result = plan(config, jax.devices()[:8])
    assert "XLA:CPU memory (CPU stand-in" in report(result)  # not to be read as an accelerator's
    parameters = 1_364_297_728
    assert abs(result["params_gib"] - parameters * 4 / 8 / GIB) < 0.01  # fully sharded float32 parameters
    assert abs(result["optimizer_gib"] - 2 * result["params_gib"]) < 0.01  # AdamW: mu and nu, sharded alike
    assert result["temporaries_gib"] > 0 and result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    tokens = 16 * 1024
    assert abs(result["model_tflops"] * 1e12 / tokens / (6 * parameters) - 1) < 0.2


def test_gradient_accumulation_keeps_each_device_on_its_own_rows():
    """Pure data parallelism with 2 micro-batches: the compiled step moves no inputs between devices
    (only the gradient all-reduce), because micro-batches are strided, not contiguous."""
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import abstract_batch, build_run
    config = pretrain.get_config("tiny")
    config.train.update(batch_size=8, accumulation_steps=2)
    with config.unlocked():
        config.mesh.update(data=4, fsdp=1, tensor=1)
    experiment = parse(config)
    run = build_run(experiment, jax.devices()[:4])
    with run.activate():
        hlo = run.step.lower(run.abstract_state, abstract_batch(experiment, run)).compile().as_text()
    assert "all-reduce" in hlo
    assert "all-gather" not in hlo and "collective-permute" not in hlo
    # The trainer's CPU compiler options reach the compile: XLA's own dots, no YNNPACK fusions.
    assert "__ynn_fusion" not in hlo and " dot(" in hlo


# --- TPU slices compiled with libtpu on this CPU machine ------------------------------------------

def _tiny_tpu_config(attention: str = "splash", unroll: int = 1, accumulation: int = 1):
    config = pretrain.get_config("tiny")
    config.train.update(batch_size=8, accumulation_steps=accumulation)
    config.data.seq_len = 128
    with config.unlocked():
        config.mesh.update(data=1, fsdp=4, tensor=1)
        config.model.attention = attention
        config.model.llm_overrides = {"scan_unroll": unroll}
    return config


def test_a_tiny_model_compiles_for_a_tpu_slice_with_the_splash_kernel_and_a_roofline():
    from mvlm_jax.train.plan import plan, report, tpu_devices
    devices, chip = tpu_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu" and chip.name == "TPU v5e"
    result = plan(_tiny_tpu_config(), devices, chip)
    assert result["kernel"] == "splash" and result["holds_kernel"]  # the Pallas kernel is in the TPU program
    assert result["fits"] and 0 < result["total_gib"] < result["capacity_gib"]
    bound = result["roofline"]
    assert bound.step_s == max(bound.compute_s, bound.memory_s) and 0 < bound.mfu_bound < 1
    # the loop accounting: the whole-step cost of the scanned program equals what XLA reports for the
    # same global batch with both layers unrolled (no layer loop) in two micro-batches (a loop counted once,
    # so twice over)
    unrolled = plan(_tiny_tpu_config(unroll=2, accumulation=2), devices, chip)
    assert abs(unrolled["compiled_tflops"] / result["compiled_tflops"] - 1) < 0.02
    assert result["kernel_tflops"] > 0  # the kernel's FLOPs, which cost analysis does not see, are added
    text = report(result)
    assert "fits in 14.9 GiB of TPU v5e HBM" in text and "MFU at most" in text and "kernel in the program" in text


def test_topology_mesh_and_batch_errors_come_before_compiling():
    import pytest
    from mvlm_jax.train.plan import plan, tpu_devices
    with pytest.raises(ValueError, match="expected CHIP:SHAPE"):
        tpu_devices("4x4x4")
    with pytest.raises(ValueError, match="libtpu does not know this slice"):
        tpu_devices("v5p:3x5x7")
    devices, chip = tpu_devices("v5e:2x2")
    config = _tiny_tpu_config()
    with config.unlocked():
        config.mesh.update(data=1, fsdp=8, tensor=1)
    with pytest.raises(ValueError, match="does not divide the 4 devices|uses 8 devices"):
        plan(config, devices, chip)
    config = _tiny_tpu_config()
    config.train.batch_size = 6
    with pytest.raises(ValueError, match="does not divide over the mesh"):
        plan(config, devices, chip)
    config = _tiny_tpu_config("cudnn")
    with pytest.raises(ValueError, match="attention='cudnn' cannot run on tpu"):
        plan(config, devices, chip)
