"""What a sweep file returns: trials, each a chain of stages with config overrides.

An experiment file defines `sweep(arg)` returning a list of `Trial`s. A trial's stages name their inputs
by the name of an earlier stage of the same trial (`inputs=(("llm", "sft"),)` = init the LLM from the
SFT stage's model) or by an existing checkpoint directory (`checkpoints=("llm=ckpt/sft",)`), which is how
a trial starts from existing weights instead of the early stages. `mobilevlm_chain` builds the paper's
chain: pretrain -> sft -> vlm1 -> vlm2 -> eval -> export -> edge.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

STAGE_KINDS = ("train", "eval", "export", "edge")
CHAIN = ("pretrain", "sft", "vlm1", "vlm2", "eval", "export", "edge")


class SweepError(ValueError):
    """Bad sweep input; the message names the file, the trial, the stage and the key."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a trial.

    kind "train": `experiment` is "FILE.py:ARG" and `overrides` are dotted config keys ("model.projector").
    kind "eval" / "export" / "edge": `overrides` are the task's settings (mvlm_jax.sweep.tasks.DEFAULTS).
    `inputs`: (part, stage name) pairs; part "" is the whole model ("=dir" in config.init_from).
    `resources`: SLURM/local resources (nodes, gpus_per_node, tasks_per_node, time_min); not in the key.
    """

    name: str
    kind: str = "train"
    experiment: str = ""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inputs: tuple[tuple[str, str], ...] = ()
    checkpoints: tuple[str, ...] = ()
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Trial:
    """A named chain of stages. `paper`: (table, row) of the paper's number for this trial, if it has one."""

    name: str
    stages: tuple[Stage, ...]
    baseline: bool = False
    paper: tuple[str, str] | None = None


def mobilevlm_chain(size: str, *, pretrain: Mapping[str, Any] | None = None, sft: Mapping[str, Any] | None = None,
                    vlm1: Mapping[str, Any] | None = None, vlm2: Mapping[str, Any] | None = None,
                    vlm: Mapping[str, Any] | None = None, stage2: str = "2", eval: Mapping[str, Any] | None = None,
                    export: Mapping[str, Any] | None = None, edge: Mapping[str, Any] | None = None,
                    start_from: Mapping[str, str] | None = None, skip: Sequence[str] = (), llm_from: str = "sft",
                    resources: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Stage, ...]:
    """The paper's chain at `size` (tiny | demo | 1.4b | 2.7b) with per-stage overrides.

    `vlm` applies to both VLM stages (then `vlm1` / `vlm2`); `stage2` "lora" trains stage 2 with LoRA.
    `start_from` {"sft": DIR} replaces that stage and every stage before it by the checkpoint DIR;
    `skip` drops stages (e.g. ("edge",)); `llm_from` "pretrain" starts stage 1 from the base LLM (no SFT
    stage: the paper's Table 10 "w/o" rows). Experiment files are those of experiments/.
    """
    resources = resources or {}
    overrides = {"pretrain": pretrain, "sft": sft, "vlm1": {**(vlm or {}), **(vlm1 or {})},
                 "vlm2": {**(vlm or {}), **(vlm2 or {})}, "eval": eval, "export": export, "edge": edge}
    experiments = {"pretrain": f"experiments/pretrain.py:size={size}", "sft": f"experiments/sft.py:size={size}",
                   "vlm1": f"experiments/vlm.py:size={size},stage=1",
                   "vlm2": f"experiments/vlm.py:size={size},stage={stage2}"}
    if llm_from not in ("sft", "pretrain"):
        raise SweepError(f"llm_from {llm_from!r}: expected 'sft' or 'pretrain'")
    skip = tuple(skip) + (("sft",) if llm_from == "pretrain" else ())
    inputs = {"sft": (("", "pretrain"),), "vlm1": (("llm", llm_from),), "vlm2": (("", "vlm1"),),
              "eval": (("", "vlm2"),), "export": (("", "vlm2"),), "edge": (("", "export"),)}
    start_from = dict(start_from or {})
    for name in start_from:
        if name not in ("pretrain", "sft", "vlm1", "vlm2"):
            raise SweepError(f"start_from: {name!r} is not a training stage of the chain {CHAIN[:4]}")
    first = max((CHAIN.index(name) + 1 for name in start_from), default=0)
    stages = []
    for name in CHAIN[first:]:
        if name in skip:
            continue
        kind = "train" if name in experiments else name
        stage_inputs, checkpoints = [], []
        for part, source in inputs.get(name, ()):
            if source in start_from:
                checkpoints.append(f"{part}={start_from[source]}")
            else:
                stage_inputs.append((part, source))
        stages.append(Stage(name=name, kind=kind, experiment=experiments.get(name, ""),
                            overrides=dict(overrides[name] or {}), inputs=tuple(stage_inputs),
                            checkpoints=tuple(checkpoints), resources=dict(resources.get(name, {}))))
    return tuple(stages)


def load_module(path: str | Path) -> ModuleType:
    """Import a Python file by path (experiment and sweep files), once per path."""
    path = Path(path).absolute()
    name = f"_mvlm_sweep_file_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise SweepError(f"{path}: experiment file not found")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_trials(source: str) -> list[Trial]:
    """"FILE.py:ARG" -> the trials of FILE's sweep(ARG), checked for names and stage references."""
    path, _, arg = source.partition(":")
    module = load_module(path)
    if not hasattr(module, "sweep"):
        raise SweepError(f"{path}: defines no sweep(arg)")
    trials = list(module.sweep(arg or None))
    if not trials:
        raise SweepError(f"{source}: sweep() returned no trials")
    seen: set[str] = set()
    for trial in trials:
        if not isinstance(trial, Trial):
            raise SweepError(f"{source}: sweep() must return Trial objects, got {type(trial).__name__}")
        if trial.name in seen or not trial.name or "/" in trial.name:
            raise SweepError(f"{source}: trial name {trial.name!r} is empty, repeated or has a '/'")
        seen.add(trial.name)
        names: set[str] = set()
        for stage in trial.stages:
            if stage.kind not in STAGE_KINDS:
                raise SweepError(f"trial {trial.name!r}: stage {stage.name!r}: unknown kind {stage.kind!r}; "
                                 f"expected one of {STAGE_KINDS}")
            for _, source_stage in stage.inputs:
                if source_stage not in names:
                    raise SweepError(f"trial {trial.name!r}: stage {stage.name!r}: input {source_stage!r} is not "
                                     "an earlier stage of the trial")
            if stage.name in names:
                raise SweepError(f"trial {trial.name!r}: stage name {stage.name!r} repeated")
            names.add(stage.name)
    if sum(t.baseline for t in trials) > 1:
        raise SweepError(f"{source}: more than one baseline trial")
    return trials
