"""MME (Fu et al. 2023): 14 yes/no subtasks, two questions per image. A subtask scores 100*acc + 100*acc_plus
(max 200); Perception sums ten subtasks (max 2000, the paper's MME-P), Cognition four (max 800).

Files under the data root (MobileVLM's benchmark_data layout):
    mme/llava_mme.jsonl  LLaVA's question file: {"question_id": "<subtask>/<image path>", "image" (the same
                         path), "text", "category"}, the two questions of an image on consecutive lines; MME's
                         " Please answer yes or no." is replaced by "\\nAnswer the question using a single word
                         or phrase."
    mme/images           -> MME_Benchmark_release_version: per subtask the images and, per image, <stem>.txt
                         with lines "question<TAB>Yes|No". A subtask folder holding images/ (artwork, celebrity,
                         landmark, posters, scene) keeps those files in questions_answers_YN/; the others keep
                         them beside the images.

Generation: MobileVLM mobilevlm/eval/model_vqa_loader.py (scripts/benchmark/mme.sh): the question file's text
as is, padded image, at most 128 new tokens; the record's prompt is the text.
Ground truth: LLaVA playground/data/eval/MME/convert_answer_to_mme.py: the subtask is the question id up to
the first "/", the answer file is the id's last part up to its first "." + ".txt"; the MME question is the
prompt without LLaVA's suffix, stripped, + " Please answer yes or no." (if the file has no such line: with
two spaces before "Please").
Scores: MME eval_tool/calculation.py: answers lower-cased; "yes"/"no" as is, else the first four characters
decide: "yes" in them -> yes, elif "no" -> no, else other (always wrong); acc over the questions of a
subtask, acc_plus over its images (consecutive pairs in file order: both answers right).
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Sequence

from mvlm_jax.eval.benchmark import BenchmarkFileError, Question
from mvlm_jax.eval.loader_format import loader_questions
from mvlm_jax.eval.records import match_records

NAME = "mme"
MAX_NEW_TOKENS = 128  # model_vqa_loader.py
SCORE_KEYS = ("perception", "cognition")
QUESTION_FILE = "mme/llava_mme.jsonl"
IMAGE_ROOT = "mme/images"
LLAVA_SUFFIX = "Answer the question using a single word or phrase."
MME_SUFFIX = " Please answer yes or no."
YN_FOLDER = "questions_answers_YN"
# calculation.py's eval_type_dict
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def subtask(question_id: str) -> str:
    """The subtask of a question id, as convert_answer_to_mme.py reads it."""
    return str(question_id).split("/")[0]


def answer_file(data_root: Path, question_id: str) -> Path:
    """The ground-truth file of a question: <subtask>[/questions_answers_YN]/<image name up to its first '.'>.txt."""
    folder = Path(data_root) / IMAGE_ROOT / subtask(question_id)
    stem = str(question_id).split("/")[-1].split(".")[0]
    return (folder / YN_FOLDER if (folder / "images").exists() else folder) / f"{stem}.txt"


def required_files(data_root: Path) -> dict[Path, str]:
    data_root = Path(data_root)
    files = {data_root / QUESTION_FILE: "LLaVA's MME question file (llava_mme.jsonl)",
             data_root / IMAGE_ROOT: "the MME_Benchmark_release_version folder (images and answer files)"}
    if (data_root / QUESTION_FILE).is_file():
        for question in questions(data_root):
            folder = answer_file(data_root, question.question_id).parent
            files.setdefault(folder, f"MME's {subtask(question.question_id)} folder with its <image>.txt answer "
                                     f"files (lines 'question<TAB>Yes|No')")
    return files


def questions(data_root: Path) -> list[Question]:
    """The questions in the file's order (the pairs of an image on consecutive lines); category = subtask."""
    root = Path(data_root)
    return loader_questions(root / QUESTION_FILE, root / IMAGE_ROOT, NAME,
                            "LLaVA's MME question file (llava_mme.jsonl)")


