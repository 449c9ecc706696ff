"""ScienceQA, MME and MMBench: questions as the official generators build them, and the official scorers'
rules and quirks, on tiny fixture trees (tests/benchmark_fixtures_b.py). Expected values are worked out by
hand in the comments."""
from __future__ import annotations

import io
import re
import shutil

import pytest
from PIL import Image

import benchmark_fixtures_b as fixtures
from mvlm_jax.eval import benchmark, mmbench, mme, sqa
from mvlm_jax.eval.benchmark import AnswerError, BenchmarkFileError

INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("benchmark_data")
    fixtures.write_sqa(data_root)
    fixtures.write_mme(data_root)
    fixtures.write_mmbench(data_root)
    return data_root


def records_for(questions, answers: dict) -> list[dict]:
    """Answer records as the official generators write them, for the questions whose key is in `answers`."""
    return [{"question_id": q.question_id, "prompt": q.prompt, "text": answers[q.key], "answer_id": "x",
             "model_id": "m", "metadata": {}, **q.record_extra} for q in questions if q.key in answers]


@pytest.mark.parametrize("name", ["sqa", "mme", "mmbench"])
def test_files_present_and_missing(root, tmp_path, name):
    benchmark.check_files([name], root)  # the fixture tree is complete
    wanted = {"sqa": "llava_test_CQM-A.json", "mme": "llava_mme.jsonl", "mmbench": "mmbench_dev_en_20231003.tsv"}
    with pytest.raises(BenchmarkFileError, match=wanted[name]):
        benchmark.check_files([name], tmp_path)
    with pytest.raises(BenchmarkFileError, match=re.escape(str(tmp_path))):
        benchmark.module(name).questions(tmp_path)


# ---------------------------------------------------------------- ScienceQA

def test_sqa_questions(root):
    questions = sqa.questions(root)
    assert [q.question_id for q in questions] == ["4", "5", "11", "15", "22", "23"]
    no_image, with_image = questions[0], questions[1]
    assert no_image.text == ("Which figure of speech is used in this text?\nSing, O goddess, the anger of Achilles "
                             "son of Peleus.\n\u2014Homer, The Iliad\nA. chiasmus\nB. apostrophe" + INSTRUCTION)
    assert no_image.prompt == no_image.text and no_image.image_path is None and not no_image.has_image
    assert with_image.text == ("Context: A parachute is tested in a wind tunnel.\nWhich of the following could the "
                               "test show?\nA. if it was damaged\nB. how steady it was\nC. its colour" + INSTRUCTION)
    assert with_image.prompt == "<image>\n" + with_image.text
    assert with_image.image_path == root / "sqa" / "images" / "test" / "5" / "image.png"
    assert Image.open(with_image.image_path).size == (40, 28)
    assert not any(q.pad for q in questions)  # ScienceQA images are not padded to a square
    assert [q.category for q in questions] == ["language science", "natural science", "natural science",
                                               "language science", "social science", "social science"]
    assert sqa.MAX_NEW_TOKENS == 1024


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("E", "E"), ("A.", "FAILED"), ("a", "FAILED"), ("B.", "FAILED"), ("B)", "FAILED"),
    ("B. because", "B"), ("The answer is C.", "C"), ("The answer is C", "FAILED"),  # the regex needs one more char
    ("The answer is A. The answer is B.", "FAILED"), ("F", "FAILED"), ("The answer is F.", "F"), ("", "FAILED")])
def test_sqa_parse(text, letter):
    assert sqa.parse_answer(text) == letter


def by_id(questions, answers: dict) -> list[dict]:
    return records_for(questions, {q.key: answers[q.question_id] for q in questions if q.question_id in answers})


def test_sqa_score(root):
    questions = sqa.questions(root)
    # gold: 4 B, 5 B (img), 11 C (img), 15 B, 22 E (img, 5 choices), 23 A (img)
    answers = {"4": "B", "5": "B. how steady it was", "11": "The answer is C.", "15": "a", "22": "E", "23": "A."}
    scores = sqa.score(by_id(questions, answers), root)
    # right: 4, 5, 11, 22 -> 4/6; IMG: 5, 11, 22 right, 23 FAILED -> 3/4
    assert scores["accuracy"] == pytest.approx(400 / 6)
    assert scores["img_accuracy"] == pytest.approx(75.0)
    assert (scores["questions"], scores["answered"], scores["missing"], scores["unparsed"]) == (6, 6, 0, 2)
    assert (scores["img_questions"], scores["img_correct"], scores["correct"]) == (4, 3, 4)


