"""GQA, TextVQA and POPE: question loading as the official generator does it, and the official scorers with
their quirks, on tiny fixture trees (tests/benchmark_fixtures_a.py). Expected values are worked by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mvlm_jax.eval import benchmark, gqa, pope, textvqa
from mvlm_jax.eval.benchmark import AnswerError, BenchmarkFileError
from mvlm_jax.eval.textvqa_answers import (answer_scores, normalize_answer, soft_accuracy,
                                           strip_punctuation)
from tests.benchmark_fixtures_a import SUFFIX, write_gqa, write_pope, write_textvqa


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    data_root = tmp_path_factory.mktemp("benchmark_data")
    write_gqa(data_root)
    write_textvqa(data_root)
    write_pope(data_root)
    return data_root


def fresh(tmp_path: Path, writer) -> Path:
    """A private tree for tests that break files."""
    writer(tmp_path)
    return tmp_path


def records_for(questions, texts) -> list[dict]:
    return [{"question_id": q.question_id, "prompt": q.prompt, "text": text, "answer_id": f"a{i}",
             "model_id": "tiny", "metadata": {}} for i, (q, text) in enumerate(zip(questions, texts, strict=True))]


# ---------------------------------------------------------------------------------------------- questions
def test_contract_constants():
    for module in (gqa, textvqa, pope):
        assert module.MAX_NEW_TOKENS == 128  # model_vqa_loader's hard-coded max_new_tokens
    assert gqa.SCORE_KEYS == ("accuracy",) and textvqa.SCORE_KEYS == ("accuracy",)
    assert pope.SCORE_KEYS == ("mean_f1", "mean_accuracy")
    assert [benchmark.module(name) for name in ("gqa", "textvqa", "pope")] == [gqa, textvqa, pope]


def test_gqa_questions(root):
    questions = gqa.questions(root)
    assert [q.question_id for q in questions] == ["201307251", "201640614", "202225914", "20968379",
                                                  "201885000", "20602279"]
    first = questions[0]
    assert first.text == first.prompt == "Is it overcast?" + SUFFIX
    assert first.image_path == root / "gqa" / "images" / "n161313.jpg"
    assert first.pad and first.category == "default" and first.has_image
    with Image.open(first.image_path) as image:
        assert image.format == "JPEG" and image.size == (40, 28)
    with Image.open(questions[1].image_path) as image:
        assert image.size == (24, 36)
    benchmark.check_files(["gqa"], root)  # every required file and folder is there


def test_textvqa_questions(root):
    questions = textvqa.questions(root)
    assert len(questions) == 6
    assert [q.question_id for q in questions[1:3]] == ["b9dc400eb20bad64"] * 2  # the image id repeats
    assert len({q.key for q in questions}) == 6
    assert questions[1].prompt == ("how many bottles are there?\nReference OCR token: \n"
                                   "Answer the question using a single word or phrase.")
    assert questions[0].image_path == root / "textvqa" / "train_images" / "003a8ae2ef43b901.jpg"
    assert all(q.image_path.is_file() and q.pad and q.category == "default" for q in questions)
    benchmark.check_files(["textvqa"], root)


def test_pope_questions(root):
    questions = pope.questions(root)
    assert [q.question_id for q in questions] == [1, 2, 3, 4, 10000001, 10000002, 10000003, 10000004,
                                                  20000001, 20000002, 20000003, 20000004]
    assert [q.category for q in questions] == ["adversarial"] * 4 + ["random"] * 4 + ["popular"] * 4
    assert questions[9].text == "Is there a snowboard in the image?" + SUFFIX
    assert questions[0].image_path == root / "pope" / "val2014" / "COCO_val2014_000000310196.jpg"
    assert all(q.image_path.is_file() for q in questions)
    benchmark.check_files(["pope"], root)


def test_malformed_question_line_names_file_and_line(tmp_path):
    data_root = fresh(tmp_path, write_gqa)
    path = data_root / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"question_id": "1", "image": "n1.jpg"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"llava_gqa_testdev_balanced\.jsonl:3: not a JSON object"):
        gqa.questions(data_root)
    lines[2] = '{"question_id": "1", "image": "n1.jpg"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"jsonl:3: gqa question without text"):
        gqa.questions(data_root)


def test_pope_category_must_be_a_split(tmp_path):
    data_root = fresh(tmp_path, write_pope)
    path = data_root / "pope" / "llava_pope_test.jsonl"
    path.write_text(path.read_text().replace('"category": "popular"', '"category": "default"', 1))
    with pytest.raises(ValueError, match=r"llava_pope_test\.jsonl:9: category 'default'"):
        pope.questions(data_root)


def test_missing_files_are_named(tmp_path):
    data_root = fresh(tmp_path, write_gqa)
    (data_root / "gqa" / "testdev_balanced_questions.json").unlink()
    with pytest.raises(BenchmarkFileError, match=r"testdev_balanced_questions\.json.*answer, isBalanced"):
        benchmark.check_files(["gqa"], data_root)
    records = records_for(gqa.questions(data_root), ["no"] * 6)
    with pytest.raises(BenchmarkFileError, match=r"gqa/testdev_balanced_questions\.json: missing"):
        gqa.score(records, data_root)
    with pytest.raises(BenchmarkFileError, match=r"textvqa/llava_textvqa_val_v051_ocr\.jsonl: missing"):
        textvqa.questions(data_root)
    write_pope(data_root)
    (data_root / "pope" / "coco" / "coco_pope_random.json").unlink()
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_random\.json"):
        benchmark.check_files(["pope"], data_root)


# ---------------------------------------------------------------------------------------------- GQA
def test_gqa_prediction_is_rstrip_period_lower_only():
    assert gqa.prediction("Yes.") == "yes"
    assert gqa.prediction("Brown..") == "brown"
    assert gqa.prediction("U.S.") == "u.s"
    assert gqa.prediction("A cat.") == "a cat"  # no article removal
    assert gqa.prediction("Left. ") == "left. "  # no whitespace strip: the trailing space shields the period


def test_gqa_score(root):
    questions = gqa.questions(root)
    # no (ok), woman (ok), yes (gold no), brown (ok), [not balanced], " left" (gold left: the space stays)
    scores = gqa.score(records_for(questions, ["No.", "Woman", "yes", "Brown..", "xyz", " left"]), root)
    assert scores["accuracy"] == pytest.approx(60.0)  # 3 of the 5 balanced questions
    assert scores["binary"] == pytest.approx(100 / 3)  # verify ok, logical wrong, choose wrong
    assert scores["open"] == pytest.approx(100.0)  # the two balanced "query" questions
    assert scores["per_structural_type"] == pytest.approx({"choose": 0.0, "logical": 0.0, "query": 100.0,
                                                           "verify": 100.0})
    assert scores["per_semantic_type"] == pytest.approx({"attr": 50.0, "global": 100.0, "rel": 50.0})
    assert (scores["questions"], scores["answered"], scores["missing"], scores["scored"]) == (6, 6, 0, 5)
    perfect = gqa.score(records_for(questions, ["no", "woman", "no", "brown", "anything", "left"]), root)
    assert perfect["accuracy"] == 100.0
    assert gqa.majority_answers(questions, root) is None


def test_gqa_bad_answer_files_name_the_ids(root):
    questions = gqa.questions(root)
    records = records_for(questions, ["no"] * 6)
    with pytest.raises(AnswerError, match="'999'"):
        gqa.score(records + [dict(records[0], question_id="999")], root)
    with pytest.raises(AnswerError, match="duplicate.*'201307251'"):
        gqa.score(records + [records[0]], root)
    with pytest.raises(AnswerError, match="without an answer record: '20602279'"):
        gqa.score(records[:-1], root)


# ---------------------------------------------------------------------------------------------- TextVQA
def test_textvqa_processor_quirks():
    # tokenizer: lower, ',' and '?' deleted, "'s" split off
    assert normalize_answer("Hello, World?") == "hello world"
    assert normalize_answer("it's John's") == "it 's john 's"
    assert normalize_answer("let's") == "let 's"  # the tokenizer splits it before the table's "let's" entry
    assert normalize_answer("red\tcar\nnow") == "red car now"
    # punctuation: a mark touching a space anywhere is deleted everywhere, otherwise replaced by a space
    assert normalize_answer("coca-cola") == "coca cola"
    assert normalize_answer("coca - cola") == "coca cola"
    assert normalize_answer("x-y -z") == "xy z"
    assert normalize_answer("(b) c") == "b c"  # ") " deletes ")", "(" touches no space and becomes one
    assert normalize_answer("what?!") == "what"
    # the comma-between-digits condition (only reachable on the punctuation step itself: the tokenizer
    # deletes commas first): every mark is deleted, none becomes a space
    assert strip_punctuation("1,5 a-b") == "15 ab"
    assert strip_punctuation("2,a-b") == "2 a b"
    assert normalize_answer("1,000") == "1000"
    # periods: removed unless a digit follows; the lookbehind is broken, so "2." loses its period too
    assert normalize_answer("2.") == "2"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("a.5") == "a.5"
    assert normalize_answer("e.g.") == "eg"
    # ... and re.UNICODE (32) is the count: at most 32 periods go
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer(" ".join(["x."] * 33)) == " ".join(["x"] * 32 + ["x."])
    # number words, articles, contractions
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert normalize_answer("ten dogs") == "10 dogs"
    assert normalize_answer("eleven") == "eleven"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("the") == ""
    assert normalize_answer("dont walk") == "don't walk"
    assert normalize_answer("Whats up") == "what's up"
    assert normalize_answer("im") == "im"  # the table's key is "Im", which lower-cased text never matches
    assert normalize_answer("somebody'd") == "somebodyd"  # the table's one reversed entry


# An independent re-derivation of the EvalAI processor from its rules as written down (not from the module):
REF_MARKS = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
             "!"]
REF_NUMBERS = dict(zip("none zero one two three four five six seven eight nine ten".split(),
                       "0 0 1 2 3 4 5 6 7 8 9 10".split()))
REF_CONTRACTIONS = {"dont": "don't", "whats": "what's", "isnt": "isn't", "somebody'd": "somebodyd"}


def reference_normalize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    digit_comma = any(text[i] == "," and i > 0 and text[i - 1].isdecimal()
                      and text[i:].lstrip(",")[:1].isdecimal() for i in range(len(text)))
    out = text
    for mark in REF_MARKS:
        out = out.replace(mark, "" if (mark + " " in text or " " + mark in text or digit_comma) else " ")
    kept, removed = [], 0
    for i, char in enumerate(out):
        if char == "." and removed < 32 and not out[i + 1:i + 2].isdecimal():
            removed += 1
            continue
        kept.append(char)
    words = [REF_NUMBERS.get(word, word) for word in "".join(kept).split()]
    return " ".join(REF_CONTRACTIONS.get(word, word) for word in words if word not in ("a", "an", "the"))


@pytest.mark.parametrize("answer", [
    "Dakota Digital.", "two", "2.", "$1,000", "1,000.", "1000.00", "one thousand", "john's", "John 's.",
    "it's john's", "coca-cola", "coca - cola", "The Coca Cola", "don't walk!", "dont walk", "Whats up?",
    "(a) b", "a/b", "a / b", "[x]", "{y}", "p=q", "1+1", "c:\\dir", "snake_case", "a->b", "<tag>", "@home",
    "`tick`", "wow!", "x-y -z", "None.", "Ten.", "isnt", "somebody'd", "3.14.", ".5", "..", "v1.2.3",
    "\tTab\nline ", "   ", "", "." * 40, " ".join(["x."] * 33), "no. 1", "a.m.", "st. louis",
])
def test_textvqa_processor_matches_reference(answer):
    assert normalize_answer(answer) == reference_normalize(answer)


def test_leave_one_out_accuracy_by_hand():
    answers = ["red"] * 3 + ["Blue", "blue."] + ["green"] * 5
    scores = answer_scores(answers)
    # red, given 3 times: the 3 subsets without a red hold 2 reds (2/3), the 7 others hold 3 (1): 9/10
    assert scores["red"] == pytest.approx(0.9)
    # blue (2): 2 subsets hold 1 (1/3), 8 hold 2 (2/3): (2/3 + 16/3) / 10 = 0.6
    assert scores["blue"] == pytest.approx(0.6)
    assert scores["green"] == pytest.approx(1.0)  # 5: every subset holds at least 4
    assert soft_accuracy("Red.", answers) == pytest.approx(0.9)
    assert soft_accuracy("pink", answers) == 0.0
    assert answer_scores(["x"] + ["y"] * 9)["x"] == pytest.approx(0.3)  # 9 subsets hold it once: 9/3/10
    with pytest.raises(ValueError, match="expected 10 human answers, got 9"):
        answer_scores(["x"] * 9)


def test_question_of_prompt_follows_the_official_prompt_processor():
    assert textvqa.question_of_prompt("What Is It?\nReference OCR token: A, B\nAnswer briefly.") == "what is it?"
    assert textvqa.question_of_prompt("Reference OCR token: A\nWhat Is It?\nAnswer briefly.") == "what is it?"
    assert textvqa.question_of_prompt("What Is It?\nAnswer briefly.") == "what is it?"
    assert textvqa.question_of_prompt("OCR tokens: a b Question: What\nIs It? Short answer:") == "what\nis it?"
    with pytest.raises(ValueError, match="cannot find the question"):
        textvqa.question_of_prompt("What is it?")
    with pytest.raises(ValueError, match="cannot find the question"):
        textvqa.question_of_prompt("a\nb\nc")  # 3 lines without the OCR line


def test_textvqa_score(root):
    questions = textvqa.questions(root)
    # dakota digital (given 4x: 1.0), 3 (2x: 0.6), do not walk (1x: 0.3), $1000 (3x: 0.9), johns (2x: 0.6),
    # sprite (0x: 0)
    texts = ["Dakota Digital.", "three", "do not walk", "$1,000", "Johns", "Sprite"]
    scores = textvqa.score(records_for(questions, texts), root)
    assert scores["accuracy"] == pytest.approx(100 * 3.4 / 6)
    assert (scores["questions"], scores["answered"], scores["missing"]) == (6, 6, 0)
    best = ["dakota", "2", "Don't walk", "1000", "John's", "Coca-Cola"]  # the question-6 lookup lower-cases
    assert textvqa.score(records_for(questions, best), root)["accuracy"] == pytest.approx(100.0)
    assert textvqa.majority_answers(questions, root) is None


def test_textvqa_bad_answer_files(root):
    questions = textvqa.questions(root)
    records = records_for(questions, ["x"] * 6)
    with pytest.raises(AnswerError, match="duplicate.*b9dc400eb20bad64"):
        textvqa.score(records + [records[2]], root)
    with pytest.raises(AnswerError, match="not in the benchmark.*what colour is it"):
        textvqa.score(records + [dict(records[2], prompt="what colour is it?\nAnswer briefly.")], root)
    with pytest.raises(AnswerError, match="without an answer record.*what does the sign say"):
        textvqa.score(records[:2] + records[3:], root)


def test_textvqa_needs_ten_answers(tmp_path):
    data_root = fresh(tmp_path, write_textvqa)
    path = data_root / "textvqa" / "TextVQA_0.5.1_val.json"
    data = json.loads(path.read_text())
    data["data"][3]["answers"] = data["data"][3]["answers"][:9]
    path.write_text(json.dumps(data))
    records = records_for(textvqa.questions(data_root), ["x"] * 6)
    with pytest.raises(ValueError, match="'2b538a43dd933fc1'.*9 answers"):
        textvqa.score(records, data_root)


# ---------------------------------------------------------------------------------------------- POPE
@pytest.mark.parametrize("text, parsed", [
    ("No.", "no"), ("no", "no"), ("NO", "yes"), ("", "yes"), ("Yes", "yes"), ("Not sure", "yes"),
    ("not sure", "no"), ("Yes, there is no dog.", "no"), ("Yes. No.", "yes"), ("no,", "no"), ("no!", "yes"),
    ("None", "yes"), ("There is not a dog", "no"), ("No\nthere", "yes"),
])
def test_pope_parse(text, parsed):
    assert pope.parse_answer(text) == parsed


def test_pope_metrics_of_a_hand_counted_table():
    predictions = ["yes"] * 3 + ["yes"] + ["no"] * 4 + ["no"] * 2  # TP 3, FP 1, TN 4, FN 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["yes"] * 2
    result = pope.metrics(predictions, labels)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (3, 1, 4, 2)
    assert result["accuracy"] == pytest.approx(70.0)
    assert result["precision"] == pytest.approx(75.0)
    assert result["recall"] == pytest.approx(60.0)
    assert result["f1"] == pytest.approx(100 * 2 * 0.75 * 0.6 / 1.35)  # 66.67
    assert result["yes_ratio"] == pytest.approx(40.0)


POPE_TEXTS = [
    "Yes", "No.", "NO", "Yes, there is no car.",  # adversarial, gold yes no yes no: TP TN TP TN
    "Not sure", "", "There is a zebra", "no, not really",  # random, gold yes yes no yes: TP TP FP FN
    "no", "There is not.", "yes. no.", "I do not know",  # popular, gold no yes no no: TN FN FP TN
]


def test_pope_score(root):
    scores = pope.score(records_for(pope.questions(root), POPE_TEXTS), root)
    assert scores["adversarial"] == pytest.approx({"accuracy": 100.0, "precision": 100.0, "recall": 100.0,
                                                   "f1": 100.0, "yes_ratio": 50.0, "tp": 2, "fp": 0, "tn": 2,
                                                   "fn": 0, "questions": 4})
    assert scores["random"] == pytest.approx({"accuracy": 50.0, "precision": 200 / 3, "recall": 200 / 3,
                                              "f1": 200 / 3, "yes_ratio": 75.0, "tp": 2, "fp": 1, "tn": 0,
                                              "fn": 1, "questions": 4})
    # no true positive: precision, recall and F1 are 0/0 (the official script divides by zero), 0 here
    assert scores["popular"] == pytest.approx({"accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                               "yes_ratio": 25.0, "tp": 0, "fp": 1, "tn": 2, "fn": 1,
                                               "questions": 4})
    assert scores["mean_f1"] == pytest.approx((100 + 200 / 3 + 0) / 3)
    assert scores["mean_accuracy"] == pytest.approx(200 / 3)
    assert (scores["questions"], scores["answered"], scores["missing"]) == (12, 12, 0)


def test_pope_record_order(root):
    records = records_for(pope.questions(root), POPE_TEXTS)
    # splits interleaved, each in question order: what eval_pope.py sees per split is unchanged
    interleaved = [records[4]] + records[:4] + records[5:]
    assert pope.score(interleaved, root) == pope.score(records, root)
    swapped = [records[1], records[0]] + records[2:]
    with pytest.raises(AnswerError, match=r"adversarial answers are not in question-file order.*question 2, "
                                          r"expected 1"):
        pope.score(swapped, root)


def test_pope_bad_answer_files_name_the_ids(root):
    records = records_for(pope.questions(root), POPE_TEXTS)
    with pytest.raises(AnswerError, match="not in the benchmark: '5'"):
        pope.score(records + [dict(records[0], question_id=5)], root)
    with pytest.raises(AnswerError, match="duplicate.*'10000002'"):
        pope.score(records + [records[5]], root)
    with pytest.raises(AnswerError, match="without an answer record: '20000004'"):
        pope.score(records[:-1], root)


def test_pope_annotations_must_pair_with_the_questions(tmp_path):
    data_root = fresh(tmp_path, write_pope)
    records = records_for(pope.questions(data_root), POPE_TEXTS)
    path = data_root / "pope" / "coco" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")  # another order, as newer POPE has
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: label 1 .*snowboard"):
        pope.score(records, data_root)
    path.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: 3 labels for 4 random questions"):
        pope.score(records, data_root)


def test_pope_majority_baseline(root):
    questions = pope.questions(root)
    majority = pope.majority_answers(questions, root)
    # adversarial 2 yes / 2 no: a tie gives yes; random 3 yes / 1 no; popular 1 yes / 3 no
    assert majority == ["yes"] * 4 + ["yes"] * 4 + ["no"] * 4
    scores = pope.score(records_for(questions, majority), root)
    assert scores["adversarial"]["accuracy"] == 50.0 and scores["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert scores["random"]["f1"] == pytest.approx(100 * 1.5 / 1.75)  # P 3/4, R 1: 2PR/(P+R) = 1.5/1.75
    assert scores["popular"]["accuracy"] == 75.0 and scores["popular"]["yes_ratio"] == 0.0
    assert scores["mean_accuracy"] == pytest.approx(200 / 3)


# ---------------------------------------------------------------------------------------------- --limit
def test_scores_over_the_first_questions_only(root):
    gqa_questions = gqa.questions(root)[:3]
    gqa_scores = gqa.score(records_for(gqa_questions, ["No.", "Woman", "yes"]), root, limit=3)
    assert gqa_scores["accuracy"] == pytest.approx(200 / 3) and gqa_scores["questions"] == 3
    with pytest.raises(AnswerError, match="not in the benchmark: '20968379'"):
        gqa.score(records_for(gqa.questions(root)[:4], ["no"] * 4), root, limit=3)
    textvqa_questions = textvqa.questions(root)[:2]
    textvqa_scores = textvqa.score(records_for(textvqa_questions, ["Dakota Digital.", "three"]), root, limit=2)
    assert textvqa_scores["accuracy"] == pytest.approx(80.0)  # (1.0 + 0.6) / 2
    # POPE: all of adversarial and the first 2 random questions (gold yes, yes; read yes, yes)
    pope_scores = pope.score(records_for(pope.questions(root)[:6], POPE_TEXTS[:6]), root, limit=6)
    assert set(pope_scores) >= {"adversarial", "random"} and "popular" not in pope_scores
    assert pope_scores["random"]["questions"] == 2 and pope_scores["random"]["f1"] == 100.0
    assert pope_scores["mean_f1"] == 100.0 and pope_scores["questions"] == 6
