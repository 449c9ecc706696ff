"""Joining a multi-process JAX run: the one place the entry points (train, eval) start distributed JAX."""
from __future__ import annotations

import os


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> None:
    """coordinator "HOST:PORT" (+ num_processes, process_id): a manual multi-process run, with gloo
    collectives on CPU; auto: jax.distributed.initialize() finds its peers itself (SLURM, TPU VMs,
    Kubernetes); neither: one process."""
    import jax

    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num_processes and --process_id")
        if jax.config.jax_platforms in (None, "", "cpu") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()
