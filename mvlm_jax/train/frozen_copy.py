"""The frozen parameters of a run (the vision tower; the LLM in VLM stage 1), written once per run beside
the step checkpoints instead of into every one of them: they never change, and in stage 1 they are most of
the model.

WORKDIR/frozen/ is one orbax checkpoint with two items:
  params       the frozen parameter tree (sharded arrays, written by all processes together)
  fingerprint  {"checksum": ..., "leaves": number of arrays}
A fresh run writes it, synchronously, at its first checkpoint (replacing any copy a former run left);
a resumed run only reads it. Every step checkpoint records the checksum it was trained with, and a resume
recomputes the checksum of what it read, so a damaged, missing or foreign copy stops the run with its path
instead of resuming with other weights (orbax alone fills a missing chunk file with zeros).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from mvlm_jax.paths import as_path
from mvlm_jax.sharding import path_of

_GOLDEN = 0x9E3779B1  # odd: a changed bit changes the weighted sum at any position


class FrozenCopyError(RuntimeError):
    pass


def _leaf_sum(x: jax.Array) -> jax.Array:
    """Sum over the leaf of (its bits) x (an odd weight from the position), in wrapping uint32: any changed,
    zeroed or moved value changes it, and the sum is exact in any order (any mesh, any process count)."""
    bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis in range(x.ndim):  # the flat position, without a flat reshape of a sharded array
        index = index * jnp.uint32(x.shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    weight = index * jnp.uint32(_GOLDEN) | jnp.uint32(1)
    return jnp.sum(bits.astype(jnp.uint32) * weight, dtype=jnp.uint32)


def checksum(tree: Any) -> str | None:
    """A content checksum of a tree of (sharded) arrays; None for an empty tree. A collective: with several
    processes, all of them must call it."""
    flat = sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda item: path_of(item[0]))
    if not flat:
        return None
    leaves = [leaf for _, leaf in flat]
    mesh_sharding = next((leaf.sharding for leaf in leaves if isinstance(leaf.sharding, NamedSharding)), None)
    replicated = NamedSharding(mesh_sharding.mesh, PartitionSpec()) if mesh_sharding is not None else None
    sums = jax.jit(lambda xs: jnp.stack([_leaf_sum(x) for x in xs]), out_shardings=replicated)(leaves)
    digest = hashlib.sha256()
    for (key_path, leaf), value in zip(flat, np.asarray(sums)):
        digest.update(f"{path_of(key_path)}:{leaf.shape}:{leaf.dtype}:{int(value)};".encode())
    return digest.hexdigest()[:32]


class FrozenCopy:
    """WORKDIR/frozen: write once per run, read and verify on resume."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = as_path(directory, "frozen parameter copy")  # local or gs://, as the workdir
        self.checksum: str | None = None  # of the copy this run wrote or read; None: none yet

    def _checkpointer(self) -> ocp.Checkpointer:
        return ocp.Checkpointer(ocp.CompositeCheckpointHandler())

    def write_once(self, frozen: Any) -> str | None:
        """Write the copy unless this run has written or read it; returns its checksum (None when nothing
        is frozen). Synchronous: once it returns, a step checkpoint may refer to it."""
        if self.checksum is None and jax.tree.leaves(frozen):
            value = checksum(frozen)
            with self._checkpointer() as checkpointer:
                # force: a copy left by a former run in this workdir (no step checkpoint refers to it)
                checkpointer.save(self.directory, args=ocp.args.Composite(
                    params=ocp.args.StandardSave(frozen),
                    fingerprint=ocp.args.JsonSave({"checksum": value, "leaves": len(jax.tree.leaves(frozen))})),
                    force=True)
            self.checksum = value
        return self.checksum

    def read(self, abstract: Any) -> tuple[Any, str]:
        """(params, recorded checksum) restored into `abstract`'s shardings; FrozenCopyError naming the
        directory when it is missing or unreadable. Local: verify() afterwards, on every process."""
        if not self.directory.is_dir():
            raise FrozenCopyError(f"{self.directory}: missing. The checkpoints of this run hold no frozen "
                                  "parameters; they are written once, to this directory")
        try:
            with self._checkpointer() as checkpointer:
                restored = checkpointer.restore(self.directory, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract), fingerprint=ocp.args.JsonRestore()))
            return restored.params, restored.fingerprint["checksum"]
        except Exception as error:  # noqa: BLE001 - whatever orbax raises, the copy is unusable
            raise FrozenCopyError(f"{self.directory}: the frozen parameters of this run cannot be read "
                                  f"({type(error).__name__}: {str(error)[:300]})") from error

    def verify(self, params: Any, recorded: str) -> None:
        """The checksum of what was read must be the one recorded when it was written (a collective)."""
        value = checksum(params)
        if value != recorded:
            raise FrozenCopyError(f"{self.directory}: damaged; the frozen parameters read from it have checksum "
                                  f"{value}, written with {recorded}")
        self.checksum = value