def test_sqa_missing_and_img_subset_by_prompt(root):
    questions = sqa.questions(root)
    answers = {"5": "The answer is A. The answer is B.", "15": "B", "22": "E", "23": "A"}
    records = by_id(questions, answers)
    next(r for r in records if r["question_id"] == "22")["prompt"] = questions[4].text  # no "<image>" in it
    scores = sqa.score(records, root)
    # 4 and 11 missing (FAILED); right: 15, 22, 23 -> 3/6. IMG = prompts with "<image>": 5 (wrong), 23 (right)
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["img_accuracy"] == pytest.approx(50.0)
    assert (scores["missing"], scores["img_missing"], scores["answered"], scores["unparsed"]) == (2, 1, 4, 1)
    assert scores["img_questions"] == 2


def test_sqa_out_of_range_letter_and_limit(root):
    questions = sqa.questions(root)
    # "C" on the 2-choice question 23 parses but is no choice: wrong. limit=3: only 4, 5, 11 are expected
    scores = sqa.score(by_id(questions, {"4": "B", "5": "A", "11": "C"}), root, limit=3)
    assert scores["questions"] == 3 and scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["img_accuracy"] == pytest.approx(50.0)
    wrong = sqa.score(by_id(questions, {"23": "C"}), root)
    assert (wrong["img_accuracy"], wrong["accuracy"]) == (0.0, 0.0)


def test_sqa_bad_records(root):
    questions = sqa.questions(root)
    records = by_id(questions, {"4": "B", "5": "B"})
    with pytest.raises(AnswerError, match="'1'"):  # a train problem is not in the test split
        sqa.score(records + [{**records[0], "question_id": "1"}], root)
    with pytest.raises(AnswerError, match="duplicate.*'5'"):
        sqa.score(records + [records[1]], root)


def test_sqa_majority(root):
    questions = sqa.questions(root)
    # language science: B, B -> B; natural science: B, C -> tie -> B; social science: E, A -> tie -> A
    majority = sqa.majority_answers(questions, root)
    assert majority == ["B", "B", "B", "B", "A", "A"]
    scores = sqa.score(by_id(questions, dict(zip([q.question_id for q in questions], majority))), root)
    # right: 4, 5, 15, 23 -> 4/6; IMG (5, 11, 22, 23): 5, 23 -> 2/4
    assert scores["accuracy"] == pytest.approx(400 / 6) and scores["img_accuracy"] == pytest.approx(50.0)


# ---------------------------------------------------------------- MME

def test_mme_questions(root):
    questions = mme.questions(root)
    assert len(questions) == 10 and mme.MAX_NEW_TOKENS == 128
    first, second = questions[0], questions[1]
    assert first.question_id == second.question_id == "existence/000000000001.jpg"
    assert first.text == first.prompt == "Is there a dog in this image?" + LLAVA_SUFFIX
    assert second.prompt == "Is there a cat in this image?" + LLAVA_SUFFIX
    assert first.key != second.key
    assert first.image_path == root / "mme" / "images" / "existence" / "000000000001.jpg" and first.pad
    assert Image.open(first.image_path).size == (40, 28)
    assert questions[4].image_path == root / "mme" / "images" / "artwork" / "images" / "10002.jpg"
    assert [q.category for q in questions[::2]] == ["existence", "existence", "artwork", "code_reasoning",
                                                    "commonsense_reasoning"]


def test_mme_answer_files(root):
    images = root / "mme" / "images"
    assert mme.answer_file(root, "existence/000000000001.jpg") == images / "existence" / "000000000001.txt"
    assert mme.answer_file(root, "artwork/images/10002.jpg") == (
        images / "artwork" / "questions_answers_YN" / "10002.txt")
    celebrity = "celebrity/images/tt0096320_shot_0085_img_0.jpg"
    assert mme.answer_file(root, celebrity).name == "tt0096320_shot_0085_img_0.txt"
    assert mme.answer_file(root, "x/a.b.jpg").name == "a.txt"  # up to the first "."


def test_mme_question_wording():
    prompt = "Is a dog shown?" + LLAVA_SUFFIX
    single = "Is a dog shown? Please answer yes or no."
    assert mme.mme_question(prompt, {single: "Yes"}) == single
    assert mme.mme_question(prompt, {}) == "Is a dog shown?  Please answer yes or no."  # the fallback
    already = "Is a dog shown? Please answer yes or no."
    assert mme.mme_question(already, {}) == already


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("no", "no"), ("NO.", "no"), ("Yes, there is a dog.", "yes"), ("Not sure", "no"),
    ("Nope", "no"), ("None", "no"), ("know", "no"), ("maybe", "other"), ("I think yes", "other"), ("", "other"),
    ("y", "other"), ("(yes)", "yes"), ("a no", "no")])  # the fourth character still counts
