"""The paper's language benchmarks (Table 3) as lm-evaluation-harness 0.4.13 tasks over local files.

No model hub: each task is lm-eval's own built-in task (same prompt, choices, target and metrics),
overridden only in where its documents come from. For every task a small YAML is written that
`include:`s the built-in YAML by its absolute path and sets `dataset_path: json` (or `parquet`) with
`dataset_kwargs.data_files` pointing at a file under the data root. The override keeps the built-in
task's name (`arc_easy`, `mmlu_anatomy`, ...), so lm-eval's own groups (`mmlu` and its four categories,
aggregated with `weight_by_size`) and result keys stay as they are.

Data-root layout: one file per dataset split, rows in the Hugging Face dataset's own schema (JSON lines,
`<split>.jsonl`, or `<split>.parquet`); the split is the one lm-eval 0.4.13 evaluates on:

    DATA_ROOT/
      arc_easy/test.jsonl          allenai/ai2_arc, ARC-Easy, test
      arc_challenge/test.jsonl     allenai/ai2_arc, ARC-Challenge, test
      boolq/validation.jsonl       aps/super_glue, boolq, validation
      rte/validation.jsonl         nyu-mll/glue, rte, validation
      winogrande/validation.jsonl  allenai/winogrande, winogrande_xl, validation
      truthfulqa/validation.jsonl  truthfulqa/truthful_qa, multiple_choice, validation (mc1 and mc2)
      hellaswag/validation.jsonl   Rowan/hellaswag, validation
      piqa/validation.jsonl        baber/piqa, validation
      mmlu/test.jsonl              cais/mmlu, all, test (57 subjects, the `subject` column says which)
      mmlu/dev.jsonl               cais/mmlu, all, dev (the 5-shot examples: lm-eval takes the first 5)

On a machine with hub access: `datasets.load_dataset(path, name, split=split).to_json(file)`. MMLU's two
files are split by subject at run time (one file per subject, next to the task YAMLs), because lm-eval
runs one task per subject.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

MMLU = "mmlu"
FORMATS = {".jsonl": "json", ".parquet": "parquet"}  # file suffix -> the `datasets` builder that reads it


class LMDataError(FileNotFoundError):
    """A benchmark data file is missing or incomplete; the message names the path and what belongs there."""


@dataclasses.dataclass(frozen=True)
class LocalData:
    """One dataset split under the data root, in its Hugging Face schema."""

    directory: str  # under the data root
    split: str  # the file stem, and lm-eval's split name
    source: str  # `load_dataset` arguments that produce it
    fields: str  # the columns the lm-eval task reads


@dataclasses.dataclass(frozen=True)
class LocalTask:
    """A built-in lm-eval task (its YAML relative to lm_eval/tasks) read from local data."""

    name: str
    builtin: str
    data: LocalData
    split_key: str  # "test_split" or "validation_split": which one lm-eval evaluates


_ARC = "id, question, choices {text: [...], label: [...]}, answerKey"
_TQA = LocalData("truthfulqa", "validation", "'truthfulqa/truthful_qa', 'multiple_choice', split='validation'",
                 "question, mc1_targets {choices, labels}, mc2_targets {choices, labels}")

# The paper's Table 3 tasks except MMLU (see MMLU_DATA), in lm-eval 0.4.13's names.
TASKS = {task.name: task for task in (
    LocalTask("arc_easy", "arc/arc_easy.yaml", LocalData(
        "arc_easy", "test", "'allenai/ai2_arc', 'ARC-Easy', split='test'", _ARC), "test_split"),
    LocalTask("arc_challenge", "arc/arc_challenge.yaml", LocalData(
        "arc_challenge", "test", "'allenai/ai2_arc', 'ARC-Challenge', split='test'", _ARC), "test_split"),
    LocalTask("boolq", "super_glue/boolq/default.yaml", LocalData(
        "boolq", "validation", "'aps/super_glue', 'boolq', split='validation'",
        "passage, question, label (0 no, 1 yes)"),
        "validation_split"),
    LocalTask("rte", "glue/rte/default.yaml", LocalData(
        "rte", "validation", "'nyu-mll/glue', 'rte', split='validation'",
        "sentence1, sentence2, label (0 entailment, 1 not)"), "validation_split"),
    LocalTask("winogrande", "winogrande/default.yaml", LocalData(
        "winogrande", "validation", "'allenai/winogrande', 'winogrande_xl', split='validation'",
        "sentence (with one _), option1, option2, answer ('1' or '2')"), "validation_split"),
    LocalTask("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", _TQA, "validation_split"),
    LocalTask("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", _TQA, "validation_split"),
    LocalTask("hellaswag", "hellaswag/hellaswag.yaml", LocalData(
        "hellaswag", "validation", "'Rowan/hellaswag', split='validation'",
        "activity_label, ctx_a, ctx_b, ctx, endings, label"), "validation_split"),
    LocalTask("piqa", "piqa/piqa.yaml", LocalData(
        "piqa", "validation", "'baber/piqa', split='validation'", "goal, sol1, sol2, label"), "validation_split"),
)}

MMLU_DATA = {split: LocalData(MMLU, split, f"'cais/mmlu', 'all', split='{split}'",
                              "question, subject, choices [4], answer (0-3)") for split in ("test", "dev")}
MMLU_FEWSHOT = 5  # paper: 5-shot MMLU; lm-eval's MMLU YAMLs take the first 5 dev rows (sampler first_n)
MMLU_BUILTIN = "mmlu/default"  # mmlu_<subject>.yaml per subject, and the groups over them

KNOWN = (*TASKS, MMLU)


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def mmlu_subjects() -> list[str]:
    """The 57 subjects, from lm-eval's per-subject task files (mmlu_<subject>.yaml)."""
    directory = lm_eval_tasks_dir() / MMLU_BUILTIN
    subjects = sorted(path.stem[len("mmlu_"):] for path in directory.glob("mmlu_*.yaml"))
    if not subjects:
        raise FileNotFoundError(f"{directory}: no mmlu_<subject>.yaml; is lm-eval 0.4.13 installed?")
    return subjects


