"""The paper-scale steps compiled for TPU slices with libtpu on this CPU machine (`mvlm_jax.train.plan`):
per-device HBM against the chip's, fits or not, and the roofline MFU bound.

Rows: MobileLLaMA 1.4B and 2.7B pretraining at the paper's global batch (2,560 rows x 2,048 tokens =
5,242,880 tokens) and VLM stage 2 (1.4B, 24 packed rows of 2,048 ~ 117 conversations, the official 128)
on v5p and v5e slices. Recipes as the experiment files set them (bfloat16 compute, float32 parameters and
AdamW state, remat "dots_no_batch", attention "auto" = splash); the mesh is pure FSDP over the slice and
accumulation_steps is chosen so each device holds a few rows per micro-batch.

  python -m bench.tpu_plans [--only 0,2]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.report import Headline, write_result

# (label, experiment file:arg, topology, fsdp, global batch rows, accumulation steps)
ROWS = [
    ("1.4B pretrain", "experiments/pretrain.py:1.4b", "v5p:4x4x4", 64, 2560, 8),
    ("1.4B pretrain", "experiments/pretrain.py:1.4b", "v5e:16x16", 256, 2560, 10),
    ("2.7B pretrain", "experiments/pretrain.py:2.7b", "v5p:4x4x4", 64, 2560, 10),
    ("2.7B pretrain", "experiments/pretrain.py:2.7b", "v5e:16x16", 256, 2560, 10),
    ("1.4B VLM stage 2", "experiments/vlm.py:size=1.4b,stage=2", "v5p:2x2x2", 8, 24, 1),
    ("1.4B VLM stage 2", "experiments/vlm.py:size=1.4b,stage=2", "v5e:2x4", 8, 24, 3),
]


def load(spec: str):
    """An experiment's ConfigDict from "path.py:arg" (as --config reads it)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated row indices (default: all)")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mvlm_jax.train.plan import plan, tpu_devices

    chosen = [int(i) for i in args.only.split(",")] if args.only else range(len(ROWS))
    lines = ["| step | slice | mesh (data, fsdp, tensor) | rows x accumulation | params + optimizer | temporaries | "
             "total / HBM per chip | fits | roofline step | MFU bound | compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fits, bounds = [], []
    for index in chosen:
        label, experiment, topology, fsdp, rows, accumulation = ROWS[index]
        devices, chip = tpu_devices(topology)
        config = load(experiment)
        config.train.update(batch_size=rows, accumulation_steps=accumulation)
        with config.unlocked():
            config.mesh.update(data=len(devices) // fsdp, fsdp=fsdp, tensor=1)
        result = plan(config, devices, chip)
        fits.append(result["mesh"] is not None and bool(result["fits"]))
        if result["mesh"] is None:
            lines.append(f"| {label} | {topology} | 1, {fsdp}, 1 | {rows} x {accumulation} | | | "
                         f"{result['total_gib']:.1f} / {result['capacity_gib']:.1f} GiB | no | | | "
                         f"{result['compile_s']:.0f} s |")
        else:
            bound = result["roofline"]
            bounds.append(100 * bound.mfu_bound)
            mesh = ", ".join(str(v) for v in result["mesh"].values())
            lines.append(f"| {label} | {topology} | {mesh} | {rows} x {accumulation} | "
                         f"{result['params_gib'] + result['optimizer_gib']:.2f} GiB | {result['temporaries_gib']:.2f} GiB | "
                         f"{result['total_gib']:.1f} / {result['capacity_gib']:.1f} GiB | "
                         f"{'yes' if result['fits'] else 'no'} | {bound.step_s:.2f} s ({bound.bound_by}) | "
                         f"{100 * bound.mfu_bound:.0f} % | {result['compile_s']:.0f} s |")
        print(lines[-1], flush=True)
    bound_range = f"; MFU bound {min(bounds):.0f}-{max(bounds):.0f} %" if bounds else ""
    write_result(Path(args.report), "TPU plans: paper-scale steps compiled for TPU slices",
                 "python -m bench.tpu_plans" + (f" --only {args.only}" if args.only else ""), lines,
                 headline=Headline(f"{sum(fits)} of {len(fits)} plans fit the chip's HBM{bound_range}",
                                   "every plan fits the chip's HBM", all(fits)),
                 note="compiled with libtpu 0.0.42 on this CPU machine (no TPU); memory per chip from XLA:TPU's "
                      "memory analysis; roofline from the compiled FLOPs and bytes of the whole step "
                      "(train/roofline.py) at the chip's peak bf16 FLOP/s and HBM bandwidth; compile: the "
                      "first of three compiles, on a shared 2-core CPU")


if __name__ == "__main__":
    main()