def test_mme_parse(text, parsed):
    assert mme.parse_answer(text) == parsed


def mme_answers(questions, texts: list[str]) -> list[dict]:
    return records_for(questions, {q.key: t for q, t in zip(questions, texts)})


def test_mme_score(root):
    questions = mme.questions(root)
    texts = ["Yes", "No",            # existence image 1: gold Yes, No -> both right
             "Yes", "Yes",           # existence image 2: gold No, Yes -> one right
             "yes", "Not sure",      # artwork (answers in questions_answers_YN/): Yes, No -> both right
             "Yes", "maybe",         # code_reasoning: Yes (double-space answer line), No -> "maybe" is other
             "Nope", "No"]           # commonsense_reasoning: No, Yes -> one right
    records = mme_answers(questions, texts)
    scores = mme.score(list(reversed(records)), root)  # matched by (id, prompt), paired in question-file order
    sub = scores["subtasks"]
    assert (sub["existence"]["acc"], sub["existence"]["acc_plus"], sub["existence"]["score"]) == (75.0, 50.0, 125.0)
    assert sub["artwork"]["score"] == 200.0
    assert (sub["code_reasoning"]["acc"], sub["code_reasoning"]["acc_plus"]) == (50.0, 0.0)
    assert sub["commonsense_reasoning"]["score"] == 50.0
    assert scores["perception"] == 325.0 and scores["cognition"] == 100.0
    assert list(sub) == ["existence", "artwork", "commonsense_reasoning", "code_reasoning"]  # calculation.py order
    assert (scores["questions"], scores["answered"], scores["missing"], scores["unparsed"]) == (10, 10, 0, 1)


def test_mme_bad_records(root):
    questions = mme.questions(root)
    records = mme_answers(questions, ["Yes"] * 10)
    with pytest.raises(AnswerError, match="without an answer.*existence/000000000002.jpg.*Is there a car"):
        mme.score(records[:2] + records[3:], root)  # a gap would misalign the official pairs
    with pytest.raises(AnswerError, match="duplicate.*Is there a dog"):
        mme.score(records + [records[0]], root)
    with pytest.raises(AnswerError, match="not in the benchmark.*Is there a horse"):
        mme.score(records + [{**records[0], "prompt": "Is there a horse?" + LLAVA_SUFFIX}], root)


def test_mme_missing_answer_file(root, tmp_path):
    shutil.copytree(root / "mme", tmp_path / "mme")
    (tmp_path / "mme" / "images" / "artwork" / "questions_answers_YN" / "10002.txt").unlink()
    questions = mme.questions(tmp_path)
    with pytest.raises(BenchmarkFileError, match="questions_answers_YN/10002.txt"):
        mme.score(mme_answers(questions, ["Yes"] * 10), tmp_path)


def test_mme_majority(root):
    questions = mme.questions(root)
    majority = mme.majority_answers(questions, root)
    assert majority == ["No"] * 10  # every image has a yes and a no question: ties go to "No"
    scores = mme.score(mme_answers(questions, majority), root)
    # each subtask: acc 50, acc_plus 0 -> 50; two subtasks per group
    assert scores["perception"] == 100.0 and scores["cognition"] == 100.0


# ---------------------------------------------------------------- MMBench

def test_mmbench_questions(root):
    questions = mmbench.questions(root)
    assert [q.question_id for q in questions] == [0, 1, 2, 1000000, 1000001, 1000002, 2000000, 2000002, 3000000]
    hint, two, three = questions[:3]
    assert hint.prompt == ("The picture was taken in a park.\nWhat is the main object in the image?\n"
                           "A. a teddy bear\nB. a rabbit\nC. a cat\nD. a dog")
    assert hint.text == hint.prompt + INSTRUCTION
    assert hint.record_extra == {"round_id": 0, "options": ["a teddy bear", "a rabbit", "a cat", "a dog"],
                                 "option_char": ["A", "B", "C", "D"]}
    assert two.prompt == "Which corner is the white square in?\nA. top left\nB. bottom right"  # empty hint
    assert three.prompt == "How many circles are there?\nA. 1\nB. 2\nC. 3"  # hint "nan", D "nan"
    assert three.record_extra["option_char"] == ["A", "B", "C"]
    assert [q.category for q in questions[:3]] == ["image_scene", "object_localization", "object_localization"]
    with Image.open(io.BytesIO(hint.image_bytes)) as image:
        assert (image.format, image.size) == ("JPEG", (40, 28))
    with Image.open(io.BytesIO(two.image_bytes)) as image:
        assert (image.format, image.size) == ("PNG", (24, 36))
    assert questions[3].image_bytes == hint.image_bytes  # a rotated copy shows the same image
    assert all(q.pad and q.image_path is None and q.has_image for q in questions) and mmbench.MAX_NEW_TOKENS == 1024


