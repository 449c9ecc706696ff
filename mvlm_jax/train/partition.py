"""What trains: a partition of the parameters by path patterns.

Paths are "/"-joined keys ("projector/block_0/depthwise/kernel", "llm/layers/attn/q_proj/lora_a").
A parameter trains when some `trainable` pattern matches it (re.search) and no `frozen` pattern does;
only that part is differentiated and carries optimizer state. Both parts stay nested dicts (orbax and
the sharding rules see ordinary parameter subtrees).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax

Params = dict[str, Any]


def _filter(tree: Params, keep: Callable[[str], bool], prefix: str = "") -> Params:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            sub = _filter(value, keep, path + "/")
            if sub:
                out[key] = sub
        elif keep(path):
            out[key] = value
    return out


def is_trainable(trainable: Sequence[str], frozen: Sequence[str] = ()) -> Callable[[str], bool]:
    train = [re.compile(p) for p in trainable]
    freeze = [re.compile(p) for p in frozen]
    return lambda path: any(p.search(path) for p in train) and not any(p.search(path) for p in freeze)


def split(params: Params, trainable: Callable[[str], bool]) -> tuple[Params, Params]:
    """(trainable part, frozen part), each a nested dict holding its leaves only."""
    return _filter(params, trainable), _filter(params, lambda path: not trainable(path))


def merge(first: Params, second: Params) -> Params:
    """Union of two nested dicts; where both hold a leaf, the second one wins."""
    out = dict(first)
    for key, value in second.items():
        out[key] = merge(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def count(tree: Any) -> int:
    return sum(int(getattr(leaf, "size", 0)) for leaf in jax.tree.leaves(tree))


def trainable_summary(trainable: Params, frozen: Params) -> str:
    """"trainable 18,936,832 of 1,674,143,744 parameters (1.13 %)" for the start of a run."""
    n_train, n_all = count(trainable), count(trainable) + count(frozen)
    return f"trainable {n_train:,} of {n_all:,} parameters ({100 * n_train / max(n_all, 1):.2f} %)"