def parse_tasks(spec: str) -> list[str]:
    """"paper" or a comma list of KNOWN names -> task names in Table 3's column order."""
    names = list(KNOWN) if spec.strip() == "paper" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or spec!r}; expected 'paper' or a comma list of {', '.join(KNOWN)}")
    return [n for n in KNOWN if n in names]


def data_file(data_root: Path, data: LocalData) -> Path:
    """The split's file (.jsonl, else .parquet); LMDataError naming the path and what belongs there."""
    stem = Path(data_root) / data.directory / data.split
    for suffix in FORMATS:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix).absolute()
    raise LMDataError(
        f"{stem}.jsonl: missing (or {stem.name}.parquet). It holds the rows of load_dataset({data.source}) in "
        f"that dataset's schema ({data.fields}); write it with .to_json('{stem}.jsonl')")


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: invalid JSON ({error.msg})") from error
    return rows


def _write_yaml(path: Path, config: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _override(task: str, builtin: Path, data_files: dict[str, Path], **splits) -> dict:
    """A task YAML that is `builtin` with its documents read from `data_files` (split -> file)."""
    suffixes = {path.suffix for path in data_files.values()}
    if len(suffixes) != 1:
        raise ValueError(f"{task}: mixed file formats {sorted(map(str, data_files.values()))}; use one format")
    return {"include": str(builtin), "task": task, "dataset_path": FORMATS[suffixes.pop()], "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in data_files.items()}},
            "training_split": None, "validation_split": None, "test_split": None, **splits}


def _split_mmlu(data_root: Path, out: Path, subjects: Iterable[str]) -> dict[str, dict[str, Path]]:
    """MMLU test/dev rows -> out/mmlu/<split>/<subject>.jsonl; returns subject -> {split: file}."""
    subjects = list(subjects)
    files: dict[str, dict[str, Path]] = defaultdict(dict)
    for split, data in MMLU_DATA.items():
        source = data_file(data_root, data)
        by_subject: dict[str, list[dict]] = defaultdict(list)
        for number, row in enumerate(read_rows(source), 1):
            if "subject" not in row:
                raise ValueError(f"{source}: row {number} has no 'subject' (expected the schema {data.fields})")
            by_subject[row["subject"]].append(row)
        missing = [s for s in subjects if len(by_subject.get(s, ())) < (MMLU_FEWSHOT if split == "dev" else 1)]
        if missing:
            need = f"at least {MMLU_FEWSHOT} rows" if split == "dev" else "rows"
            raise LMDataError(f"{source}: no {need} for subject(s) {', '.join(missing)}; the file holds "
                              f"load_dataset({data.source}), all 57 subjects")
        directory = out / MMLU / split
        directory.mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            path = directory / f"{subject}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in by_subject[subject])
            files[subject][split] = path.absolute()
    return files


def check_data(data_root: str | os.PathLike, tasks: Iterable[str]) -> list[Path]:
    """Every file the tasks read, before any model is loaded; LMDataError naming the first missing one."""
    needed = [TASKS[t].data for t in tasks if t in TASKS] + (list(MMLU_DATA.values()) if MMLU in tasks else [])
    return [data_file(Path(data_root), data) for data in dict.fromkeys(needed)]


def write_task_dir(data_root: str | os.PathLike, out: str | os.PathLike, tasks: Iterable[str]) -> Path:
    """Write the task YAMLs of `tasks` (KNOWN names) reading from `data_root` into `out` (created), for
    TaskManager(include_path=out) (with or without lm-eval's built-in tasks) or `lm_eval --include_path out`.
    Returns out."""
    data_root, out, tasks = Path(data_root), Path(out), list(tasks)
    check_data(data_root, tasks)
    builtins = lm_eval_tasks_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        if name == MMLU:
            continue
        task = TASKS[name]
        split = task.data.split
        _write_yaml(out / f"{name}.yaml", _override(name, builtins / task.builtin,
                                                    {split: data_file(data_root, task.data)},
                                                    **{task.split_key: split}))
    if MMLU in tasks:
        # lm-eval's groups mmlu, mmlu_stem, ... as they are (mmlu_<category> gathers the subjects by their tag), so
        # that an index without the built-in tasks (TaskManager(include_defaults=False)) knows them too
        (out / MMLU).mkdir(exist_ok=True)
        for group in sorted((builtins / MMLU_BUILTIN).glob("_mmlu*.yaml")):
            _write_yaml(out / MMLU / group.name, {"include": str(group)})
        subjects = mmlu_subjects()
        for subject, files in _split_mmlu(data_root, out, subjects).items():
            # the built-in template already sets test_split: test, fewshot_split: dev, sampler first_n
            _write_yaml(out / MMLU / f"mmlu_{subject}.yaml",
                        _override(f"mmlu_{subject}", builtins / MMLU_BUILTIN / f"mmlu_{subject}.yaml", files,
                                  test_split="test", fewshot_split="dev"))
    return out