def test_mmbench_missing_options_and_hints():
    row = {"question": "Q?", "hint": "N/A", "A": "yes", "B": "NONE", "C": "x", "D": "None"}
    assert mmbench.options(row) == ["yes"]  # the generator stops at "NONE" (is_none lower-cases)
    assert mmbench.choices(row) == {"A": "yes", "B": "NONE", "C": "x"}  # pandas reads only "None" as NaN
    assert mmbench.question_text(row) == "Q?\nA. yes"  # pandas reads the hint "N/A" as NaN


def test_mmbench_image_reference_rejected(root, tmp_path):
    tsv = root / "mmbench" / "mmbench_dev_en_20231003.tsv"
    lines = tsv.read_text().split("\n")
    fields = lines[4].split("\t")  # index 1000000
    fields[9] = "0"  # a VLMEvalKit-style pointer to row 0's image
    (tmp_path / "mmbench").mkdir()
    (tmp_path / "mmbench" / tsv.name).write_text("\n".join(lines[:4] + ["\t".join(fields)] + lines[5:]))
    with pytest.raises(ValueError, match="image of index 1000000"):
        mmbench.questions(tmp_path)


ROW0 = {"A": "a teddy bear", "B": "a rabbit", "C": "a cat", "D": "a dog"}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("A.", "A"), ("(B)", "B"), ("B)", "B"), ("The answer is C", "C"), ("The answer is C.", "C"),
    ("Option C: a cat", "C"), (":D", "D"), ("E", "E"),
    ("A cat", "A"),  # two words: "A" is read as the letter
    ("A dog is in the picture", "D"),  # "A" may be an article: the option text "a dog" decides
    ("It is a rabbit", "B"), ("It is a rabbit or a cat", None), ("A B", None), ("I don't know", None),
    ("Answer:B", None), ("b", None)])
def test_mmbench_extract(answer, letter):
    assert mmbench.extract(answer, dict(ROW0)) == letter


def mmbench_records(questions, answers: dict) -> list[dict]:
    return records_for(questions, {q.key: answers[q.question_id] for q in questions if q.question_id in answers})


def test_mmbench_circular_score(root):
    questions = mmbench.questions(root)
    answers = {0: "B", 1000000: "A", 2000000: "D. a rabbit", 3000000: "a rabbit",  # group 0: all right
               1: "A", 1000001: "top left",  # group 1: right ("top left" is B there; empty C/D are not options)
               2: "C", 1000002: "I am not sure"}  # group 2: 1000002 unparsed, 2000002 missing -> wrong
    scores = mmbench.score(mmbench_records(questions, answers), root)
    assert scores["circular_accuracy"] == pytest.approx(200 / 3)
    assert scores["vanilla_accuracy"] == 100.0  # rows 0, 1, 2 are right
    assert scores["per_category"] == {"image_scene": 100.0, "object_localization": 50.0}
    assert scores["per_l2_category"] == {"coarse_perception": 100.0, "fine-grained_perception (instance)": 50.0}
    assert (scores["questions"], scores["groups"], scores["answered"], scores["missing"], scores["unparsed"]) == (
        9, 3, 8, 1, 1)


def test_mmbench_bad_records(root):
    questions = mmbench.questions(root)
    records = mmbench_records(questions, {0: "B", 1: "A"})
    with pytest.raises(AnswerError, match="not in the benchmark.*'5'"):
        mmbench.score(records + [{**records[0], "question_id": 5}], root)
    with pytest.raises(AnswerError, match="duplicate.*'1'"):
        mmbench.score(records + [records[1]], root)


def test_mmbench_majority(root):
    questions = mmbench.questions(root)
    # image_scene gold B, A, D, C -> tie -> A; object_localization A, C, B, B, A -> A/B tie -> A
    majority = mmbench.majority_answers(questions, root)
    assert majority == ["A"] * 9
    scores = mmbench.score(mmbench_records(questions, dict(zip([q.question_id for q in questions], majority))), root)
    # every group has a row whose answer is not A: circular 0; of rows 0, 1, 2 only row 1 (gold A) is right
    assert scores["circular_accuracy"] == 0.0 and scores["vanilla_accuracy"] == pytest.approx(100 / 3)
