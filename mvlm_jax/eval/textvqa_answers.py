"""TextVQA's answer normalisation and soft accuracy, exactly as the official scorer computes them.

Source: LLaVA llava/eval/m4c_evaluator.py (EvalAIAnswerProcessor, TextVQAAccuracyEvaluator), shipped
byte-identical by MobileVLM as mobilevlm/eval/m4c_evaluator.py; it descends from the VQA/EvalAI evaluation
(facebookresearch/mmf pythia/tasks/processors.py). Every quirk is kept on purpose, since the published
numbers were computed with them:
  - the period rule is written `(?!<=\\d)(\\.)(?!\\d)`: a negative LOOKAHEAD for the text "<=" plus a digit,
    not the intended lookbehind, so a period after a digit is removed too ("2." -> "2");
  - `re.UNICODE` (= 32) is passed to `sub` as its `count`, so at most 32 periods are removed;
  - commas are deleted by the tokenizer before the punctuation step, so the "comma between digits" condition
    of that step never fires in the full pipeline ("1,000" -> "1000" either way);
  - the contraction table holds capitalised keys ("Im", "Ive") that the lower-cased text never reaches, and
    one reversed entry ("somebody'd" -> "somebodyd").
"""
from __future__ import annotations

import re
from typing import Sequence

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# In the official order (the order matters: each one is replaced in the text the previous ones left).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern, see the module docstring
DIGIT_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
MAX_PERIODS_REMOVED = 32  # re.UNICODE passed as `count` by the official code
GT_ANSWERS = 10  # the official scorer asserts ten human answers per question

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def tokenize(answer: str) -> str:
    """Step 1: lower-case, delete ',' and '?', split "'s" off its word ("john's" -> "john 's"), strip."""
    return answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def strip_punctuation(text: str) -> str:
    """Step 3: each punctuation mark is deleted when it touches a space anywhere in `text` (or when `text`
    has a comma between digits), else replaced by a space; then periods not followed by a digit are deleted
    (at most 32 of them). The conditions look at the input text, not at the text being rewritten."""
    digit_comma = DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out, count=MAX_PERIODS_REMOVED)


def numbers_and_articles(text: str) -> str:
    """Step 4: per whitespace-separated word: number words -> digits ("two" -> "2", "none" -> "0"), articles
    dropped, then contractions restored ("dont" -> "don't"); joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """The EvalAI answer processor: what a prediction and every human answer are compared as."""
    text = tokenize(answer)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return numbers_and_articles(strip_punctuation(text))


def answer_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """Soft accuracy of each distinct normalised human answer: the mean, over the 10 ways to leave one human
    answer out, of min(1, matches among the other 9 / 3). An answer given c times scores
    (c * min(1, (c-1)/3) + (10-c) * min(1, c/3)) / 10: 0.3, 0.6, 0.9, then 1.0 from c = 4 on.
    ValueError unless there are exactly 10 answers (the official scorer asserts it)."""
    if len(gt_answers) != GT_ANSWERS:
        raise ValueError(f"expected {GT_ANSWERS} human answers, got {len(gt_answers)}")
    answers = [normalize_answer(answer) for answer in gt_answers]
    scores = {}
    for candidate in set(answers):
        per_subset = []
        for left_out in range(len(answers)):
            matches = sum(1 for i, answer in enumerate(answers) if i != left_out and answer == candidate)
            per_subset.append(min(1.0, matches / 3))
        scores[candidate] = sum(per_subset) / len(per_subset)
    return scores


def soft_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The score in [0, 1] of one prediction: its normalised form's answer score, 0 if no human gave it."""
    return answer_scores(gt_answers).get(normalize_answer(prediction), 0.0)
