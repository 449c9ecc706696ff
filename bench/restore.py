"""Peak host memory and wall time of `init_from` at full MobileLLaMA size into an fsdp mesh of 8 CPU devices.

  before  the former trainer: every parameter initialised at random (sharded), then the whole checkpoint
          restored unsharded on the host, then device_put into the shardings (the random values are
          drawn in the benchmark's dtype; see child())
  after   mvlm_jax.train.initial.initial_params: orbax reads each device's slices straight into the
          sharded target; nothing covered by the checkpoint is drawn at random

A random model checkpoint of the chosen size is written first. Each path runs in its own child process,
which reports its peak resident set size (getrusage) and the seconds of the init_from part alone; both end
with the same content checksum, so they restored the same parameters.

  python -m bench.restore [--size 2.7b] [--dtype bfloat16] [--workdir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Headline, write_result

DEVICES = 8
GIB = 1 << 30


def _setup(size: str, dtype: str):
    """(model config, abstract params in `dtype` with their shardings on an fsdp mesh of 8 CPU devices)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_num_cpu_devices", DEVICES)
    from mvlm_jax import sharding
    from mvlm_jax.models import abstract_params
    from mvlm_jax.models.config import LLAMA_PRESETS

    config = LLAMA_PRESETS[size]
    boxed = abstract_params(config)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=DEVICES), jax.devices())
    shardings = sharding.mesh_shardings(sharding.logical_specs(boxed), mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, jnp.dtype(dtype), sharding=s),
                            nn.unbox(boxed), shardings)
    return config, abstract


def write_checkpoint(directory: Path, size: str, dtype: str) -> dict:
    """A random model checkpoint; returns its parameter bytes and its largest array's."""
    import jax
    import numpy as np

    from mvlm_jax.checkpoint import save_model

    config, abstract = _setup(size, dtype)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (rng.standard_normal(a.shape, dtype=np.float32) * 0.02).astype(a.dtype),
                          abstract)
    save_model(directory, params, config)
    sizes = [leaf.nbytes for leaf in jax.tree.leaves(params)]
    return {"bytes": sum(sizes), "largest": max(sizes)}


def child(path: str, directory: str, size: str, dtype: str) -> dict:
    """Run one path in this process; its peak RSS, the RSS before it and its seconds."""
    import resource

    import jax
    import jax.numpy as jnp

    from mvlm_jax.checkpoint import load_model
    from mvlm_jax.train.frozen_copy import checksum
    from mvlm_jax.train.initial import initial_params

    _, abstract = _setup(size, dtype)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    before, start = peak(), time.perf_counter()
    if path == "before":  # the trainer's former _initial_params
        # Its random initialisation of every parameter, here drawn leaf by leaf in the benchmark's dtype.
        # model.init draws float32: cast inside its jit that adds 2 bfloat16 copies of float32 temporaries,
        # and one program drawing every leaf in bfloat16 keeps ~4 copies of temporaries on XLA:CPU, where
        # the float32 trainer's init had about 0.3 copy (compiled memory_analysis at 1.4B).
        leaves = jax.tree.leaves(abstract)
        params = [jax.jit(lambda key, a=a: jax.random.normal(key, a.shape, a.dtype), out_shardings=a.sharding)(key)
                  for key, a in zip(jax.random.split(jax.random.key(0), len(leaves)), leaves)]
        loaded, _ = load_model(directory)  # unsharded, on this host
        params = jax.tree.map(lambda array, s: jax.device_put(array, s), loaded, shardings)
        del loaded
    else:
        def no_random_init(keep):
            raise AssertionError("the checkpoint covers every parameter")

        params = initial_params((f"={directory}",), abstract, no_random_init)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    assert all(leaf.sharding == s for leaf, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)))
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(params))
    return {"before_rss": before, "peak_rss": peak(), "seconds": seconds, "checksum": checksum(params)}


def run_child(*args: str) -> dict:
    """`python -m bench.restore ARGS` in a fresh process; the JSON it prints last."""
    done = subprocess.run([sys.executable, "-m", "bench.restore", *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode:
        raise RuntimeError(f"bench.restore {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2.7b")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="parameter dtype of the checkpoint and the target (default: bfloat16, so that the "
                             "former path's three copies of the 2.7B model fit in 24 GiB)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch files")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "CKPT"), help=argparse.SUPPRESS)
    parser.add_argument("--write", metavar="CKPT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.size, args.dtype)))
        return
    if args.write:
        print(json.dumps(write_checkpoint(Path(args.write), args.size, args.dtype)))
        return

    import jax

    jax.config.update("jax_num_cpu_devices", DEVICES)  # the report's machine line names the children's devices
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mvlm-restore-bench-"))
    common = ["--size", args.size, "--dtype", args.dtype]
    try:
        start = time.perf_counter()
        written = run_child("--write", str(workdir / "ckpt"), *common)
        size_bytes = written["bytes"]
        print(f"random {args.size} checkpoint ({size_bytes / GIB:.2f} GiB) written in "
              f"{time.perf_counter() - start:.0f} s")
        results = {path: run_child("--child", path, str(workdir / "ckpt"), *common) for path in ("before", "after")}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if results["before"]["checksum"] != results["after"]["checksum"]:
        raise RuntimeError(f"the two paths restored different parameters: {results}")

    rows = [("before: random init, unsharded restore, device_put", results["before"]),
            ("after: sharded restore into the target", results["after"])]
    lines = [f"One {args.dtype} copy of the {args.size} parameters: {size_bytes / GIB:.2f} GiB; mesh fsdp={DEVICES} "
             "(CPU devices: every device's shards live in this host's memory, so the sharded parameters "
             "themselves are one copy).", "",
             "| init_from path | peak RSS (GiB) | RSS before (GiB) | (peak - before) / one copy | wall time (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['peak_rss'] / GIB:.2f} | {r['before_rss'] / GIB:.2f} | "
              f"{(r['peak_rss'] - r['before_rss']) / size_bytes:.2f} | {r['seconds']:.1f} |" for name, r in rows]
    before, after = results["before"], results["after"]
    lines += ["", f"Ratio before / after: peak RSS {before['peak_rss'] / after['peak_rss']:.2f}x, "
                  f"wall time {before['seconds'] / after['seconds']:.2f}x.", "",
              "Where it goes. Before: the random parameters, the whole checkpoint on the host and its placed "
              "copy are alive together. After: the parameters once, plus a transient of about the largest array "
              f"({written['largest'] / GIB:.2f} GiB): save_model stores each array as one chunk and a sharded read "
              "decodes whole chunks, one device slice after another (load_model raises orbax's in-flight read "
              "limit to the largest array for this)."]
    print("\n".join(lines))
    note = ("Parameters in bfloat16 (the trainer's are float32): the former path holds about three copies, "
            "which for float32 2.7B (10 GiB each) would not fit a 24 GiB machine. Its random initialisation is "
            "drawn leaf by leaf in bfloat16 here, with few temporaries, as the float32 trainer's init had "
            "(see bench/restore.py)." if args.dtype == "bfloat16" else "")
    copies = {path: (r["peak_rss"] - r["before_rss"]) / size_bytes for path, r in results.items()}
    write_result(Path(args.report), f"init_from restore, MobileLLaMA {args.size}",
                 f"python -m bench.restore --size {args.size} --dtype {args.dtype}", lines, note=note,
                 headline=Headline(f"sharded restore: {copies['after']:.2f} copies at peak, {after['seconds']:.1f} s "
                                   f"(former path {copies['before']:.2f} copies, {before['seconds']:.1f} s)"))


if __name__ == "__main__":
    main()
