"""The generic half of checkpoint conversion: a list of entries (our parameter path <-> a source tensor
name and the layout transform between them) drives import and export alike. Layer stacks are unrolled
per layer on the source side and stacked on axis 0 on ours (nn.scan).

Import reads one source tensor at a time into a preallocated float32 array, so that peak memory is one
copy of the parameters plus one tensor; it fails on any missing, unexpected or wrongly shaped tensor.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator

import numpy as np

from mvlm_jax.convert.safetensors_io import TensorSource

Transform = Callable[[np.ndarray], np.ndarray]
Params = dict[str, Any]


class ConversionError(ValueError):
    pass


def identity(array: np.ndarray) -> np.ndarray:
    return array


def transpose(array: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] <-> JAX kernel [in, out]."""
    return array.T


@dataclasses.dataclass(frozen=True)
class Entry:
    """path: keys in our parameter tree. source: tensor name, with '{layer}' where layers are unrolled.
    layers: stack size on our axis 0 (0 = not stacked). to_ours / to_source: layout transforms."""

    path: tuple[str, ...]
    source: str
    to_ours: Transform = identity
    to_source: Transform = identity
    layers: int = 0

    def source_names(self) -> list[str]:
        return [self.source.format(layer=i) for i in range(self.layers)] if self.layers else [self.source]


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Entries plus patterns (regexes, full match) of source tensors that are known and deliberately unused."""

    entries: tuple[Entry, ...]
    ignored: tuple[str, ...] = ()

    def __add__(self, other: "Mapping") -> "Mapping":
        return Mapping(self.entries + other.entries, self.ignored + other.ignored)

    def prefixed(self, path_prefix: tuple[str, ...]) -> "Mapping":
        return Mapping(tuple(dataclasses.replace(e, path=path_prefix + e.path) for e in self.entries), self.ignored)


def flatten_paths(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            out.update(flatten_paths(value, prefix + (key,)))
        return out
    return {prefix: tree}


def _set_path(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _source_shape(entry: Entry, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a source tensor must have, derived by running the inverse transform on a stand-in."""
    return entry.to_source(np.broadcast_to(np.zeros((), np.float32), our_shape)).shape


def _read(source: TensorSource, name: str, entry: Entry, our_shape: tuple[int, ...]) -> np.ndarray:
    if name not in source.names():
        raise ConversionError(f"missing tensor {name} (expected shape {list(_source_shape(entry, our_shape))}, "
                              f"for parameter {'/'.join(entry.path)})")
    expected = _source_shape(entry, our_shape)
    found = source.shape(name)
    if tuple(found) != tuple(expected):
        raise ConversionError(f"tensor {name} has shape {list(found)}, expected {list(expected)} "
                              f"(for parameter {'/'.join(entry.path)} of shape {list(our_shape)})")
    return entry.to_ours(source.get(name).astype(np.float32))


def import_params(source: TensorSource, mapping: Mapping, abstract: Any) -> Params:
    """Fill a parameter tree shaped like `abstract` (leaves with .shape) from `source`.

    Every parameter must be covered by exactly one entry and every source tensor must be used or
    ignored; otherwise a ConversionError names the tensors.
    """
    targets = {path: tuple(leaf.shape) for path, leaf in flatten_paths(abstract).items()}
    covered = {entry.path for entry in mapping.entries}
    uncovered = sorted("/".join(p) for p in set(targets) - covered)
    if uncovered:
        raise ConversionError(f"no source tensor is mapped to parameter(s) {uncovered}")
    params: Params = {}
    used: set[str] = set()
    for entry in mapping.entries:
        if entry.path not in targets:
            raise ConversionError(f"mapping names parameter {'/'.join(entry.path)}, which this model does not have")
        shape = targets[entry.path]
        if entry.layers:
            stacked = np.empty(shape, np.float32)
            for layer, name in enumerate(entry.source_names()):
                stacked[layer] = _read(source, name, entry, shape[1:])
            value = stacked
        else:
            value = np.ascontiguousarray(_read(source, entry.source, entry, shape))
        used.update(entry.source_names())
        _set_path(params, entry.path, value)
    ignore = [re.compile(pattern) for pattern in mapping.ignored]
    unexpected = sorted(n for n in source.names() - used if not any(p.fullmatch(n) for p in ignore))
    if unexpected:
        shown = ", ".join(f"{n} {list(source.shape(n))}" for n in unexpected[:8])
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        raise ConversionError(f"unexpected tensor(s) that no parameter uses: {shown}{more}")
    return params


def export_plan(params: Params, mapping: Mapping) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(source name, source shape, loader) per source tensor, in mapping order. A loader returns the float32
    array in source layout when called, so a writer can lay out a file first and convert one tensor at a time."""
    flat = flatten_paths(params)
    missing = sorted("/".join(e.path) for e in mapping.entries if e.path not in flat)
    if missing:
        raise ConversionError(f"parameter(s) {missing} missing from the checkpoint")
    plan = []
    for entry in mapping.entries:
        value = flat[entry.path]
        for index, name in enumerate(entry.source_names()):
            piece_shape = tuple(value.shape[1:] if entry.layers else value.shape)

            def load(value=value, index=index, entry=entry) -> np.ndarray:
                piece = value[index] if entry.layers else value
                return np.ascontiguousarray(entry.to_source(np.asarray(piece, np.float32)))
            plan.append((name, _source_shape(entry, piece_shape), load))
    return plan


def export_tensors(params: Params, mapping: Mapping, dtype: np.dtype = np.float32) -> Iterator[tuple[str, np.ndarray]]:
    """(source name, array in source layout) pairs, one tensor at a time."""
    for name, _, load in export_plan(params, mapping):
        yield name, load().astype(dtype)
