"""An experiment file for the trainer that reads a sweep stage's resolved config (JSON), so the stage runs
exactly the config its key was computed from:

  python -m mvlm_jax.train --config mvlm_jax/sweep/resolved_config.py:SWEEP/stages/ID/config.json --workdir ...
"""
import json
from pathlib import Path

import ml_collections


def tuples_from_json(value):
    if isinstance(value, list):  # JSON has no tuples; every sequence in the configs is one
        return tuple(tuples_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: tuples_from_json(v) for k, v in value.items()}
    return value


def get_config(arg=None):
    if not arg:
        raise ValueError("resolved_config.py needs the path of a config.json: resolved_config.py:PATH")
    return ml_collections.ConfigDict(tuples_from_json(json.loads(Path(arg).read_text())))