def _read_answers(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise BenchmarkFileError(f"{path} is missing: MME's ground truth of that image (lines 'question<TAB>Yes|No')")
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 'question<TAB>answer', got {len(fields)} field(s)")
        table[fields[0]] = fields[1]
    return table


def mme_question(prompt: str, known: dict[str, str]) -> str:
    """MME's own wording of a LLaVA prompt: without LLaVA's suffix, stripped, + " Please answer yes or no."
    (or with two spaces before "Please" when only that form is in `known`)."""
    if LLAVA_SUFFIX in prompt:
        prompt = prompt.replace(LLAVA_SUFFIX, "").strip()
    if MME_SUFFIX.strip() not in prompt:
        prompt = prompt + MME_SUFFIX
        if prompt not in known:
            prompt = prompt.replace(MME_SUFFIX, " " + MME_SUFFIX)
    return prompt


def ground_truth(question: Question, data_root: Path, cache: dict[Path, dict[str, str]]) -> str:
    """The ground-truth answer of a question as written in its file ("Yes"/"No"); `cache` holds the files read."""
    path = answer_file(data_root, question.question_id)
    if path not in cache:
        cache[path] = _read_answers(path)
    wording = mme_question(question.prompt, cache[path])
    if wording not in cache[path]:
        raise ValueError(f"{path}: no line for {wording!r} (question {question.question_id!r})")
    return cache[path][wording]


def parse_answer(text: str) -> str:
    """"yes", "no" or "other", as calculation.py reads an answer ("Not sure" and "Nope" are no)."""
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    if "no" in answer[:4]:
        return "no"
    return "other"


def _subtask_scores(results: list[bool]) -> dict[str, float]:
    """acc, acc_plus (percent) and score = acc + acc_plus of a subtask's results in file order. A trailing
    question without its pair (only with --limit) counts in acc, not in acc_plus."""
    pairs = [results[i:i + 2] for i in range(0, len(results) - 1, 2)]
    acc = 100.0 * sum(results) / len(results)
    acc_plus = 100.0 * sum(all(pair) for pair in pairs) / len(pairs) if pairs else 0.0
    return {"score": acc + acc_plus, "acc": acc, "acc_plus": acc_plus, "questions": len(results),
            "images": len(pairs)}


def score(records: Sequence[dict], data_root: Path, limit: int | None = None) -> dict:
    """{"perception", "cognition": sums of the subtask scores present, "subtasks": {name: {"score", "acc",
    "acc_plus", "questions", "images"}}, "questions", "answered", "missing" (0), "unparsed" (answers read
    as other)}.

    Records are matched by (question_id, prompt). A missing answer is an AnswerError naming it: the official
    scorer pairs answers by position, so a gap would misalign every later pair. `limit`: the answers
    cover only the first `limit` questions.
    """
    data_root = Path(data_root)
    questions_ = questions(data_root)[:limit]
    matched, _ = match_records(records, [q.key for q in questions_], lambda r: (str(r["question_id"]), r["prompt"]),
                               NAME, missing_ok=False)
    cache: dict[Path, dict[str, str]] = {}
    results: dict[str, list[bool]] = collections.defaultdict(list)
    unparsed = 0
    for question, record in zip(questions_, matched):
        gold = ground_truth(question, data_root, cache).lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"{answer_file(data_root, question.question_id)}: ground truth {gold!r} of "
                             f"{question.question_id!r} is neither yes nor no")
        answer = parse_answer(record["text"])
        unparsed += answer == "other"
        results[subtask(question.question_id)].append(answer == gold)
    order = [t for t in PERCEPTION + COGNITION if t in results] + sorted(set(results) - set(PERCEPTION + COGNITION))
    subtasks = {name: _subtask_scores(results[name]) for name in order}
    return {"perception": sum(s["score"] for t, s in subtasks.items() if t in PERCEPTION),
            "cognition": sum(s["score"] for t, s in subtasks.items() if t in COGNITION),
            "subtasks": subtasks, "questions": len(questions_), "answered": len(questions_), "missing": 0,
            "unparsed": unparsed}


def majority_answers(questions_: Sequence[Question], data_root: Path) -> list[str]:
    """Per question, the most frequent ground-truth answer of its subtask among the given questions, as
    "Yes" or "No"; ties (every MME image has a yes and a no question) go to "No"."""
    cache: dict[Path, dict[str, str]] = {}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for question in questions_:
        counts[subtask(question.question_id)][ground_truth(question, Path(data_root), cache).lower()] += 1
    top = {name: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0].capitalize() for name, c in counts.items()}
    return [top[subtask(q.question_id)] for q in questions_]
