"""Trials -> a plan of unique stages, each keyed by a hash of its resolved config and its inputs' keys.

A training stage's key covers the experiment's config after `get_config(arg)` and the trial's overrides
(every key, so two spellings of the same run share a key) plus the keys of the stages it starts from;
paths that only say where this sweep lives (the embedded data root, init_from) are left out. Trials that
share a prefix of identical stages therefore share those stages: the plan holds each once.

Files: SWEEP/plan.json (what every runner and SLURM job reads), SWEEP/stages/NAME-KEY/ per stage.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import ml_collections

from mvlm_jax.sweep import spec as spec_lib
from mvlm_jax.sweep.resolved_config import tuples_from_json
from mvlm_jax.sweep.spec import SweepError, Trial

ROOT = Path(__file__).resolve().parents[2]  # experiment paths in sweep files are relative to the repository
PLAN_FILE = "plan.json"
# Not part of a stage's identity: where this sweep keeps things, and what init_from is made of at run time.
UNHASHED_KEYS = ("init_from", "data.embedded.root")


@dataclasses.dataclass
class PlannedStage:
    """A unique stage. `config`: the resolved train config (dict) or task settings; `inputs`: (part, id)."""

    id: str
    name: str
    kind: str
    config: dict[str, Any]
    inputs: list[tuple[str, str]]
    checkpoints: list[str]
    resources: dict[str, Any]
    trials: list[str]


@dataclasses.dataclass
class Plan:
    """`stages` in dependency order; `trials`: name -> {baseline, paper, stages {name: id}, overrides, info}."""

    source: str
    sweep_dir: Path
    stages: dict[str, PlannedStage]
    trials: dict[str, dict[str, Any]]

    def stage_dir(self, stage_id: str) -> Path:
        return self.sweep_dir / "stages" / stage_id

    def save(self) -> Path:
        from mvlm_jax.sweep.state import write_json

        path = self.sweep_dir / PLAN_FILE
        write_json(path, {"source": self.source, "stages": [dataclasses.asdict(s) for s in self.stages.values()],
                          "trials": self.trials})
        return path


def load_plan(sweep_dir: str | Path) -> Plan:
    sweep_dir = Path(sweep_dir).absolute()
    path = sweep_dir / PLAN_FILE
    if not path.is_file():
        raise SweepError(f"{path}: no plan; run `mvlm sweep EXP --workdir {sweep_dir}` first")
    data = json.loads(path.read_text())
    stages = {}
    for s in data["stages"]:
        s["inputs"] = [tuple(pair) for pair in s["inputs"]]
        stages[s["id"]] = PlannedStage(**s)
    return Plan(data["source"], sweep_dir, stages, data["trials"])


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str) -> None:
    """Set dotted keys; an unknown key or a value of the wrong type is a SweepError naming `where` and the key."""
    for key, value in overrides.items():
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise SweepError(f"{where}: unknown config key {key!r} (no {'.'.join(parts[:depth + 1])!r})")
            if depth < len(parts) - 1:
                node = node[part]
        try:
            with config.unlocked():
                node[parts[-1]] = tuples_from_json(value)
        except (TypeError, ValueError, AttributeError) as error:
            raise SweepError(f"{where}: invalid value {value!r} for config key {key!r}: {error}") from None


def resolve_train(experiment: str, overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The fully resolved config (a JSON-ready dict) of experiment "FILE.py:ARG" with `overrides`, checked:
    model presets and override fields exist, the batch divides. Errors name `where`."""
    path, _, arg = experiment.partition(":")
    file = Path(path) if Path(path).is_absolute() else ROOT / path
    config = spec_lib.load_module(file).get_config(arg or None)
    apply_overrides(config, overrides, where)
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import validate

    try:
        validate(parse(config), 1)
    except (TypeError, ValueError) as error:
        raise SweepError(f"{where}: {error}") from None
    return json.loads(json.dumps(config.to_dict(), default=list))


def hashed_view(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the keys that only say where this sweep lives (UNHASHED_KEYS)."""
    view = copy.deepcopy(config)
    for key in UNHASHED_KEYS:
        node, parts = view, key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return view


def stage_key(kind: str, config: dict[str, Any], input_keys: list[tuple[str, str]], checkpoints: list[str]) -> str:
    blob = json.dumps({"kind": kind, "config": hashed_view(config), "inputs": input_keys,
                       "checkpoints": checkpoints}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def model_info(config: dict[str, Any]) -> dict[str, Any]:
    """Parameters (by part) and visual tokens of a resolved train config's model (shapes only)."""
    import jax

    from mvlm_jax.models import abstract_params
    from mvlm_jax.models.config import VLMConfig
    from mvlm_jax.train.experiment import model_config

    model = model_config(ml_collections.ConfigDict(tuples_from_json(config["model"])))
    counts = {part: sum(leaf.size for leaf in jax.tree.leaves(tree)) for part, tree in abstract_params(model).items()}
    return {"parameters": sum(counts.values()), "parameters_by_part": counts,
            "visual_tokens": model.num_visual_tokens if isinstance(model, VLMConfig) else 0}


def make_plan(source: str, trials: list[Trial], sweep_dir: str | Path, with_info: bool = True) -> Plan:
    """Resolve every stage of every trial (all errors before anything runs) and share identical stages."""
    from mvlm_jax.sweep import tasks

    stages: dict[str, PlannedStage] = {}
    plan_trials: dict[str, dict[str, Any]] = {}
    info_cache: dict[str, dict[str, Any]] = {}
    for trial in trials:
        ids: dict[str, str] = {}
        for stage in trial.stages:
            where = f"trial {trial.name!r}, stage {stage.name!r}"
            if stage.kind == "train":
                config = resolve_train(stage.experiment, stage.overrides, where)
            else:
                config = tasks.resolve_settings(stage.kind, stage.overrides, where)
            inputs = [(part, ids[name]) for part, name in stage.inputs]
            key = stage_key(stage.kind, config, inputs, list(stage.checkpoints))
            stage_id = f"{stage.name}-{key}"
            if stage_id not in stages:
                stages[stage_id] = PlannedStage(stage_id, stage.name, stage.kind, config, inputs,
                                                list(stage.checkpoints), dict(stage.resources), [])
            stages[stage_id].trials.append(trial.name)
            ids[stage.name] = stage_id
        last_train = [s for s in trial.stages if s.kind == "train"]
        info = {}
        if with_info and last_train:
            final = stages[ids[last_train[-1].name]]
            info = info_cache.setdefault(final.id, model_info(final.config))
        plan_trials[trial.name] = {"baseline": trial.baseline, "paper": list(trial.paper) if trial.paper else None,
                                   "stages": ids, "info": info,
                                   "overrides": {s.name: dict(s.overrides) for s in trial.stages if s.overrides}}
    return Plan(source, Path(sweep_dir).absolute(), stages, plan_trials)


def varied_overrides(plan: Plan) -> dict[str, dict[str, Any]]:
    """Per trial, the "stage.key" overrides whose value differs from the baseline trial's (the first trial's
    when none is marked)."""
    flat = {name: {f"{stage}:{key}": value for stage, values in t["overrides"].items() for key, value in values.items()}
            for name, t in plan.trials.items()}
    baseline = next((n for n, t in plan.trials.items() if t["baseline"]), next(iter(plan.trials)))
    base = flat[baseline]
    return {name: {k: v for k, v in values.items() if base.get(k, "<unset>") != v}
            | {k: "(default)" for k in base if k not in values}
            for name, values in flat.items()}
